//! Attacks on history, as the application role (least privilege), as a role granted every
//! privilege on every table, and as the tables' owner: each is refused with a typed, named error,
//! and the history, the projection and as-of answers are unchanged afterwards.
//!
//! What the owner (or a superuser) can still do (disable triggers, rewrite a column's type) is the
//! threat model of RELIABILITY.md; tamper evidence detects it.

use chrono::{DateTime, Utc};
use immu_core::{Error, Immutable};
use immu_tests::harness::{Db, TestResult};
use immu_tests::models::Account;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

immu_tests::tests![
    temp_tables_named_like_immus_tables_change_nothing,
    objects_in_an_earlier_schema_change_nothing,
    a_trigger_of_another_role_cannot_write_the_projection,
    every_privilege_on_every_table_is_not_enough,
    raw_inserts_follow_the_rules_of_the_write_path,
    refusals_name_the_table_and_the_reason,
    the_machinery_cannot_be_called_or_managed_by_the_application,
    the_insert_trigger_cannot_be_borrowed,
    a_role_with_trigger_cannot_replace_immus_refusals,
    code_of_another_role_on_immus_tables_stops_immu,
    the_projections_row_security_is_part_of_the_machinery,
];

/// A role granted every privilege on every table of the schema (a common lazy setup).
const LAZY: &str = "immu_test_lazy";

/// What an attack must not change: every stored version, every projection row, and the current
/// and as-of lists at `at`.
#[derive(Debug, PartialEq)]
struct State {
    history: Vec<String>,
    projection: Vec<String>,
    current: Vec<(Uuid, i64, i64)>,
    as_of: Vec<(Uuid, i64, i64)>,
}

async fn state(db: &Db, at: DateTime<Utc>) -> Result<State, Box<dyn std::error::Error + Send + Sync>> {
    let rows = |table: &str| format!("SELECT t::text FROM {table} AS t ORDER BY entity_id, version");
    let key = |v: &immu_core::Versioned<Account>| (v.entity_id, v.version, v.balance);
    Ok(State {
        history: sqlx::query_scalar(sqlx::AssertSqlSafe(rows("public.accounts")))
            .fetch_all(&db.owner)
            .await?,
        projection: sqlx::query_scalar(sqlx::AssertSqlSafe(rows("public.accounts_current")))
            .fetch_all(&db.owner)
            .await?,
        current: Account::query().fetch_all(&db.owner).await?.iter().map(key).collect(),
        as_of: Account::query().as_of(at).fetch_all(&db.owner).await?.iter().map(key).collect(),
    })
}

/// Three accounts with history (one deleted), and an instant in the middle of it.
async fn setup(db: &Db) -> Result<(Vec<Uuid>, DateTime<Utc>), Box<dyn std::error::Error + Send + Sync>> {
    let mut ids = Vec::new();
    for (owner, balance) in [("ada", 10), ("bob", 20), ("cy", 30)] {
        let v = Account::insert(&db.pool, Account::new(owner, balance)).await?;
        Account::modify(&db.pool, v.entity_id, |a| a.balance += 1).await?;
        ids.push(v.entity_id);
    }
    let at = immu_core::Snapshot::now(&db.pool).await?.instant();
    for id in &ids {
        Account::modify(&db.pool, *id, |a| a.balance += 100).await?;
    }
    Account::delete(&db.pool, ids[2]).await?;
    Ok((ids, at))
}

/// Runs `sql` on `conn` and returns the error it must fail with, as immu types it.
async fn refused(
    conn: &mut PgConnection,
    sql: &str,
) -> Result<Error, Box<dyn std::error::Error + Send + Sync>> {
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut *conn).await {
        Ok(_) => Err(format!("not refused: {sql}").into()),
        Err(err) => Ok(Error::from(err)),
    }
}

/// A connection acting as [`LAZY`], created with every privilege on every table of `public`.
async fn lazy(db: &Db) -> sqlx::Result<PgConnection> {
    let mut owner = db.connect_owner().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DO $$ BEGIN CREATE ROLE {LAZY} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         GRANT USAGE ON SCHEMA public TO {LAZY};
         GRANT ALL ON ALL TABLES IN SCHEMA public TO {LAZY};"
    )))
    .execute(&mut owner)
    .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET ROLE {LAZY}"))).execute(&mut owner).await?;
    Ok(owner)
}

async fn temp_tables_named_like_immus_tables_change_nothing(db: Db) -> TestResult {
    let (ids, at) = setup(&db).await?;
    let before = state(&db, at).await?;
    let mut app = db.connect().await?;
    // A temp table named like the projection: a raw insert of a forged, backdated version 1 of an
    // existing entity would pass a check that read it.
    sqlx::raw_sql("CREATE TEMP TABLE accounts_current (LIKE public.accounts_current INCLUDING ALL)")
        .execute(&mut app)
        .await?;
    let err = refused(
        &mut app,
        &format!(
            "INSERT INTO public.accounts (id, entity_id, version, valid_from, owner, balance)
             VALUES (gen_random_uuid(), '{}', 1, now() - interval '10 years', 'forged', 1000000)",
            ids[0]
        ),
    )
    .await?;
    assert!(
        matches!(&err, Error::InvalidHistory { table, message } if table == "accounts" && message.contains("skip or repeat")),
        "{err:?}"
    );
    assert_eq!(state(&db, at).await?, before, "nothing changed");
    // A temp table named like the history swallows nothing: immu's write reaches the real one.
    sqlx::raw_sql("CREATE TEMP TABLE accounts (LIKE public.accounts INCLUDING ALL)")
        .execute(&mut app)
        .await?;
    let written = Account::update(&mut app, ids[1], Account::new("bob", 7)).await?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM public.accounts WHERE id = $1")
        .bind(written.id)
        .fetch_one(&db.owner)
        .await?;
    assert_eq!(stored, 1, "the acknowledged version is in the real history");
    let shadow: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pg_temp.accounts) + (SELECT count(*) FROM pg_temp.accounts_current)",
    )
    .fetch_one(&mut app)
    .await?;
    assert_eq!(shadow, 0, "the temp tables were never written");
    assert_eq!(Account::find(&db.owner, ids[1]).await?.version, written.version);
    let drift: i64 = sqlx::query_scalar("SELECT count(*) FROM immu.check_projection('public.accounts')")
        .fetch_one(&db.owner)
        .await?;
    assert_eq!(drift, 0);
    Ok(())
}

async fn objects_in_an_earlier_schema_change_nothing(db: Db) -> TestResult {
    let (ids, at) = setup(&db).await?;
    // A schema placed before pg_catalog on the path, with a fake clock, a fake lock, an operator
    // that makes every version 1 again, a set_config that does nothing, and a fake projection.
    sqlx::raw_sql(
        "CREATE SCHEMA evil;
         GRANT USAGE ON SCHEMA evil TO immu_test_app;
         CREATE TABLE evil.accounts_current (LIKE public.accounts_current);
         CREATE TABLE evil.accounts (LIKE public.accounts);
         GRANT ALL ON evil.accounts_current, evil.accounts TO PUBLIC;
         CREATE FUNCTION evil.clock_timestamp() RETURNS timestamptz LANGUAGE sql AS $$ SELECT '2000-01-01'::timestamptz $$;
         CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT '2000-01-01'::timestamptz $$;
         CREATE FUNCTION evil.pg_advisory_xact_lock(bigint) RETURNS void LANGUAGE sql AS $$ SELECT $$;
         CREATE FUNCTION evil.set_config(text, text, boolean) RETURNS text LANGUAGE sql AS $$ SELECT '' $$;
         CREATE FUNCTION evil.current_setting(text, boolean) RETURNS text LANGUAGE sql AS $$ SELECT 'public.accounts' $$;
         CREATE FUNCTION evil.one(bigint, integer) RETURNS bigint LANGUAGE sql AS $$ SELECT 1::bigint $$;
         CREATE OPERATOR evil.+ (LEFTARG = bigint, RIGHTARG = integer, FUNCTION = evil.one);
         CREATE FUNCTION evil.never(bigint, bigint) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
         CREATE OPERATOR evil.<> (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.never);",
    )
    .execute(&db.owner)
    .await?;
    let before = state(&db, at).await?;
    for (who, mut conn) in [("application", db.connect().await?), ("owner", db.connect_owner().await?)] {
        sqlx::raw_sql("SET search_path = evil, pg_catalog, public").execute(&mut conn).await?;
        let v = Account::update(&mut conn, ids[0], Account::new("ada", 1)).await?;
        let then = Account::find(&db.owner, ids[0]).await?;
        assert_eq!((then.version, then.balance), (v.version, 1), "{who}");
        assert!(then.valid_from > at, "{who}: stamped by the real clock: {}", then.valid_from);
        assert_eq!(Account::delete(&mut conn, ids[0]).await?.version, v.version + 1, "{who}");
        assert_eq!(Account::undelete(&mut conn, ids[0]).await?.version, v.version + 2, "{who}");
        // A raw insert of a skipped version is still refused.
        let err = refused(
            &mut conn,
            &format!(
                "INSERT INTO public.accounts (id, entity_id, version, owner, balance) VALUES (gen_random_uuid(), '{}', 42, 'x', 0)",
                ids[1]
            ),
        )
        .await?;
        assert!(matches!(err, Error::InvalidHistory { .. }), "{who}: {err:?}");
    }
    let evil: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM evil.accounts) + (SELECT count(*) FROM evil.accounts_current)",
    )
    .fetch_one(&db.owner)
    .await?;
    assert_eq!(evil, 0, "the shadowing tables were never written");
    let after = state(&db, at).await?;
    assert_eq!(after.as_of, before.as_of, "as-of answers before the writes are unchanged");
    for row in &before.history {
        assert!(after.history.contains(row), "stored version changed or gone: {row}");
    }
    let drift: i64 = sqlx::query_scalar("SELECT count(*) FROM immu.check_projection('public.accounts')")
        .fetch_one(&db.owner)
        .await?;
    assert_eq!(drift, 0);
    Ok(())
}

async fn a_trigger_of_another_role_cannot_write_the_projection(db: Db) -> TestResult {
    let (ids, at) = setup(&db).await?;
    let before = state(&db, at).await?;
    let attacks = [
        format!(
            "UPDATE public.accounts_current SET version = 1, valid_from = '-infinity' WHERE entity_id = '{}'",
            ids[0]
        ),
        "INSERT INTO public.accounts_current (id, entity_id, version, valid_from, owner, balance) \
         VALUES (gen_random_uuid(), gen_random_uuid(), 1, now(), 'fake', 0)"
            .to_owned(),
        format!("DELETE FROM public.accounts_current WHERE entity_id = '{}'", ids[1]),
    ];
    // The lazy role may write the projection as far as privileges go, and the owner may write
    // anything: from a trigger (at trigger depth 1, which a WHEN (pg_trigger_depth() < 1) guard
    // would let through), the projection's refusal still fires.
    for (who, mut conn) in [("lazy", lazy(&db).await?), ("owner", db.connect_owner().await?)] {
        for (n, attack) in attacks.iter().enumerate() {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CREATE TEMP TABLE t{n} (a int);
                 CREATE FUNCTION pg_temp.attack{n}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {attack}; RETURN NEW; END $$;
                 CREATE TRIGGER attack AFTER INSERT ON t{n} FOR EACH ROW EXECUTE FUNCTION pg_temp.attack{n}();
                 CREATE TEMP VIEW v{n} AS SELECT 1 AS a;
                 CREATE FUNCTION pg_temp.instead{n}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {attack}; RETURN NEW; END $$;
                 CREATE TRIGGER attack INSTEAD OF INSERT ON v{n} FOR EACH ROW EXECUTE FUNCTION pg_temp.instead{n}();"
            )))
            .execute(&mut conn)
            .await?;
            for via in [format!("INSERT INTO t{n} VALUES (1)"), format!("INSERT INTO v{n} VALUES (1)")] {
                let err = refused(&mut conn, &via).await?;
                assert!(
                    matches!(&err, Error::AppendOnly { table, .. } if table == "accounts_current"),
                    "{who}: {attack} via {via}: {err:?}"
                );
            }
            // Directly too, naturally.
            let err = refused(&mut conn, attack).await?;
            assert!(
                matches!(&err, Error::AppendOnly { .. } | Error::PermissionDenied { .. }),
                "{who}: {attack}: {err:?}"
            );
        }
        // Setting the marker immu's trigger sets does not help either, outside its trigger.
        sqlx::raw_sql("SELECT set_config('immu.writing', 'public.accounts', false)")
            .execute(&mut conn)
            .await?;
        let err = refused(&mut conn, &attacks[0]).await?;
        assert!(matches!(&err, Error::AppendOnly { .. }), "{who}: {err:?}");
    }
    assert_eq!(state(&db, at).await?, before, "nothing changed");
    Ok(())
}

async fn every_privilege_on_every_table_is_not_enough(db: Db) -> TestResult {
    let (ids, at) = setup(&db).await?;
    let mut conn = lazy(&db).await?;
    let before = state(&db, at).await?;
    // With the TRIGGER privilege, a trigger of the lazy role on an immu table would run inside
    // immu's trigger as the owner: immu refuses to write at all, and says what to revoke.
    let err = Account::update(&mut conn, ids[0], Account::new("ada", 1)).await.unwrap_err();
    match &err {
        Error::UnsafeSetup { table, problems, fix } => {
            assert_eq!(table, "accounts");
            // The fix is one transaction: a trigger must not outlive the privilege that made it.
            assert!(
                fix.contains("BEGIN; REVOKE TRIGGER ON public.accounts FROM immu_test_lazy;")
                    && fix.ends_with("COMMIT;"),
                "{fix}"
            );
            assert!(
                problems
                    .iter()
                    .any(|p| p.contains("immu_test_lazy may create triggers on public.accounts_current")),
                "{problems:?}"
            );
        }
        other => panic!("expected UnsafeSetup, got {other:?}"),
    }
    assert!(err.to_string().contains("TRIGGER privilege"), "{err}");
    let err = refused(
        &mut conn,
        &format!("INSERT INTO accounts (id, entity_id, version, owner, balance) SELECT gen_random_uuid(), '{}', 4, 'raw', 0", ids[0]),
    )
    .await?;
    assert!(matches!(err, Error::UnsafeSetup { .. }), "{err:?}");
    for (sql, table) in [
        ("UPDATE accounts SET balance = 0", "accounts"),
        ("DELETE FROM accounts", "accounts"),
        ("TRUNCATE accounts", "accounts"),
        ("UPDATE accounts_current SET balance = 0", "accounts_current"),
        ("DELETE FROM accounts_current", "accounts_current"),
        ("TRUNCATE accounts_current", "accounts_current"),
        (
            "MERGE INTO accounts_current c USING accounts h ON h.entity_id = c.entity_id WHEN MATCHED THEN UPDATE SET balance = 0",
            "accounts_current",
        ),
    ] {
        let err = refused(&mut conn, sql).await?;
        assert!(matches!(&err, Error::AppendOnly { table: t, .. } if t == table), "{sql}: {err:?}");
    }
    assert_eq!(state(&db, at).await?, before, "nothing changed");
    // The owner's sync revokes the dangerous privileges again; writes go on.
    sqlx::raw_sql("SELECT immu.sync_versioning('accounts')").execute(&db.owner).await?;
    let v = Account::update(&mut conn, ids[0], Account::new("ada", 1)).await?;
    assert_eq!(v.version, 4);
    let trigger: bool =
        sqlx::query_scalar("SELECT has_table_privilege('immu_test_lazy', 'accounts_current', 'TRIGGER')")
            .fetch_one(&db.owner)
            .await?;
    assert!(!trigger);
    Ok(())
}

async fn raw_inserts_follow_the_rules_of_the_write_path(db: Db) -> TestResult {
    let (ids, at) = setup(&db).await?;
    let before = state(&db, at).await?;
    let (live, deleted) = (ids[0], ids[2]);
    for (who, mut conn) in [("application", db.connect().await?), ("owner", db.connect_owner().await?)] {
        let insert = |entity: Uuid, version: &str, tombstone: bool, owner: &str, balance: i64| {
            format!(
                "INSERT INTO accounts (id, entity_id, version, deleted_at, owner, balance) \
                 VALUES (gen_random_uuid(), '{entity}', {version}, {}, '{owner}', {balance})",
                if tombstone { "now()" } else { "NULL" }
            )
        };
        for (what, sql, reason) in [
            ("a tombstone as version 1", insert(Uuid::now_v7(), "1", true, "x", 0), "is a tombstone"),
            ("an update of a deleted entity", insert(deleted, "5", false, "cy", 999), "is deleted"),
            ("a tombstone after a tombstone", insert(deleted, "5", true, "cy", 131), "already deleted"),
            ("a tombstone with other data", insert(live, "4", true, "ada", 0), "must carry the data"),
            ("a repeated version", insert(live, "3", false, "ada", 5), "skip or repeat"),
            ("a skipped version", insert(live, "5", false, "ada", 5), "skip or repeat"),
            ("a NULL version", insert(live, "NULL", false, "ada", 5), "version check"),
            ("a first version of an existing entity", insert(live, "1", false, "ada", 5), "skip or repeat"),
        ] {
            let err = refused(&mut conn, &sql).await?;
            assert!(
                matches!(&err, Error::InvalidHistory { table, message } if table == "accounts" && message.contains(reason)),
                "{who}: {what}: {err:?}"
            );
        }
    }
    assert_eq!(state(&db, at).await?, before, "nothing changed");
    // An undelete by hand must carry the tombstone's data, and is then accepted.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO accounts (id, entity_id, version, owner, balance) VALUES (gen_random_uuid(), '{deleted}', 5, 'cy', 131)"
    )))
    .execute(&db.pool)
    .await?;
    assert_eq!(Account::find(&db.pool, deleted).await?.version, 5);
    Ok(())
}

async fn refusals_name_the_table_and_the_reason(db: Db) -> TestResult {
    let (ids, _) = setup(&db).await?;
    // A NULL in one of the entity's columns is reported against the history table.
    let err = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO accounts (id, entity_id, version, owner, balance) VALUES (gen_random_uuid(), '{}', 4, NULL, 0)",
        ids[0]
    )))
    .execute(&db.pool)
    .await
    .unwrap_err();
    let db_err = err.as_database_error().expect("a database error");
    assert_eq!((db_err.code().as_deref(), db_err.table()), (Some("23502"), Some("accounts")), "{err}");
    // A NULL entity_id too.
    let err = sqlx::raw_sql("INSERT INTO accounts (id, entity_id, version, owner, balance) VALUES (gen_random_uuid(), NULL, 1, 'x', 0)")
        .execute(&db.pool)
        .await
        .unwrap_err();
    let db_err = err.as_database_error().expect("a database error");
    assert_eq!((db_err.code().as_deref(), db_err.table()), (Some("23502"), Some("accounts")), "{err}");
    // A REPEATABLE READ transaction whose snapshot predates another writer's version: the insert
    // says its snapshot is stale (SQLSTATE 40001, so retry logic retries it).
    let mut stale = db.connect().await?;
    let mut tx = stale.begin().await?;
    sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
    let seen: i64 = sqlx::query_scalar("SELECT version FROM accounts_current WHERE entity_id = $1")
        .bind(ids[0])
        .fetch_one(&mut *tx)
        .await?;
    Account::modify(&db.pool, ids[0], |a| a.balance += 1).await?;
    let err = sqlx::query(
        "INSERT INTO accounts (id, entity_id, version, owner, balance) VALUES ($1, $2, $3, 'late', 0)",
    )
    .bind(Uuid::now_v7())
    .bind(ids[0])
    .bind(seen + 1)
    .execute(&mut *tx)
    .await
    .unwrap_err();
    let db_err = err.as_database_error().expect("a database error");
    assert_eq!(db_err.code().as_deref(), Some("40001"), "{err}");
    assert!(db_err.message().contains("stale snapshot"), "{err}");
    assert_eq!(db_err.table(), Some("accounts"));
    tx.rollback().await?;
    Ok(())
}

async fn the_machinery_cannot_be_called_or_managed_by_the_application(db: Db) -> TestResult {
    let (ids, at) = setup(&db).await?;
    let before = state(&db, at).await?;
    let mut app = db.connect().await?;
    for (sql, expect) in [
        // The SECURITY DEFINER trigger function: nobody else may execute it, or attach it.
        ("SELECT public.accounts_immu_check()", "permission denied for function accounts_immu_check"),
        ("SELECT immu.sync_versioning('accounts')", "must be the owner"),
        ("SELECT immu.rebuild_projection('accounts')", "must be the owner"),
        ("SELECT immu.add_versioning('accounts')", "must be the owner"),
        ("SELECT immu.configure_versioning('accounts', require_actor => false)", "must be the owner"),
        ("SELECT immu.upgrade()", ""),
        ("DELETE FROM immu.versioned_tables", ""),
        ("UPDATE immu.versioned_tables SET release = 0", ""),
    ] {
        let result = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut app).await;
        if let Err(err) = result {
            assert!(err.to_string().contains(expect), "{sql}: {err}");
        }
    }
    // (An upgrade by the application does nothing, and the catalog rows it may not write are
    // invisible to its UPDATE and DELETE: row-level security.)
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM immu.versioned_tables WHERE release = immu.release()")
            .fetch_one(&db.owner)
            .await?;
    assert_eq!(rows, 4);
    // The write function with odd arguments: unknown kinds and columns are refused.
    for sql in [
        format!("SELECT * FROM accounts_immu_write(immu_kind => 'truncate', immu_id => gen_random_uuid(), immu_entity_id => '{}')", ids[0]),
        "SELECT * FROM accounts_immu_write(immu_kind => 'insert', immu_id => gen_random_uuid(), immu_entity_id => gen_random_uuid(), immu_columns => '{owner,version}', owner => 'x')".to_owned(),
    ] {
        let err = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone())).execute(&mut app).await.unwrap_err();
        assert!(err.as_database_error().is_some(), "{sql}: {err}");
    }
    assert_eq!(state(&db, at).await?, before, "nothing changed");
    Ok(())
}

async fn the_insert_trigger_cannot_be_borrowed(db: Db) -> TestResult {
    // immu's insert trigger runs as the table's owner. Attached to a table of the attacker's, it
    // would write the projection for rows that never reach the history, and run the attacker's
    // casts and domain checks as the owner.
    let (ids, at) = setup(&db).await?;
    let before = state(&db, at).await?;
    let mut app = db.connect().await?;
    sqlx::raw_sql("CREATE TEMP TABLE t (LIKE public.accounts)").execute(&mut app).await?;
    let err = refused(
        &mut app,
        "CREATE TRIGGER x BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION public.accounts_immu_check()",
    )
    .await?;
    assert!(
        matches!(&err, Error::PermissionDenied { message } if message.contains("accounts_immu_check")),
        "{err:?}"
    );
    // Even the owner cannot make it serve another table.
    let mut owner = db.connect_owner().await?;
    sqlx::raw_sql(
        "CREATE TEMP TABLE t (LIKE public.accounts);
         CREATE TRIGGER x BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION public.accounts_immu_check();",
    )
    .execute(&mut owner)
    .await?;
    let err = refused(
        &mut owner,
        &format!("INSERT INTO t (owner, balance, id, entity_id, version) VALUES ('m', 1000000, gen_random_uuid(), '{}', 4)", ids[0]),
    )
    .await?;
    assert!(matches!(&err, Error::UnsafeSetup { .. }), "{err:?}");
    assert!(err.to_string().contains("is the insert trigger of public.accounts"), "{err}");
    assert_eq!(state(&db, at).await?, before, "nothing changed");
    Ok(())
}

async fn a_role_with_trigger_cannot_replace_immus_refusals(db: Db) -> TestResult {
    // A role granted every privilege may replace a table's triggers (CREATE OR REPLACE TRIGGER
    // needs only the TRIGGER privilege). immu's refusals hold anyway: the history's run again as a
    // constraint trigger, which cannot be replaced, the projection's as row security, which only
    // the owner can change, and TRUNCATE is stopped by a foreign key from an anchor table nobody
    // else may touch.
    let (_, at) = setup(&db).await?;
    let before = state(&db, at).await?;
    let mut lazy = lazy(&db).await?;
    sqlx::raw_sql(
        "CREATE OR REPLACE TRIGGER immu_append_only BEFORE INSERT ON accounts FOR EACH STATEMENT EXECUTE FUNCTION immu.refuse_change();
         CREATE OR REPLACE TRIGGER immu_projection BEFORE TRUNCATE ON accounts_current FOR EACH STATEMENT EXECUTE FUNCTION immu.refuse_change();",
    )
    .execute(&mut lazy)
    .await?;
    for (sql, table, operation) in [
        ("UPDATE accounts SET balance = 1000000", "accounts", "UPDATE"),
        ("DELETE FROM accounts", "accounts", "DELETE"),
        ("TRUNCATE accounts", "accounts", "TRUNCATE"),
        ("UPDATE accounts_current SET balance = 1000000", "accounts_current", "UPDATE"),
        ("DELETE FROM accounts_current", "accounts_current", "DELETE"),
        ("INSERT INTO accounts_current (entity_id) VALUES (gen_random_uuid())", "accounts_current", "INSERT"),
        ("TRUNCATE accounts_current", "accounts_current", "TRUNCATE"),
    ] {
        let err = refused(&mut lazy, sql).await?;
        assert!(
            matches!(&err, Error::AppendOnly { table: t, operation: o } if t == table && o == operation),
            "{sql}: {err:?}"
        );
    }
    for sql in ["TRUNCATE accounts CASCADE", "TRUNCATE accounts_current CASCADE"] {
        let err = refused(&mut lazy, sql).await?;
        assert!(
            matches!(&err, Error::PermissionDenied { message } if message.contains("anchor_")),
            "{sql}: {err:?}"
        );
    }
    for sql in [
        "CREATE OR REPLACE TRIGGER immu_append_only_rows AFTER INSERT ON accounts FOR EACH ROW EXECUTE FUNCTION immu.refuse_change()",
        "DROP TRIGGER immu_append_only_rows ON accounts",
        "ALTER TABLE accounts_current DISABLE ROW LEVEL SECURITY",
        "DROP POLICY immu_update ON accounts_current",
        "ALTER POLICY immu_update ON accounts_current WITH CHECK (true)",
        "CREATE POLICY mine ON accounts_current FOR ALL USING (true) WITH CHECK (true)",
        "ALTER TABLE accounts DISABLE TRIGGER immu_append_only_rows",
    ] {
        sqlx::raw_sql(sql).execute(&mut lazy).await.expect_err(sql);
    }
    assert_eq!(state(&db, at).await?, before, "nothing changed");
    // immu itself refuses to write meanwhile, and its sync restores everything.
    let err = Account::insert(&db.pool, Account::new("x", 1)).await.unwrap_err();
    assert!(matches!(err, Error::SchemaDrift { .. } | Error::UnsafeSetup { .. }), "{err:?}");
    sqlx::raw_sql("SELECT immu.sync_versioning('accounts')").execute(&db.owner).await?;
    Account::insert(&db.pool, Account::new("x", 1)).await?;
    Ok(())
}

async fn code_of_another_role_on_immus_tables_stops_immu(db: Db) -> TestResult {
    let (ids, at) = setup(&db).await?;
    let mut lazy = lazy(&db).await?;
    // An AFTER trigger of the lazy role on the history: it would run as whoever writes, the
    // owner's maintenance too. immu's writes, and its sync, refuse while it exists.
    sqlx::raw_sql(
        "CREATE FUNCTION pg_temp.spy() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
         CREATE TRIGGER spy AFTER INSERT ON accounts FOR EACH ROW EXECUTE FUNCTION pg_temp.spy();",
    )
    .execute(&mut lazy)
    .await?;
    let err = Account::modify(&db.pool, ids[0], |a| a.balance += 1).await.unwrap_err();
    match &err {
        Error::UnsafeSetup { problems, .. } => {
            assert!(
                problems.iter().any(|p| p.contains("trigger spy on public.accounts is not immu's")),
                "{problems:?}"
            )
        }
        other => panic!("expected UnsafeSetup, got {other:?}"),
    }
    let err = sqlx::raw_sql("SELECT immu.sync_versioning('accounts')").execute(&db.owner).await.unwrap_err();
    let err = Error::from(err);
    assert!(
        matches!(&err, Error::UnsafeSetup { problems, .. } if problems.iter().any(|p| p.contains("trigger spy"))),
        "{err:?}"
    );
    // The owner drops it (the error says how), and syncs.
    sqlx::raw_sql("DROP TRIGGER spy ON accounts; SELECT immu.sync_versioning('accounts');")
        .execute(&db.owner)
        .await?;
    Account::modify(&db.pool, ids[0], |a| a.balance += 1).await?;
    // A rule on the projection, by its owner: immu refuses too.
    sqlx::raw_sql("CREATE RULE r AS ON UPDATE TO accounts_current DO ALSO NOTIFY accounts")
        .execute(&db.owner)
        .await?;
    let err = Account::modify(&db.pool, ids[0], |a| a.balance += 1).await.unwrap_err();
    assert!(
        matches!(&err, Error::UnsafeSetup { problems, .. } if problems.iter().any(|p| p.contains("rule r on public.accounts_current"))),
        "{err:?}"
    );
    sqlx::raw_sql("DROP RULE r ON accounts_current").execute(&db.owner).await?;
    // A trigger of the lazy role whose function belongs to a superuser (a built-in, or one of
    // immu's own): not the owner's code either, even though a superuser is a member of every role.
    sqlx::raw_sql(
        "DO $$ BEGIN CREATE ROLE immu_test_super SUPERUSER NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         CREATE FUNCTION public.stop_everything() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'stopped'; END $$;
         ALTER FUNCTION public.stop_everything() OWNER TO immu_test_super;
         GRANT TRIGGER ON accounts TO immu_test_lazy;",
    )
    .execute(&db.owner)
    .await?;
    sqlx::raw_sql("CREATE TRIGGER zz AFTER INSERT ON accounts FOR EACH STATEMENT EXECUTE FUNCTION public.stop_everything()")
        .execute(&mut lazy)
        .await?;
    sqlx::raw_sql("REVOKE TRIGGER ON accounts FROM immu_test_lazy").execute(&db.owner).await?;
    let err = Account::modify(&db.pool, ids[0], |a| a.balance += 1).await.unwrap_err();
    assert!(
        matches!(&err, Error::UnsafeSetup { problems, .. } if problems.iter().any(|p| p.contains("trigger zz on public.accounts is not immu's"))),
        "{err:?}"
    );
    sqlx::raw_sql("DROP TRIGGER zz ON accounts").execute(&db.owner).await?;
    Account::modify(&db.pool, ids[0], |a| a.balance += 1).await?;
    // The catalog is the owners': the application cannot register a table of its own with a
    // projection of someone else's.
    let mut app = db.connect().await?;
    sqlx::raw_sql("CREATE TEMP TABLE mine (a int)").execute(&mut app).await?;
    let err = refused(
        &mut app,
        "INSERT INTO immu.versioned_tables (table_name, projection, release, columns, routines) \
         VALUES ('pg_temp.mine', 'public.invoices', 0, '[]', '{}')",
    )
    .await?;
    assert!(err.to_string().contains("row-level security"), "{err}");
    let after = state(&db, at).await?;
    assert_eq!(after.as_of, state(&db, at).await?.as_of);
    Ok(())
}

async fn the_projections_row_security_is_part_of_the_machinery(db: Db) -> TestResult {
    // Row security keeps every role but the owner from writing the projection. The owner can turn
    // it off or add a policy that lets others write: immu then refuses to write, and names it,
    // until the sync puts immu's policies back (and drops the others).
    let (ids, at) = setup(&db).await?;
    let before = state(&db, at).await?;
    for (sabotage, named) in [
        (
            "ALTER TABLE accounts_current DISABLE ROW LEVEL SECURITY",
            "row security of public.accounts_current is disabled",
        ),
        (
            "DROP POLICY immu_update ON accounts_current",
            "policy immu_update on public.accounts_current is missing",
        ),
        (
            "CREATE POLICY let_in ON accounts_current FOR UPDATE USING (true) WITH CHECK (true)",
            "policy let_in on public.accounts_current is not immu's",
        ),
        (
            "DROP POLICY immu_delete ON accounts_current; CREATE POLICY immu_delete ON accounts_current FOR ALL USING (true)",
            "policy immu_delete on public.accounts_current is not as immu made it",
        ),
        (
            "ALTER POLICY immu_update ON accounts_current WITH CHECK (true)",
            "policy immu_update on public.accounts_current is not as immu made it",
        ),
        ("ALTER TABLE accounts_current FORCE ROW LEVEL SECURITY", "row security of public.accounts_current is forced"),
        (
            "CREATE OR REPLACE TRIGGER immu_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON accounts FOR EACH STATEMENT
                 WHEN (false) EXECUTE FUNCTION immu.refuse_change();
             ALTER TABLE accounts ENABLE ALWAYS TRIGGER immu_append_only",
            "trigger immu_append_only on public.accounts is not as immu made it",
        ),
    ] {
        sqlx::raw_sql(sabotage).execute(&db.owner).await?;
        let err = Account::modify(&db.pool, ids[0], |a| a.balance += 1).await.expect_err(sabotage);
        assert!(
            matches!(&err, Error::SchemaDrift { differences, .. } if differences.iter().any(|d| d.description.starts_with(named))),
            "{sabotage}: {err:?}"
        );
        assert_eq!(state(&db, at).await?, before, "{sabotage}: nothing written");
        sqlx::raw_sql("SELECT immu.sync_versioning('accounts')").execute(&db.owner).await?;
        let problems: i64 = sqlx::query_scalar("SELECT count(*) FROM immu.check_table('public.accounts')")
            .fetch_one(&db.owner)
            .await?;
        assert_eq!(problems, 0, "{sabotage}: the sync restored immu's policies");
    }
    let policies: Vec<String> = sqlx::query_scalar(
        "SELECT polname::text FROM pg_policy WHERE polrelid = 'accounts_current'::regclass ORDER BY 1",
    )
    .fetch_all(&db.owner)
    .await?;
    assert_eq!(policies, ["immu_delete", "immu_insert", "immu_read", "immu_update"]);
    // And they hold again: a role granted every privilege still cannot write the projection.
    let mut lazy = lazy(&db).await?;
    let err = refused(&mut lazy, "UPDATE accounts_current SET balance = 0").await?;
    assert!(matches!(&err, Error::AppendOnly { table, .. } if table == "accounts_current"), "{err:?}");
    assert_eq!(state(&db, at).await?, before);
    Ok(())
}

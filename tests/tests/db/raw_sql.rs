//! The database itself enforces append-only history, whatever SQL a user runs.

use immu_core::{Error, Immutable};
use immu_tests::harness::{Db, TestResult};
use immu_tests::models::{Account, NeverMigrated};
use sqlx::PgConnection;
use uuid::Uuid;

immu_tests::tests![
    raw_update_is_refused_with_a_clear_error,
    raw_update_matching_no_row_is_refused_too,
    raw_delete_is_refused,
    raw_truncate_is_refused,
    refusal_holds_under_replica_replication_role,
    refusal_holds_for_keyword_named_tables,
    versions_inserted_by_hand_must_continue_the_history,
    a_version_inserted_by_hand_becomes_current,
    the_database_stamps_every_version_with_its_clock,
    tombstone_must_be_stamped_at_its_valid_from,
    missing_table_is_a_typed_error,
    a_damaged_projection_is_rebuilt_from_history,
];

/// Runs `sql` and returns the database error it fails with.
async fn refusal(
    conn: &mut PgConnection,
    sql: &'static str,
) -> Result<Error, Box<dyn std::error::Error + Send + Sync>> {
    match sqlx::raw_sql(sql).execute(conn).await {
        Ok(_) => Err(format!("{sql:?} was not refused").into()),
        Err(err) => Ok(Error::from(err)),
    }
}

fn assert_append_only(err: &Error, table: &str, operation: &str) {
    match err {
        Error::AppendOnly { table: t, operation: op } => {
            assert_eq!((t.as_str(), op.as_str()), (table, operation), "{err:?}");
        }
        other => panic!("expected AppendOnly, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(table) && message.contains("append-only"), "{message}");
}

async fn raw_update_is_refused_with_a_clear_error(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 100)).await?;
    let mut conn = db.connect_owner().await?;
    let raw = sqlx::raw_sql("UPDATE accounts SET balance = 0").execute(&mut conn).await.unwrap_err();
    // What the database says, as a psql user would see it:
    let db_err = raw.as_database_error().expect("a database error");
    assert_eq!(db_err.code().as_deref(), Some(immu_core::APPEND_ONLY_SQLSTATE));
    assert_eq!(db_err.message(), r#"UPDATE on "accounts" refused: the table is append-only"#);
    assert_append_only(&Error::from(raw), "accounts", "UPDATE");
    assert_eq!(Account::find(&db.pool, v1.entity_id).await?, v1, "nothing changed");
    Ok(())
}

async fn raw_update_matching_no_row_is_refused_too(db: Db) -> TestResult {
    let mut conn = db.connect_owner().await?;
    let err = refusal(&mut conn, "UPDATE accounts SET balance = 0 WHERE false").await?;
    assert_append_only(&err, "accounts", "UPDATE");
    Ok(())
}

async fn raw_delete_is_refused(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 100)).await?;
    let mut conn = db.connect_owner().await?;
    let err = refusal(&mut conn, "DELETE FROM accounts").await?;
    assert_append_only(&err, "accounts", "DELETE");
    assert_eq!(Account::history(&db.pool, v1.entity_id).await?, vec![v1]);
    Ok(())
}

async fn raw_truncate_is_refused(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 100)).await?;
    let mut conn = db.connect_owner().await?;
    let err = refusal(&mut conn, "TRUNCATE accounts").await?;
    assert_append_only(&err, "accounts", "TRUNCATE");
    assert_eq!(Account::history(&db.pool, v1.entity_id).await?, vec![v1]);
    Ok(())
}

async fn refusal_holds_under_replica_replication_role(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 100)).await?;
    let mut conn = db.connect_owner().await?;
    // The test role is a superuser, as the table owner often is: an ordinary trigger is skipped
    // in replica mode, an ENABLE ALWAYS trigger is not.
    sqlx::raw_sql("SET session_replication_role = replica").execute(&mut conn).await?;
    for (sql, op) in [
        ("UPDATE accounts SET balance = 0", "UPDATE"),
        ("DELETE FROM accounts", "DELETE"),
        ("TRUNCATE accounts", "TRUNCATE"),
    ] {
        let err = refusal(&mut conn, sql).await?;
        assert_append_only(&err, "accounts", op);
    }
    assert_eq!(Account::history(&db.pool, v1.entity_id).await?, vec![v1]);
    Ok(())
}

async fn refusal_holds_for_keyword_named_tables(db: Db) -> TestResult {
    let mut conn = db.connect_owner().await?;
    let err = refusal(&mut conn, r#"UPDATE "order" SET "user" = 'x'"#).await?;
    assert_append_only(&err, "order", "UPDATE");
    let err = refusal(&mut conn, r#"DELETE FROM "order""#).await?;
    assert_append_only(&err, "order", "DELETE");
    Ok(())
}

async fn versions_inserted_by_hand_must_continue_the_history(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 100)).await?;
    let insert = |version: i64, valid_from: &'static str| {
        let pool = db.pool.clone();
        async move {
            let sql = format!(
                "INSERT INTO accounts (id, entity_id, version, valid_from, owner, balance) VALUES ($1, $2, $3, {valid_from}, 'x', 0)"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(Uuid::now_v7())
                .bind(v1.entity_id)
                .bind(version)
                .execute(&pool)
                .await
        }
    };
    // By hand, bypassing immu: a repeated, a skipped, a time-travelling version.
    for (version, valid_from, reason) in [
        (1, "clock_timestamp()", "would skip or repeat a version: its latest version is 1"),
        (3, "clock_timestamp()", "would skip or repeat a version: its latest version is 1"),
        (0, "clock_timestamp()", "fails the version check"),
    ] {
        let err = Error::from(insert(version, valid_from).await.unwrap_err());
        match &err {
            Error::InvalidHistory { table, message } => {
                assert_eq!(table, "accounts");
                assert!(message.contains(reason), "{message}");
            }
            other => panic!("version {version}: expected InvalidHistory, got {other:?}"),
        }
    }
    assert_eq!(Account::history(&db.pool, v1.entity_id).await?, vec![v1.clone()]);
    // The next version, by hand, is accepted: the check is exact, not a blanket refusal.
    insert(2, "clock_timestamp()").await?;
    assert_eq!(Account::find(&db.pool, v1.entity_id).await?.version, 2);
    Ok(())
}

async fn the_database_stamps_every_version_with_its_clock(db: Db) -> TestResult {
    // Whatever valid_from a raw insert names (none, infinite, backdated, far in the future), the
    // database replaces it with its own clock, after the previous version's.
    let id = Uuid::now_v7();
    for (version, valid_from) in [
        (1, "NULL"),
        (2, "'infinity'"),
        (3, "'-infinity'"),
        (4, "now() - interval '10 years'"),
        (5, "'200000-01-01'"),
    ] {
        let sql = format!(
            "INSERT INTO accounts (id, entity_id, version, valid_from, owner, balance) \
             VALUES (gen_random_uuid(), $1, {version}, {valid_from}, 'x', {version}) \
             RETURNING valid_from, clock_timestamp() - valid_from"
        );
        let (stored, age): (chrono::DateTime<chrono::Utc>, sqlx::postgres::types::PgInterval) =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_one(&db.pool).await?;
        assert!(
            age.months == 0 && age.days == 0 && (0..1_000_000).contains(&age.microseconds),
            "{valid_from}: {stored} ({age:?})"
        );
    }
    let history = Account::history(&db.pool, id).await?;
    assert_eq!(history.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert!(history.windows(2).all(|w| w[0].valid_from <= w[1].valid_from), "{history:?}");
    // Version 0 and a NULL version fail the version check; nothing reaches the projection.
    for version in ["0", "NULL", "-1"] {
        let sql = format!(
            "INSERT INTO accounts (id, entity_id, version, valid_from, owner, balance) \
             VALUES (gen_random_uuid(), gen_random_uuid(), {version}, now(), 'x', 0)"
        );
        let err = Error::from(sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&db.pool).await.unwrap_err());
        assert!(
            matches!(&err, Error::InvalidHistory { table, message } if table == "accounts" && message.contains("fails the version check")),
            "{version}: {err:?}"
        );
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts").fetch_one(&db.pool).await?;
    assert_eq!(total, 5);
    let projected: i64 =
        sqlx::query_scalar("SELECT count(*) FROM accounts_current").fetch_one(&db.pool).await?;
    assert_eq!(projected, 1, "a refused version leaves no row in the projection");
    Ok(())
}

async fn a_version_inserted_by_hand_becomes_current(db: Db) -> TestResult {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO accounts (id, entity_id, version, valid_from, owner, balance) VALUES ($1, $2, 1, clock_timestamp(), 'x', 0)")
        .bind(Uuid::now_v7())
        .bind(id)
        .execute(&db.pool)
        .await?;
    let projected: Option<i64> =
        sqlx::query_scalar("SELECT version FROM accounts_current WHERE entity_id = $1")
            .bind(id)
            .fetch_optional(&db.pool)
            .await?;
    assert_eq!(projected, Some(1));
    assert_eq!(Account::modify(&db.pool, id, |a| a.balance = 1).await?.version, 2);
    // Version 3 by hand, then through immu: the projection follows both.
    sqlx::query("INSERT INTO accounts (id, entity_id, version, valid_from, owner, balance) VALUES ($1, $2, 3, clock_timestamp(), 'y', 7)")
        .bind(Uuid::now_v7())
        .bind(id)
        .execute(&db.pool)
        .await?;
    let current = Account::find(&db.pool, id).await?;
    assert_eq!((current.version, current.balance, current.owner.as_str()), (3, 7, "y"));
    assert_eq!(Account::delete(&db.pool, id).await?.version, 4);
    assert!(Account::find(&db.pool, id).await.unwrap_err().is_deleted());
    Ok(())
}

async fn tombstone_must_be_stamped_at_its_valid_from(db: Db) -> TestResult {
    // A raw tombstone names any non-NULL deleted_at: the database stamps it at its valid_from.
    let v1 = Account::insert(&db.pool, Account::new("x", 0)).await?;
    let (valid_from, deleted_at): (chrono::DateTime<chrono::Utc>, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
        "INSERT INTO accounts (id, entity_id, version, valid_from, deleted_at, owner, balance)
         VALUES (gen_random_uuid(), $1, 2, now(), now() - interval '1 day', 'x', 0) RETURNING valid_from, deleted_at",
    )
    .bind(v1.entity_id)
    .fetch_one(&db.pool)
    .await?;
    assert_eq!(deleted_at, Some(valid_from));
    assert!(Account::find(&db.pool, v1.entity_id).await.unwrap_err().is_deleted());
    // And the CHECK stays, for a tombstone written with the trigger disabled.
    let check: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'immu_tombstone_at_valid_from' AND conrelid = 'accounts'::regclass",
    )
    .fetch_one(&db.pool)
    .await?;
    assert_eq!(check, "CHECK (((deleted_at IS NULL) OR (deleted_at = valid_from)))");
    Ok(())
}

async fn missing_table_is_a_typed_error(db: Db) -> TestResult {
    let err = NeverMigrated::insert(&db.pool, NeverMigrated { name: "x".into() }).await.unwrap_err();
    assert!(matches!(&err, Error::MissingTable { table } if table.starts_with("never_migrated")), "{err:?}");
    assert!(err.to_string().contains("create_table"), "{err}");
    let err = NeverMigrated::find(&db.pool, Uuid::now_v7()).await.unwrap_err();
    assert!(matches!(&err, Error::MissingTable { table } if table == "never_migrated"), "{err:?}");
    Ok(())
}

/// What the projection says, every entity (tombstones included), and what the history says.
type Rows = Vec<(Uuid, i64, i64)>;
async fn projection_and_history(db: &Db) -> immu_core::Result<(Rows, Rows)> {
    let key = |v: &immu_core::Versioned<Account>| (v.entity_id, v.version, v.balance);
    let mut projected: Rows =
        Account::query().with_deleted().fetch_all(&db.pool).await?.iter().map(key).collect();
    let mut history: Rows =
        Account::query().with_deleted().from_history().fetch_all(&db.pool).await?.iter().map(key).collect();
    projected.sort();
    history.sort();
    Ok((projected, history))
}

async fn a_damaged_projection_is_rebuilt_from_history(db: Db) -> TestResult {
    let a = Account::insert(&db.pool, Account::new("a", 1)).await?;
    Account::modify(&db.pool, a.entity_id, |x| x.balance = 2).await?;
    let b = Account::insert(&db.pool, Account::new("b", 10)).await?;
    Account::delete(&db.pool, b.entity_id).await?;
    let c = Account::insert(&db.pool, Account::new("c", 100)).await?;
    let (projected, history) = projection_and_history(&db).await?;
    assert_eq!(projected, history, "the trigger keeps them equal");

    // Damage it the only way there is: as the owner, with the refusal trigger disabled.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE accounts_current DISABLE TRIGGER immu_projection;
         UPDATE accounts_current SET balance = -1, version = 1 WHERE entity_id = '{a}';
         DELETE FROM accounts_current WHERE entity_id = '{b}';
         INSERT INTO accounts_current (id, entity_id, version, valid_from, owner, balance)
             VALUES (gen_random_uuid(), gen_random_uuid(), 1, now(), 'ghost', 0);
         ALTER TABLE accounts_current ENABLE ALWAYS TRIGGER immu_projection;",
        a = a.entity_id,
        b = b.entity_id,
    )))
    .execute(&db.owner)
    .await?;
    let (projected, history) = projection_and_history(&db).await?;
    assert_ne!(projected, history);

    let rebuild = immu_core::schema::rebuild_projection::<Account>()?;
    let changed: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(rebuild)).fetch_one(&db.owner).await?;
    assert_eq!(changed, 3, "a's row rewritten, b's added back, the ghost removed");
    let (projected, history) = projection_and_history(&db).await?;
    assert_eq!(projected, history);
    assert_eq!(projected.len(), 3);
    assert_eq!(Account::find(&db.pool, a.entity_id).await?.balance, 2);
    assert!(Account::find(&db.pool, b.entity_id).await.unwrap_err().is_deleted());
    assert_eq!(Account::find(&db.pool, c.entity_id).await?.balance, 100);
    // The refusal is back, and writes go on from the rebuilt rows.
    let err = refusal(&mut db.connect_owner().await?, "DELETE FROM accounts_current").await?;
    assert!(matches!(&err, Error::AppendOnly { table, .. } if table == "accounts_current"), "{err:?}");
    assert_eq!(Account::modify(&db.pool, a.entity_id, |x| x.balance = 3).await?.version, 3);
    assert_eq!(Account::undelete(&db.pool, b.entity_id).await?.version, 3);
    Ok(())
}

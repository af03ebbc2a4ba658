//! An adversarial review of release 4's ledger: legitimate histories that verification reports as
//! broken (false alarms), tampering that neither the chains nor an earlier digest detect (false
//! negatives). Each test states what should hold; those that fail are findings (see the review's
//! report). Attacks run as the tables' owner or as a superuser (the harness's owner connection).

use std::path::Path;
use std::process::Command;

use immu_core::Immutable;
use immu_core::ledger::{self, Problem};
use immu_tests::harness::{Db, TestResult};
use immu_tests::models::Account;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use uuid::Uuid;

immu_tests::tests![
    a_column_renamed_away_and_shadowed_is_detected,
    a_backdated_entity_under_an_in_flight_transaction_is_detected,
    a_dump_restored_into_another_cluster_verifies_and_refuses_its_digests,
    a_regclass_column_verifies_whatever_the_verifiers_search_path,
    deleting_an_entitys_newest_version_is_detected_without_a_digest,
    stripping_the_hashes_of_a_table_hashed_since_its_creation_is_detected,
    a_digest_with_a_prepared_transaction_and_a_restart_verifies,
    a_shadow_table_on_the_verifiers_search_path_is_not_verified_instead,
    a_transaction_that_writes_a_version_can_be_prepared,
];

/// SQL that recomputes every hash of `entity`'s chain in `table` (and its projection row's), as
/// anyone who reads the module docs can: what an attacker runs after editing a chain.
fn rehash(table: &str, entity: Uuid) -> String {
    format!(
        r#"SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres';
        SET LOCAL extra_float_digits = 1; SET LOCAL bytea_output = 'hex'; SET LOCAL search_path = pg_catalog, public;
        DO $$ DECLARE r record; prev bytea; cols text[]; enc text; v text; c text; BEGIN
            FOR r IN SELECT id, immu_layout FROM {table} WHERE entity_id = '{entity}' ORDER BY valid_from, version LOOP
                SELECT columns INTO cols FROM immu.hash_layouts WHERE table_name = '{table}'::regclass AND layout = r.immu_layout;
                enc := '';
                FOREACH c IN ARRAY cols LOOP
                    IF c IS NULL THEN v := NULL;
                    ELSE EXECUTE format('SELECT (%I)::text FROM {table} WHERE id = $1', c) USING r.id INTO v; END IF;
                    enc := enc || CASE WHEN v IS NULL THEN 'N' ELSE 'V' || length(v) || ':' || v END;
                END LOOP;
                prev := sha256(coalesce(prev, '\x'::bytea) || convert_to(enc, 'UTF8'));
                UPDATE {table} SET immu_hash = prev WHERE id = r.id;
            END LOOP;
            UPDATE {table}_current SET immu_hash = prev WHERE entity_id = '{entity}';
        END $$"#
    )
}

/// FALSE NEGATIVE (table owner, DDL only: no trigger disabled, no superuser right).
///
/// Layouts name columns, and `generate_ledger` follows renames by attribute number. So the
/// owner renames `balance` away (`balance_orig`: every layout follows it, the hashes still
/// verify), adds a new `balance` and fills it with `ALTER COLUMN ... TYPE ... USING` (a table
/// rewrite, which fires no trigger) with whatever it likes. The application reads the forged
/// `balance`; the chains are recomputed over `balance_orig` and verify; the digest's heads are
/// untouched, so it matches too.
async fn a_column_renamed_away_and_shadowed_is_detected(db: Db) -> TestResult {
    let pool = &db.pool;
    let a = Account::insert(pool, Account::new("ada", 100)).await?;
    Account::modify(pool, a.entity_id, |x| x.balance = 150).await?;
    Account::insert(pool, Account::new("bob", 5)).await?;
    let digest = Account::digest(pool).await?;

    sqlx::raw_sql(
        "ALTER TABLE accounts RENAME COLUMN balance TO balance_orig;
         ALTER TABLE accounts ADD COLUMN balance bigint;
         ALTER TABLE accounts ALTER COLUMN balance TYPE bigint
             USING (CASE WHEN owner = 'ada' AND version = 1 THEN 1000000 ELSE balance_orig END);
         ALTER TABLE accounts ALTER COLUMN balance SET NOT NULL;
         SELECT immu.sync_versioning('accounts');",
    )
    .execute(&db.owner)
    .await?;

    // The application now reads a version 1 that was never written.
    let v1 = Account::find_version(pool, a.entity_id, 1).await?;
    assert_eq!(v1.data.balance, 1_000_000);

    let report = Account::verify(pool).against(&digest).await?;
    assert!(
        !report.is_intact(),
        "version 1 of ada now reads balance 1000000 (it was written with 100), and verification says: {report}"
    );
    Ok(())
}

/// FALSE NEGATIVE (superuser, triggers disabled).
///
/// Versions of transactions in flight at a digest are "not judged": neither covered nor checked
/// for backdating. Any xid in the digest's `xip` (here: a transaction that then rolled back, so it
/// wrote nothing that exists) is a free label: a whole entity inserted a year in the past, its
/// chain hashed by the attacker, labelled with that xid, passes verification against the digest,
/// and the next digest covers it as genuine.
async fn a_backdated_entity_under_an_in_flight_transaction_is_detected(db: Db) -> TestResult {
    let pool = &db.pool;
    for i in 0..3 {
        Account::insert(pool, Account::new(&format!("acct-{i}"), 100)).await?;
    }
    // A transaction in flight while the digest is taken; it rolls back.
    let mut long = pool.begin().await?;
    Account::insert(&mut *long, Account::new("never", 1)).await?;
    let in_flight: i64 =
        sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint").fetch_one(&mut *long).await?;
    let digest = Account::digest(pool).await?;
    assert!(digest.snapshot.in_progress().contains(&(in_flight as u64)), "{digest}");
    long.rollback().await?;
    assert!(Account::verify(pool).against(&digest).await?.is_intact());

    // The attacker: an entity that "existed" a year before the digest, through immu's own import
    // (valid chain, valid projection row), then relabelled with the in-flight xid and re-hashed.
    let forged = Uuid::now_v7();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN; SELECT immu.begin_import('accounts');
         INSERT INTO accounts (id, entity_id, version, valid_from, owner, balance)
         VALUES (gen_random_uuid(), '{forged}', 1, now() - interval '1 year', 'mallory', 1000000),
                (gen_random_uuid(), '{forged}', 2, now() - interval '11 months', 'mallory', 2000000);
         SELECT immu.finish_import('accounts'); COMMIT;"
    )))
    .execute(&db.owner)
    .await?;
    db.tamper("accounts",
        &format!(
            "UPDATE accounts SET immu_xid = {in_flight}, immu_actor = NULL, immu_db_user = 'immu_test_app' \
             WHERE entity_id = '{forged}'; \
             UPDATE accounts_current SET immu_xid = {in_flight}, immu_actor = NULL, immu_db_user = 'immu_test_app' \
             WHERE entity_id = '{forged}'; {}",
            rehash("accounts", forged)
        ),
    )
    .await?;
    // The chain is valid on its own (expected: whole-chain rewrites need a digest) ...
    let report = ledger::verify_table(pool, "accounts").await?;
    assert!(report.is_intact(), "{report}");
    // ... but the digest was taken after the entity's valid_from, and it did not see the entity.
    let report = Account::verify(pool).against(&digest).await?;
    assert!(
        !report.is_intact(),
        "an entity inserted after the digest, valid from a year before it, labelled with the xid of a \
         transaction that was in flight at the digest (and rolled back): {report}"
    );
    Ok(())
}

/// A throwaway cluster of its own, started from the same binaries.
async fn another_cluster(
    settings: &[(&str, &str)],
) -> Result<immu_testdb::TempPostgres, Box<dyn std::error::Error + Send + Sync>> {
    let settings: Vec<(String, String)> =
        settings.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    Ok(tokio::task::spawn_blocking(move || {
        let mut builder = immu_testdb::TempPostgres::builder();
        for (name, value) in &settings {
            builder = builder.setting(name, value);
        }
        builder.start()
    })
    .await??)
}

fn url_of(options: &PgConnectOptions) -> String {
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres")
    )
}

fn run(bin: &Path, program: &str, args: &[&str]) -> TestResult {
    let out = Command::new(bin.join(program)).args(args).output()?;
    if !out.status.success() {
        return Err(format!("{program} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// FALSE ALARM, fixed by a typed refusal (a faithful `pg_dump` / restore into another cluster).
///
/// `immu_xid` values are transaction ids of the cluster that wrote them. Restored into a cluster
/// whose transaction counter is behind (any fresh cluster: a move to new hardware or a managed
/// service with a logical dump), every digest breaks: an old digest "sees" the new cluster's
/// writes (their xids are below its xmin), and a new digest sees none of the restored versions
/// (their xids are above its xmax) and reports every restored entity as Backdated.
async fn a_dump_restored_into_another_cluster_verifies_and_refuses_its_digests(db: Db) -> TestResult {
    // This cluster's transaction ids run ahead of a fresh cluster's, as a production cluster's do.
    sqlx::raw_sql(
        "CREATE TEMP TABLE burn (x int);
         DO $$ BEGIN FOR i IN 1..30000 LOOP BEGIN INSERT INTO burn VALUES (i); EXCEPTION WHEN OTHERS THEN NULL; END; END LOOP; END $$;",
    )
    .execute(&db.owner)
    .await?;
    let pool = &db.pool;
    let mut ids = Vec::new();
    for i in 0..4 {
        let a = Account::insert(pool, Account::new(&format!("acct-{i}"), 100)).await?;
        Account::modify(pool, a.entity_id, |x| x.balance += 1).await?;
        ids.push(a.entity_id);
    }
    let old_digest = Account::digest(pool).await?;
    assert!(Account::verify(pool).against(&old_digest).await?.is_intact());

    // pg_dump, restored into a new cluster.
    let server = another_cluster(&[]).await?;
    let bin = server.bin_dir().to_owned();
    let dir = std::env::temp_dir().join(format!("immu-attack-dump-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("dump.sql");
    let source = url_of(&db.options);
    run(
        &bin,
        "pg_dump",
        &["--no-owner", "--no-privileges", "-f", file.to_str().unwrap(), "--dbname", &source],
    )?;
    let mut admin = server.url().parse::<PgConnectOptions>()?.connect().await?;
    sqlx::raw_sql("CREATE DATABASE restored").execute(&mut admin).await?;
    admin.close().await?;
    run(
        &bin,
        "psql",
        &[
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "--dbname",
            &server.url_for("restored"),
            "-f",
            file.to_str().unwrap(),
        ],
    )?;
    std::fs::remove_dir_all(&dir)?;
    let restored: PgPool =
        PgPoolOptions::new().max_connections(2).connect(&server.url_for("restored")).await?;

    let outcome = async {
        // The chains verify wherever the history lives.
        let report = Account::verify(&restored).await?;
        assert!(report.is_intact(), "right after the restore: {report}");
        // One legitimate write on the new cluster.
        Account::modify(&restored, ids[0], |x| x.balance += 1).await?;
        let report = Account::verify(&restored).await?;
        assert!(report.is_intact(), "after a write on the new cluster: {report}");
        // Snapshots of this cluster cannot judge transaction ids of the old one: a digest of the old
        // cluster, or a new one, is refused with a typed error that says why (never a false alarm).
        for attempt in [
            Account::verify(&restored).against(&old_digest).await.map(|r| r.to_string()),
            Account::digest(&restored).await.map(|d| d.to_string()),
        ] {
            match attempt {
                Err(immu_core::Error::InvalidDigest { reason }) => {
                    assert!(reason.contains("restored from another cluster"), "{reason}")
                }
                other => panic!("expected InvalidDigest after a restore into a cluster behind: {other:?}"),
            }
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    restored.close().await;
    tokio::task::spawn_blocking(move || server.stop()).await??;
    outcome
}

/// FALSE ALARM (any column of a `reg*` type).
///
/// The insert trigger renders columns with `search_path = pg_catalog, pg_temp` (its SET clause);
/// verification pins the output settings but not `search_path`. A `regclass` / `regtype` value of
/// an object in a schema on the verifier's path renders unqualified there and qualified in the
/// trigger.
async fn a_regclass_column_verifies_whatever_the_verifiers_search_path(db: Db) -> TestResult {
    sqlx::raw_sql(
        "CREATE TABLE refs (target regclass, kind regtype);
         SELECT immu.add_versioning('refs');
         INSERT INTO refs (id, entity_id, version, target, kind)
         VALUES (gen_random_uuid(), gen_random_uuid(), 1, 'accounts', 'order_status');",
    )
    .execute(&db.owner)
    .await?;
    let report = ledger::verify_table(&db.owner, "refs").await?;
    assert!(report.is_intact(), "nothing was changed: {report}");
    Ok(())
}

/// FALSE NEGATIVE without a digest (superuser, triggers disabled): defence in depth.
///
/// The projection holds each chain's head (version and hash), but verification never compares
/// the history's last version with it: the newest versions of an entity (the chain's tail) can be
/// deleted and every chain still verifies, although the database itself says version 3 exists.
async fn deleting_an_entitys_newest_version_is_detected_without_a_digest(db: Db) -> TestResult {
    let pool = &db.pool;
    let a = Account::insert(pool, Account::new("ada", 100)).await?;
    Account::modify(pool, a.entity_id, |x| x.balance = 0).await?;
    Account::modify(pool, a.entity_id, |x| x.balance = 1_000_000).await?;
    db.tamper(
        "accounts",
        &format!("DELETE FROM accounts WHERE entity_id = '{}' AND version = 3", a.entity_id),
    )
    .await?;
    let head: i64 = sqlx::query_scalar("SELECT version FROM accounts_current WHERE entity_id = $1")
        .bind(a.entity_id)
        .fetch_one(pool)
        .await?;
    assert_eq!(head, 3, "the projection still says version 3");
    let report = ledger::verify_table(pool, "accounts").await?;
    assert!(!report.is_intact(), "version 3 is gone from the history: {report}");
    Ok(())
}

/// FALSE NEGATIVE without a digest (superuser, triggers disabled): the unhashed allowance.
///
/// Verification accepts unhashed versions at the start of a chain (versions written before
/// release 4). Nothing records that this table was hashed from its first version, so setting
/// `immu_hash` (and `immu_xid`) to NULL on every row is a "rewrite" that needs no hashing at all:
/// any value can then be edited, and the report is intact (it only counts `unhashed`).
async fn stripping_the_hashes_of_a_table_hashed_since_its_creation_is_detected(db: Db) -> TestResult {
    let pool = &db.pool;
    let a = Account::insert(pool, Account::new("ada", 100)).await?;
    Account::modify(pool, a.entity_id, |x| x.balance = 150).await?;
    db.tamper("accounts",
        "UPDATE accounts SET immu_hash = NULL, immu_xid = NULL, immu_layout = NULL, balance = balance * 1000; \
         UPDATE accounts_current SET immu_hash = NULL, immu_xid = NULL, immu_layout = NULL, balance = balance * 1000",
    )
    .await?;
    let report = ledger::verify_table(pool, "accounts").await?;
    assert!(
        !report.is_intact() || report.breaks.iter().any(|b| b.problem == Problem::Unhashed),
        "every version of a table created under release 4 lost its hash: {report}"
    );
    Ok(())
}

/// HOLDS (regression): a digest taken while a prepared transaction (PREPARE TRANSACTION, holding an
/// xid) is pending, with a tombstoned entity, verifies after COMMIT PREPARED and across a restart.
async fn a_digest_with_a_prepared_transaction_and_a_restart_verifies(_db: Db) -> TestResult {
    let server = another_cluster(&[("max_prepared_transactions", "4")]).await?;
    let mut admin = server.url().parse::<PgConnectOptions>()?.connect().await?;
    sqlx::raw_sql("CREATE DATABASE prepared").execute(&mut admin).await?;
    admin.close().await?;
    let url = server.url_for("prepared");
    let outcome = async {
        let pool: PgPool = PgPoolOptions::new().max_connections(4).connect(&url).await?;
        immu_core::MIGRATOR.run(&pool).await?;
        immu_tests::MIGRATOR.run(&pool).await?;
        let a = Account::insert(&pool, Account::new("ada", 1)).await?;
        let b = Account::insert(&pool, Account::new("bob", 1)).await?;
        Account::delete(&pool, b.entity_id).await?;
        sqlx::raw_sql(
            "CREATE TABLE side (x int); BEGIN; INSERT INTO side VALUES (1); PREPARE TRANSACTION 'p1'",
        )
        .execute(&pool)
        .await?;
        let digest = Account::digest(&pool).await?;
        assert!(!digest.snapshot.in_progress().is_empty(), "{digest}");
        Account::insert(&pool, Account::new("carol", 1)).await?;
        Account::modify(&pool, a.entity_id, |x| x.balance = 2).await?;
        sqlx::raw_sql("COMMIT PREPARED 'p1'").execute(&pool).await?;
        let report = Account::verify(&pool).against(&digest).await?;
        assert!(report.is_intact(), "{report}");
        pool.close().await;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(digest)
    }
    .await;
    let digest = match outcome {
        Ok(d) => d,
        Err(e) => {
            tokio::task::spawn_blocking(move || server.stop()).await??;
            return Err(e);
        }
    };
    let server = tokio::task::spawn_blocking(move || server.restart().map(|()| server)).await??;
    let pool: PgPool = PgPoolOptions::new().max_connections(2).connect(&server.url_for("prepared")).await?;
    let report = Account::verify(&pool).against(&digest).await?;
    pool.close().await;
    tokio::task::spawn_blocking(move || server.stop()).await??;
    assert!(report.is_intact(), "after a restart: {report}");
    Ok(())
}

/// REGRESSION (release 4): two-phase commit.
///
/// The insert trigger now calls `pg_notify` for every version, and PostgreSQL refuses to PREPARE a
/// transaction that has executed NOTIFY. Every transaction that writes a version can no longer take
/// part in a two-phase commit (XA transaction managers, PREPARE TRANSACTION), which worked in
/// release 3.
async fn a_transaction_that_writes_a_version_can_be_prepared(_db: Db) -> TestResult {
    let server = another_cluster(&[("max_prepared_transactions", "4")]).await?;
    let mut admin = server.url().parse::<PgConnectOptions>()?.connect().await?;
    sqlx::raw_sql("CREATE DATABASE twophase").execute(&mut admin).await?;
    admin.close().await?;
    let url = server.url_for("twophase");
    let outcome = async {
        let pool: PgPool = PgPoolOptions::new().max_connections(2).connect(&url).await?;
        immu_core::MIGRATOR.run(&pool).await?;
        immu_tests::MIGRATOR.run(&pool).await?;
        // PostgreSQL refuses to prepare a transaction that notified: the change feed's wake-up is
        // turned off for it.
        let mut conn = pool.acquire().await?;
        let refused = sqlx::raw_sql(
            "BEGIN; INSERT INTO accounts (id, entity_id, version, owner, balance) \
             VALUES (gen_random_uuid(), gen_random_uuid(), 1, 'ada', 1); PREPARE TRANSACTION 'p0'",
        )
        .execute(&mut *conn)
        .await;
        sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
        drop(conn);
        assert!(refused.is_err(), "PREPARE after NOTIFY is refused by PostgreSQL");
        let prepared = sqlx::raw_sql(
            "BEGIN; SET LOCAL immu.notify = 'off'; INSERT INTO accounts (id, entity_id, version, owner, balance) \
             VALUES (gen_random_uuid(), gen_random_uuid(), 1, 'ada', 1); PREPARE TRANSACTION 'p1'",
        )
        .execute(&pool)
        .await;
        let result = match prepared {
            Ok(_) => {
                sqlx::raw_sql("COMMIT PREPARED 'p1'").execute(&pool).await?;
                Ok(())
            }
            Err(e) => Err(format!("a transaction that writes one version cannot be prepared: {e}").into()),
        };
        pool.close().await;
        result
    }
    .await;
    tokio::task::spawn_blocking(move || server.stop()).await??;
    outcome
}

/// FALSE NEGATIVE (superuser, or anyone who may create a schema in the database).
///
/// `verify_table` / `digest_table` find the table and its projection on the connection's
/// `search_path`, and a digest records the table as `regclass` text (unqualified when visible).
/// A verifier role `auditor` with the default `search_path` (`"$user", public`) resolves
/// `accounts` to `auditor.accounts` once someone creates schema `auditor`: a pristine copy of the
/// table (and its hash layouts, which the copy's owner may write) is verified, and matches the
/// digest, while `public.accounts` is tampered with.
async fn a_shadow_table_on_the_verifiers_search_path_is_not_verified_instead(db: Db) -> TestResult {
    let pool = &db.pool;
    let a = Account::insert(pool, Account::new("ada", 100)).await?;
    Account::modify(pool, a.entity_id, |x| x.balance = 150).await?;
    let digest = Account::digest(pool).await?;
    sqlx::raw_sql(
        "DO $$ BEGIN CREATE ROLE auditor NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         GRANT USAGE ON SCHEMA public TO auditor; GRANT SELECT ON accounts, accounts_current TO auditor;",
    )
    .execute(&db.owner)
    .await?;
    // The attacker keeps a pristine copy where the auditor will look first ...
    sqlx::raw_sql(
        "CREATE SCHEMA auditor; GRANT USAGE ON SCHEMA auditor TO auditor;
         CREATE TABLE auditor.accounts AS SELECT * FROM public.accounts;
         CREATE TABLE auditor.accounts_current AS SELECT * FROM public.accounts_current;
         GRANT SELECT ON auditor.accounts, auditor.accounts_current TO auditor;
         INSERT INTO immu.hash_layouts (table_name, layout, encoding, columns)
             SELECT 'auditor.accounts'::regclass, layout, encoding, columns FROM immu.hash_layouts
             WHERE table_name = 'public.accounts'::regclass;",
    )
    .execute(&db.owner)
    .await?;
    // ... and rewrites history in the real one.
    db.tamper(
        "public.accounts",
        &format!(
            "UPDATE public.accounts SET balance = 1000000 WHERE entity_id = '{}' AND version = 1",
            a.entity_id
        ),
    )
    .await?;
    let auditor: PgPool = PgPoolOptions::new()
        .max_connections(1)
        .after_connect(|c, _| {
            Box::pin(async move { sqlx::raw_sql("SET ROLE auditor").execute(c).await.map(|_| ()) })
        })
        .connect_with(db.options.clone())
        .await?;
    let report = Account::verify(&auditor).against(&digest).await;
    auditor.close().await;
    sqlx::raw_sql(
        "DROP SCHEMA auditor CASCADE; REVOKE ALL ON SCHEMA public FROM auditor; \
         REVOKE ALL ON accounts, accounts_current FROM auditor; DROP ROLE auditor",
    )
    .execute(&db.owner)
    .await?;
    // The auditor's path finds auditor.accounts, which is no versioned table (and not the table
    // the digest names): refused, never verified instead.
    match report {
        Err(immu_core::Error::SchemaDrift { .. } | immu_core::Error::InvalidDigest { .. }) => {}
        Err(other) => return Err(other.into()),
        Ok(report) => assert!(
            !report.is_intact(),
            "public.accounts version 1 was changed in place; the auditor verified: {report}"
        ),
    }
    // And the real table, named as the digest names it, is caught.
    let report = ledger::verify_table(&db.pool, &digest.table).against(&digest).await?;
    assert!(!report.is_intact(), "{report}");
    Ok(())
}

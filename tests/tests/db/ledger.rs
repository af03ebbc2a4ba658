//! Tamper evidence: every version's hash chains to its entity's previous one, verification
//! recomputes the chains, and a digest taken earlier catches a chain rewritten whole. The tamper
//! matrix runs as a superuser (the tests' owner connection), with immu's triggers disabled.

use std::time::Duration;

use immu_core::ledger::{self, Problem};
use immu_core::sea_query::{Expr, ExprTrait};
use immu_core::{Error, Immutable};
use immu_tests::harness::{Db, TestResult};
use immu_tests::models::{Account, Line, Order, Status};
use sqlx::{Connection, PgPool};
use uuid::Uuid;

immu_tests::tests![
    every_kind_of_write_chains_and_verifies,
    hashes_do_not_depend_on_the_writers_session_settings,
    a_digest_taken_while_writers_commit_verifies_with_no_false_alarm,
    the_tamper_matrix_is_detected,
    changing_a_tables_columns_keeps_older_versions_verifiable,
    a_digest_of_another_table_or_garbage_is_a_typed_error,
];

/// Verification of `table`, expected intact.
async fn intact(
    pool: &PgPool,
    table: &str,
) -> Result<ledger::Report, Box<dyn std::error::Error + Send + Sync>> {
    let report = ledger::verify_table(pool, table).await?;
    assert!(report.is_intact(), "{report}");
    Ok(report)
}

async fn every_kind_of_write_chains_and_verifies(db: Db) -> TestResult {
    let pool = &db.pool;
    let a = Account::insert(pool, Account::new("ada", 10)).await?;
    Account::update(pool, a.entity_id, Account::new("ada", 20)).await?;
    Account::modify(pool, a.entity_id, |x| x.balance += 1).await?;
    Account::patch(pool, a.entity_id).set(Account::BALANCE, Expr::col(Account::BALANCE).add(5)).await?;
    Account::delete(pool, a.entity_id).await?;
    Account::undelete(pool, a.entity_id).await?;
    Account::revert(pool, a.entity_id, 1).await?;
    // In a caller's transaction, two entities.
    let mut tx = pool.begin().await?;
    let b = Account::insert(&mut *tx, Account::new("bob", 1)).await?;
    Account::modify(&mut *tx, b.entity_id, |x| x.balance = 2).await?;
    tx.commit().await?;
    // Raw SQL, as the application: the trigger hashes it too, whatever hash it gives.
    sqlx::query(
        "INSERT INTO accounts (id, entity_id, version, owner, balance, immu_hash, immu_xid, immu_layout) \
         VALUES (gen_random_uuid(), $1, 3, 'bob', 3, '\\xdeadbeef', 1, 99)",
    )
    .bind(b.entity_id)
    .execute(pool)
    .await?;
    // Every type the test tables hold: an enum, JSON, bytea, timestamps, NULLs, text of any kind.
    let o = Order::insert(
        pool,
        Order {
            customer: "Zoë \"quoted\" \\ back\nslash 🦀".into(),
            r#select: -1,
            note: None,
            lines: vec![Line { sku: "a:b".into(), qty: 2 }],
            status: Status::Open,
            payload: vec![0, 1, 255, b'N', b'V'],
            due: Some(chrono::Utc::now()),
        },
    )
    .await?;
    Order::modify(pool, o.entity_id, |x| {
        x.note = Some(String::new());
        x.status = Status::Shipped;
    })
    .await?;

    let report = intact(pool, "accounts").await?;
    assert_eq!((report.entities, report.versions, report.unhashed), (2, 10, 0));
    // Progress is reported (every 10,000 versions, and at the end).
    let mut seen = Vec::new();
    let report = Account::verify(pool).on_progress(|p| seen.push(p.versions)).await?;
    assert!(report.is_intact() && report.per_second() > 0.0, "{report}");
    assert_eq!(seen, [10]);
    let report = intact(pool, "order").await?;
    assert_eq!((report.entities, report.versions), (1, 2));
    // The hash, the transaction and the layout are the database's, not the writer's.
    let (xid, layout, hash): (i64, i32, Vec<u8>) = sqlx::query_as(
        "SELECT immu_xid, immu_layout, immu_hash FROM accounts WHERE entity_id = $1 AND version = 3",
    )
    .bind(b.entity_id)
    .fetch_one(pool)
    .await?;
    assert!(xid > 1 && layout == 1 && hash.len() == 32, "{xid} {layout} {hash:?}");
    // The projection holds each chain's head.
    let heads: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM accounts_current c JOIN accounts h USING (entity_id, version) WHERE c.immu_hash = h.immu_hash",
    )
    .fetch_one(pool)
    .await?;
    assert_eq!(heads, 2);
    Ok(())
}

async fn hashes_do_not_depend_on_the_writers_session_settings(db: Db) -> TestResult {
    sqlx::raw_sql(
        "CREATE TABLE samples (r real, d double precision, n numeric, i interval, day date, t time, ts timestamp, \
                               tz timestamptz, b boolean, arr int[], raw bytea, doc jsonb, words text[]);
         SELECT immu.add_versioning('samples');
         GRANT SELECT, INSERT ON samples, samples_current TO immu_test_app;",
    )
    .execute(&db.owner)
    .await?;
    let settings = [
        "SET TimeZone = 'Asia/Kolkata'; SET DateStyle = 'German, DMY'; SET IntervalStyle = 'sql_standard'; SET extra_float_digits = 3; SET bytea_output = 'escape'",
        "SET TimeZone = 'America/St_Johns'; SET DateStyle = 'SQL, MDY'; SET IntervalStyle = 'iso_8601'; SET extra_float_digits = -15",
        "SET TimeZone = 'UTC'; SET DateStyle = 'Postgres'; SET IntervalStyle = 'postgres_verbose'",
    ];
    for (i, set) in settings.iter().enumerate() {
        let mut conn = db.connect().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(*set)).execute(&mut conn).await?;
        sqlx::query(
            "INSERT INTO samples (id, entity_id, version, r, d, n, i, day, t, ts, tz, b, arr, raw, doc, words)
             VALUES (gen_random_uuid(), gen_random_uuid(), 1, 1.1, 0.1 + 0.2, 3.14159265358979323846, '1 day 02:03:04.5',
                     '2024-02-29', '23:59:59.999999', '2024-02-29 12:00', '2024-02-29 12:00+05:30', $1, ARRAY[1, NULL, 3],
                     '\\x00ff5c', '{\"b\": [1, 2.50, null], \"a\": \"x\"}', ARRAY['a,b', NULL, '\"q\"', ''])",
        )
        .bind(i % 2 == 0)
        .execute(&mut conn)
        .await?;
    }
    // A new table does not notify the change feed unless configured to (notify => true).
    let notifies = |db: &Db| {
        let owner = db.owner.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT prosrc LIKE '%pg_notify%' FROM pg_proc WHERE proname = 'samples_immu_check'",
            )
            .fetch_one(&owner)
            .await
        }
    };
    assert!(!notifies(&db).await?, "off by default");
    sqlx::query("SELECT immu.configure_versioning('samples', notify => true)").execute(&db.owner).await?;
    assert!(notifies(&db).await?, "on when configured");
    // And the verifier's own session settings do not matter either.
    let mut conn = db.connect().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(settings[0])).execute(&mut conn).await?;
    let report = ledger::verify_table(&mut conn, "samples").await?;
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.versions, 3);
    Ok(())
}

async fn a_digest_taken_while_writers_commit_verifies_with_no_false_alarm(db: Db) -> TestResult {
    let pool = db.pool(12).await?;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(Account::insert(&pool, Account::new(&format!("w{i}"), 0)).await?.entity_id);
    }
    // A long transaction that writes first (an early valid_from) and commits after the digests.
    let mut long = pool.begin().await?;
    let early = Account::insert(&mut *long, Account::new("early", 1)).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for id in ids.clone() {
        let (pool, stop) = (pool.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                Account::modify(&pool, id, |a| a.balance += 1).await?;
                n += 1;
            }
            Ok::<_, Error>(n)
        }));
    }
    let mut digests = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        digests.push(Account::digest(&pool).await?);
    }
    Account::modify(&mut *long, early.entity_id, |a| a.balance = 2).await?;
    long.commit().await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await??;
    }
    assert!(written > 20, "the writers wrote while the digests were taken: {written}");
    for d in &digests {
        // Its text form round-trips: it is what an application stores elsewhere.
        let d: ledger::Digest = d.to_string().parse()?;
        let report = Account::verify(&pool).against(&d).await?;
        assert!(report.is_intact(), "{report}\n{d}");
        let check = report.digest.expect("a digest check");
        assert_eq!((check.versions, check.entities), (d.versions, d.entities));
        // The long transaction was in flight at every digest: not covered, not judged.
        assert!(check.in_flight >= 2, "{check:?}");
    }
    Ok(())
}

async fn the_tamper_matrix_is_detected(db: Db) -> TestResult {
    let pool = &db.pool;
    let mut ids = Vec::new();
    for i in 0..11 {
        let a = Account::insert(pool, Account::new(&format!("acct-{i}"), 100)).await?;
        for _ in 0..3 {
            Account::modify(pool, a.entity_id, |x| x.balance += 10).await?;
        }
        ids.push(a.entity_id);
    }
    let digest = Account::digest(pool).await?;
    intact(pool, "accounts").await?;
    let before = Account::verify(pool).against(&digest).await?;
    assert!(before.is_intact(), "{before}");
    // Later legitimate writes are fine.
    Account::modify(pool, ids[9], |x| x.balance += 1).await?;

    // 1. A value changed in place.
    db.tamper(
        "accounts",
        &format!("UPDATE accounts SET balance = 1000000 WHERE entity_id = '{}' AND version = 2", ids[0]),
    )
    .await?;
    // 2. A middle version deleted.
    db.tamper("accounts", &format!("DELETE FROM accounts WHERE entity_id = '{}' AND version = 2", ids[1]))
        .await?;
    // 3. A version inserted with an old valid_from, before the entity's latest.
    db.tamper("accounts",
        &format!(
            "CREATE TEMP TABLE copied AS SELECT * FROM accounts WHERE entity_id = '{0}' AND version = 2; \
             UPDATE copied SET version = 5, valid_from = valid_from + interval '1 microsecond', id = gen_random_uuid(); \
             INSERT INTO accounts SELECT * FROM copied",
            ids[2]
        ),
    )
    .await?;
    // 4. A version inserted after the digest, with a valid hash (immu's own import, run by the
    //    owner) and a valid_from from before the digest.
    {
        let mut conn = db.connect_owner().await?;
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT immu.begin_import('accounts')").execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO accounts (id, entity_id, version, valid_from, owner, balance) \
             SELECT gen_random_uuid(), entity_id, version + 1, valid_from + interval '1 microsecond', owner, 7 \
             FROM accounts_current WHERE entity_id = $1",
        )
        .bind(ids[3])
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT immu.finish_import('accounts')").execute(&mut *tx).await?;
        tx.commit().await?;
    }
    // 5. A whole chain rewritten after an edit: removed, then imported again through immu's own
    //    trigger (valid hashes) with its original valid_from and one value changed.
    db.tamper("accounts",
        &format!(
            "CREATE TABLE rewritten AS SELECT * FROM accounts WHERE entity_id = '{0}'; \
             DELETE FROM accounts WHERE entity_id = '{0}'; DELETE FROM accounts_current WHERE entity_id = '{0}'",
            ids[4]
        ),
    )
    .await?;
    sqlx::raw_sql(
        "BEGIN; SELECT immu.begin_import('accounts');
         INSERT INTO accounts (id, entity_id, version, valid_from, owner, balance)
             SELECT id, entity_id, version, valid_from, owner, CASE WHEN version = 2 THEN 999 ELSE balance END
             FROM rewritten ORDER BY version;
         SELECT immu.finish_import('accounts'); DROP TABLE rewritten; COMMIT;",
    )
    .execute(&db.owner)
    .await?;
    // 5'. A chain re-hashed in place after an edit, by someone who knows the hash algorithm:
    //    every hash recomputed, transactions and valid_from kept.
    db.tamper("accounts",
        &format!(
            r#"SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL extra_float_digits = 1;
            UPDATE accounts SET balance = 999 WHERE entity_id = '{0}' AND version = 2;
            DO $$ DECLARE r record; prev bytea; cols text[]; enc text; v text; c text; BEGIN
                SELECT columns INTO cols FROM immu.hash_layouts WHERE table_name = 'accounts'::regclass AND layout = 1;
                FOR r IN SELECT id FROM accounts WHERE entity_id = '{0}' ORDER BY version LOOP
                    enc := '';
                    FOREACH c IN ARRAY cols LOOP
                        EXECUTE format('SELECT (%I)::text FROM accounts WHERE id = $1', c) USING r.id INTO v;
                        enc := enc || CASE WHEN v IS NULL THEN 'N' ELSE 'V' || length(v) || ':' || v END;
                    END LOOP;
                    prev := sha256(coalesce(prev, '\x'::bytea) || convert_to(enc, 'UTF8'));
                    UPDATE accounts SET immu_hash = prev WHERE id = r.id;
                END LOOP;
                UPDATE accounts_current SET immu_hash = prev WHERE entity_id = '{0}';
            END $$"#,
            ids[8]
        ),
    )
    .await?;
    // 3'. A version stored twice (a copy of version 2 under the same number, 1 µs later).
    db.tamper(
        "accounts",
        &format!(
            "CREATE TEMP TABLE twice AS SELECT * FROM accounts WHERE entity_id = '{0}' AND version = 2; \
             UPDATE twice SET valid_from = valid_from + interval '1 microsecond', id = gen_random_uuid(); \
             INSERT INTO accounts SELECT * FROM twice",
            ids[10]
        ),
    )
    .await?;
    // 6. Two entities' versions swapped.
    db.tamper(
        "accounts",
        &format!(
            "UPDATE accounts SET entity_id = CASE entity_id WHEN '{0}' THEN '{1}'::uuid ELSE '{0}'::uuid END \
             WHERE entity_id IN ('{0}', '{1}') AND version = 3",
            ids[5], ids[6]
        ),
    )
    .await?;

    let report = Account::verify(pool).against(&digest).await?;
    assert!(!report.is_intact(), "{report}");
    let problem_of =
        |id: Uuid| report.breaks.iter().find(|b| b.entity_id == id).map(|b| (b.version, b.problem.clone()));
    assert_eq!(problem_of(ids[0]), Some((2, Problem::ChangedContent)), "{report}");
    assert_eq!(problem_of(ids[1]), Some((2, Problem::Missing)), "{report}");
    // The copy is valid from before versions 3 and 4: the chain skips 3 there, and finds it later.
    assert_eq!(problem_of(ids[2]), Some((3, Problem::Reordered)), "{report}");
    assert_eq!(problem_of(ids[3]), Some((5, Problem::Backdated)), "{report}");
    // The chain imported again verifies on its own; the digest sees it appended after it.
    assert_eq!(problem_of(ids[4]), Some((1, Problem::Backdated)), "{report}");
    // The chain re-hashed in place verifies on its own: only the digest's root catches it.
    assert_eq!(problem_of(ids[8]), None, "{report}");
    // (In time order, the other entity's version 3 may come before this one's version 1, or after
    // its version 4: what is reported first is what breaks first in time order.)
    for swapped in [ids[5], ids[6]] {
        assert!(
            matches!(problem_of(swapped), Some((_, Problem::ChangedContent | Problem::Reordered))),
            "{report}"
        );
    }
    assert_eq!(problem_of(ids[7]), None, "an untouched chain is not reported: {report}");
    assert_eq!(problem_of(ids[9]), None, "a chain written on after the digest is not reported: {report}");
    assert_eq!(problem_of(ids[10]), Some((2, Problem::Extra)), "{report}");
    assert_eq!(report.broken_entities, 8, "{report}");
    let check = report.digest.as_ref().expect("a digest check");
    assert!(!check.root_matches, "{report}");

    // 7. The table truncated and reloaded from an edited dump (every row, one value edited).
    db.tamper("accounts",
        &format!(
            "CREATE TEMP TABLE dump AS SELECT * FROM accounts; CREATE TEMP TABLE dump_current AS SELECT * FROM accounts_current; \
             UPDATE dump SET owner = 'mallory' WHERE entity_id = '{0}' AND version = 1; \
             TRUNCATE accounts, accounts_current CASCADE; \
             INSERT INTO accounts SELECT * FROM dump; INSERT INTO accounts_current SELECT * FROM dump_current",
            ids[7]
        ),
    )
    .await?;
    let report = Account::verify(pool).against(&digest).await?;
    assert_eq!(
        report.breaks.iter().find(|b| b.entity_id == ids[7]).map(|b| (b.version, b.problem.clone())),
        Some((1, Problem::ChangedContent)),
        "{report}"
    );
    assert!(!report.digest.expect("a digest check").root_matches);
    Ok(())
}

async fn changing_a_tables_columns_keeps_older_versions_verifiable(db: Db) -> TestResult {
    let pool = &db.pool;
    let a = Account::insert(pool, Account::new("ada", 10)).await?;
    Account::modify(pool, a.entity_id, |x| x.balance = 11).await?;
    let digest = Account::digest(pool).await?;
    // Add columns (nullable, and with a default), rename one, widen a type whose text is the same.
    sqlx::raw_sql(
        "ALTER TABLE accounts ADD COLUMN note text; SELECT immu.sync_versioning('accounts');
         ALTER TABLE accounts ADD COLUMN tier text NOT NULL DEFAULT 'basic'; SELECT immu.sync_versioning('accounts');
         ALTER TABLE accounts RENAME COLUMN owner TO holder; SELECT immu.sync_versioning('accounts');
         ALTER TABLE accounts RENAME COLUMN holder TO owner; SELECT immu.sync_versioning('accounts');
         ALTER TABLE accounts ALTER COLUMN balance TYPE numeric; SELECT immu.sync_versioning('accounts');
         ALTER TABLE accounts ALTER COLUMN balance TYPE bigint; SELECT immu.sync_versioning('accounts');",
    )
    .execute(&db.owner)
    .await?;
    // Writes go on (through the old struct: the new columns carry over), in the new layout.
    Account::modify(pool, a.entity_id, |x| x.balance = 12).await?;
    let report = Account::verify(pool).against(&digest).await?;
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.versions, 3);
    let layouts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM immu.hash_layouts WHERE table_name = 'accounts'::regclass")
            .fetch_one(pool)
            .await?;
    assert!(layouts >= 3, "a layout per change of columns: {layouts}");

    // A type change that rewrites the text of what older versions hold is reported: their
    // content is not what was written.
    sqlx::raw_sql(
        "ALTER TABLE accounts ALTER COLUMN balance TYPE numeric(20, 2); SELECT immu.sync_versioning('accounts');",
    )
    .execute(&db.owner)
    .await?;
    let report = ledger::verify_table(pool, "accounts").await?;
    assert_eq!(report.broken_entities, 1, "{report}");
    assert_eq!(report.breaks[0].problem, Problem::ChangedContent, "{report}");
    Ok(())
}

async fn a_digest_of_another_table_or_garbage_is_a_typed_error(db: Db) -> TestResult {
    let pool = &db.pool;
    Account::insert(pool, Account::new("ada", 1)).await?;
    let digest = Account::digest(pool).await?;
    let err = Order::verify(pool).against(&digest).await.unwrap_err();
    assert!(matches!(err, Error::InvalidDigest { .. }), "{err:?}");
    let err = "not a digest".parse::<ledger::Digest>().unwrap_err();
    assert!(matches!(err, Error::InvalidDigest { .. }), "{err:?}");
    // A digest of an empty table verifies.
    let empty = Order::digest(pool).await?;
    assert_eq!((empty.entities, empty.versions), (0, 0));
    assert!(Order::verify(pool).against(&empty).await?.is_intact());
    Ok(())
}

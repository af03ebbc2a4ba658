//! Upgrades: a database built by an earlier release of immu (a fixture under
//! `tests/fixtures/upgrade/`, one per release, never edited) is brought to this release by immu's
//! own migrations alone, and then reads, writes and keeps its projection like a new one.

use std::path::PathBuf;

use immu_core::{Error, Immutable, OptionalExt};
use immu_demo::{Account, Customer, Transfer};
use immu_tests::harness::{Db, TestResult};
use immu_tests::models::{Order, Status};
use sqlx::{Connection, PgPool};
use uuid::Uuid;

immu_tests::tests![every_release_fixture_upgrades_with_immus_migrations_alone];

/// The fixtures, oldest first.
fn fixtures() -> Vec<PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/upgrade");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/fixtures/upgrade")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    files
}

/// The tables of the fixtures (the demo's and the test suite's `order`).
const TABLES: [&str; 4] = ["customers", "accounts", "transfers", "order"];

async fn every_release_fixture_upgrades_with_immus_migrations_alone(db: Db) -> TestResult {
    let fixtures = fixtures();
    assert!(!fixtures.is_empty(), "no fixture under tests/fixtures/upgrade");
    for fixture in fixtures {
        let pool = db.empty_database().await?;
        upgrade_and_use(&db, &pool, &fixture).await.map_err(|e| format!("{}: {e}", fixture.display()))?;
        pool.close().await;
        db.drop_empty_database().await?;
    }
    Ok(())
}

async fn upgrade_and_use(db: &Db, pool: &PgPool, fixture: &std::path::Path) -> TestResult {
    // The old database, restored on a connection of its own (the dump empties search_path).
    // (pg_dump's psql meta-commands, `\\restrict` and `\\unrestrict`, are for psql only.)
    let dump: String = std::fs::read_to_string(fixture)?
        .lines()
        .filter(|line| !line.starts_with('\\'))
        .map(|line| format!("{line}\n"))
        .collect();
    let mut restore = sqlx::PgConnection::connect_with(&db.empty_database_options()).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(dump)).execute(&mut restore).await?;
    restore.close().await?;
    let before = snapshot(pool).await?;
    assert!(before.len() > 40, "the fixture holds history: {} rows", before.len());

    // immu's migrations, and nothing else: no user migration is edited or added.
    immu_core::MIGRATOR.run(pool).await?;
    assert_eq!(snapshot(pool).await?, before, "the upgrade changes no stored version");
    for table in TABLES {
        let problems: Vec<(String, String)> =
            sqlx::query_as("SELECT problem, fix FROM immu.check_table(quote_ident($1)::regclass)")
                .bind(table)
                .fetch_all(pool)
                .await?;
        assert_eq!(problems, [], "{table}");
        let drift: Vec<(uuid::Uuid, String)> =
            sqlx::query_as("SELECT entity_id, problem FROM immu.check_projection(quote_ident($1)::regclass)")
                .bind(table)
                .fetch_all(pool)
                .await?;
        assert_eq!(drift, [], "{table}: the projection equals the latest versions");
    }
    // Versions written before release 4 carry no hash: every table verifies, counting them.
    for table in TABLES {
        let report = immu_core::ledger::verify_table(pool, table).await?;
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.unhashed, report.versions, "{report}");
    }
    immu_core::schema::check::<Customer>(pool).await?;
    immu_core::schema::check::<Account>(pool).await?;
    immu_core::schema::check::<Transfer>(pool).await?;
    immu_core::schema::check::<Order>(pool).await?;

    // Reads: every entity's history is what was stored, current and as-of agree with it.
    for customer in Customer::query().with_deleted().fetch_all(pool).await? {
        let history = Customer::history(pool, customer.entity_id).await?;
        assert_eq!(history.last(), Some(&customer));
        for (i, version) in history.iter().enumerate() {
            assert_eq!(version.version, i as i64 + 1);
            let then = Customer::find_as_of(pool, customer.entity_id, version.valid_from).await;
            match version.deleted_at {
                None => assert_eq!(then?.version, version.version),
                Some(_) => assert!(then.unwrap_err().is_deleted()),
            }
        }
    }

    // Writes of every kind, on entities of release 1.
    let live = Account::query().fetch_all(pool).await?;
    assert!(live.len() >= 2, "{live:?}");
    let a = &live[0];
    let next = Account::modify(pool, a.entity_id, |x| x.balance += 1).await?;
    assert_eq!((next.version, next.balance), (a.version + 1, a.balance + 1));
    let tomb = Account::delete(pool, a.entity_id).await?;
    assert_eq!(Account::undelete(pool, a.entity_id).await?.version, tomb.version + 1);
    let deleted = Customer::query().with_deleted().fetch_all(pool).await?;
    let dan = deleted.iter().find(|c| c.is_deleted()).expect("a deleted customer in the fixture");
    assert!(Customer::update(pool, dan.entity_id, dan.data.clone()).await.unwrap_err().is_deleted());
    let back = Customer::undelete(pool, dan.entity_id).await?;
    assert_eq!(back.data, dan.data);
    let new = Customer::insert(pool, Customer { name: "Zoe".into(), city: "Lima".into() }).await?;
    Account::insert(pool, Account { owner_id: new.entity_id, label: "Zoe main".into(), balance: 7 }).await?;
    // References still hold.
    let err =
        Account::insert(pool, Account { owner_id: Uuid::now_v7(), label: "nobody's".into(), balance: 0 })
            .await
            .unwrap_err();
    assert!(matches!(err, Error::UnknownReference { .. }), "{err:?}");
    let transfer = Transfer::insert(
        pool,
        Transfer { from_account: a.entity_id, to_account: live[1].entity_id, amount: 5 },
    )
    .await?;
    assert_eq!(transfer.version, 1);

    // The order table: keyword names, an enum, JSON, bytea.
    let orders = Order::query().with_deleted().fetch_all(pool).await?;
    assert!(orders.len() >= 2, "{orders:?}");
    for order in &orders {
        let changed = Order::modify(pool, order.entity_id, |o| o.status = Status::Shipped).await?;
        assert_eq!(changed.payload, order.payload);
        assert_eq!(
            Order::find(pool, order.entity_id).await.optional()?.map(|o| o.version),
            Some(changed.version)
        );
    }

    // Raw SQL meets this release's rules on the old tables too.
    let err = Error::from(
        sqlx::query("INSERT INTO accounts (id, entity_id, version, owner_id, label, balance) VALUES ($1, $2, 1, $3, 'x', 0)")
            .bind(Uuid::now_v7())
            .bind(a.entity_id)
            .bind(new.entity_id)
            .execute(pool)
            .await
            .unwrap_err(),
    );
    assert!(matches!(&err, Error::InvalidHistory { .. }), "{err:?}");
    for table in TABLES {
        let drift: i64 =
            sqlx::query_scalar("SELECT count(*) FROM immu.check_projection(quote_ident($1)::regclass)")
                .bind(table)
                .fetch_one(pool)
                .await?;
        assert_eq!(drift, 0, "{table}");
        // The versions written since chain onto the old ones, and verify.
        let report = immu_core::ledger::verify_table(pool, table).await?;
        assert!(report.is_intact(), "{report}");
    }
    let accounts = immu_core::ledger::verify_table(pool, "accounts").await?;
    assert!(accounts.unhashed < accounts.versions, "{accounts}");
    // The migrations are done: running them again changes nothing.
    immu_core::MIGRATOR.run(pool).await?;
    Ok(())
}

/// Every stored version of the fixture's tables, as text, in a stable order.
async fn snapshot(pool: &PgPool) -> sqlx::Result<Vec<String>> {
    let mut rows = Vec::new();
    for table in TABLES {
        let sql = format!(
            "SELECT format('%s %s %s %s %s %s', entity_id, version, id, valid_from, deleted_at, \
             (SELECT jsonb_object_agg(k, v) FROM jsonb_each(to_jsonb(t)) AS e (k, v) WHERE k NOT LIKE 'immu\\_%')) \
             FROM \"{table}\" AS t ORDER BY entity_id, version"
        );
        rows.extend(sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?);
    }
    Ok(rows)
}

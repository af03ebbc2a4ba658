//! Importing history that already happened (`immu.begin_import` / `immu.finish_import`): versions
//! keep their own instants and pass every other check of a write, a version that breaks a rule is
//! refused, the application cannot import (setting `immu.importing` by hand does nothing), and an
//! import ends with its transaction, finished or not.

use chrono::{DateTime, Datelike, TimeZone, Utc};
use immu_core::{Error, Immutable};
use immu_tests::harness::{Db, TestResult};
use immu_tests::models::Account;
use uuid::Uuid;

immu_tests::tests![
    an_import_keeps_its_own_instants,
    an_import_that_breaks_a_rule_keeps_nothing,
    the_application_cannot_import,
    an_import_ends_with_its_transaction,
];

fn instant(year: i32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0).unwrap()
}

/// Inserts `(version, valid_from year, deleted, balance)` rows of `entity` as raw SQL.
fn versions(entity: Uuid, rows: &[(i64, i32, bool, i64)]) -> String {
    let values: Vec<String> = rows
        .iter()
        .map(|(version, year, deleted, balance)| {
            format!(
                "(gen_random_uuid(), '{entity}', {version}, '{year}-01-01T00:00:00Z', {}, 'imported', {balance})",
                if *deleted { format!("'{year}-01-01T00:00:00Z'") } else { "NULL".to_owned() }
            )
        })
        .collect();
    format!(
        "INSERT INTO public.accounts (id, entity_id, version, valid_from, deleted_at, owner, balance) VALUES {}",
        values.join(", ")
    )
}

async fn import(db: &Db, rows: &str) -> Result<(), sqlx::Error> {
    let mut tx = db.owner.begin().await?;
    sqlx::query("SELECT immu.begin_import('public.accounts')").execute(&mut *tx).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(rows.to_owned())).execute(&mut *tx).await?;
    sqlx::query("SELECT immu.finish_import('public.accounts')").execute(&mut *tx).await?;
    tx.commit().await
}

async fn problems(db: &Db) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM immu.check_projection('public.accounts'))
              + (SELECT count(*) FROM immu.check_history('public.accounts'))",
    )
    .fetch_one(&db.owner)
    .await
}

async fn an_import_keeps_its_own_instants(db: Db) -> TestResult {
    let (kept, gone) = (Uuid::from_u128(rand_id()), Uuid::from_u128(rand_id()));
    let live = Account::insert(&db.pool, Account::new("live", 1)).await?;
    let rows = format!(
        "{}; {}",
        versions(kept, &[(1, 2019, false, 10), (2, 2020, false, 20)]),
        versions(gone, &[(1, 2019, false, 5), (2, 2021, true, 5)])
    );
    import(&db, &rows).await?;
    assert_eq!(problems(&db).await?, 0);
    let then = Account::find_as_of(&db.pool, kept, instant(2019) + chrono::Duration::days(30)).await?;
    assert_eq!((then.version, then.balance, then.valid_from), (1, 10, instant(2019)));
    let now = Account::find(&db.pool, kept).await?;
    assert_eq!((now.version, now.balance), (2, 20));
    assert!(matches!(Account::find(&db.pool, gone).await, Err(Error::Deleted { .. })));
    assert_eq!(Account::find_as_of(&db.pool, gone, instant(2020)).await?.balance, 5);
    // Writes go on from the imported history, stamped by the clock again.
    let next = Account::modify(&db.pool, kept, |a| a.balance += 1).await?;
    assert_eq!((next.version, next.balance), (3, 21));
    assert!(next.valid_from > live.valid_from);
    assert_eq!(Account::undelete(&db.pool, gone).await?.version, 3);
    // The trigger is back: a raw backdated row is stamped, or refused, as before.
    let err = sqlx::raw_sql(sqlx::AssertSqlSafe(versions(kept, &[(5, 2018, false, 0)])))
        .execute(&db.owner)
        .await
        .map_err(Error::from)
        .expect_err("a skipped version after the import");
    assert!(matches!(err, Error::InvalidHistory { .. }), "{err:?}");
    assert_eq!(problems(&db).await?, 0);
    Ok(())
}

async fn an_import_that_breaks_a_rule_keeps_nothing(db: Db) -> TestResult {
    let existing = Account::insert(&db.pool, Account::new("existing", 1)).await?;
    let (a, b) = (Uuid::from_u128(rand_id()), Uuid::from_u128(rand_id()));
    let future = Utc::now().year() + 1;
    for (what, rows, says) in [
        ("a skipped version", versions(a, &[(1, 2019, false, 1), (3, 2020, false, 3)]), "skip or repeat"),
        (
            "time running backwards",
            versions(a, &[(1, 2020, false, 1), (2, 2019, false, 2)]),
            "import each entity's versions in order",
        ),
        ("no version 1", versions(b, &[(2, 2019, false, 2)]), "does not exist"),
        (
            "a second version 1 of an existing entity",
            versions(existing.entity_id, &[(1, 2019, false, 9)]),
            "skip or repeat",
        ),
        ("a version in the future", versions(a, &[(1, future, false, 1)]), "in the future"),
        (
            "a tombstone carrying other data",
            versions(a, &[(1, 2019, false, 1), (2, 2020, true, 2)]),
            "must carry the data",
        ),
    ] {
        let err = import(&db, &rows).await.map_err(Error::from).expect_err(what);
        assert!(
            matches!(&err, Error::InvalidHistory { table, message } if table == "accounts" && message.contains(says)),
            "{what}: {err:?}"
        );
        let imported: i64 =
            sqlx::query_scalar("SELECT count(*) FROM public.accounts WHERE owner = 'imported'")
                .fetch_one(&db.owner)
                .await?;
        assert_eq!(imported, 0, "{what}: nothing of the import was kept");
    }
    assert_eq!(problems(&db).await?, 0);
    assert_eq!(Account::modify(&db.pool, existing.entity_id, |a| a.balance += 1).await?.version, 2);
    Ok(())
}

async fn the_application_cannot_import(db: Db) -> TestResult {
    let mut app = db.connect().await?;
    for sql in [
        "SELECT immu.begin_import('public.accounts')",
        "SELECT immu.finish_import('public.accounts')",
        "INSERT INTO immu.imports (table_name) VALUES ('public.accounts')",
    ] {
        let err = Error::from(sqlx::query(sql).execute(&mut app).await.expect_err(sql));
        assert!(matches!(err, Error::PermissionDenied { .. }), "{sql}: {err:?}");
    }
    // Setting the marker by hand imports nothing: the database stamps its own clock.
    let entity = Uuid::from_u128(rand_id());
    let mut tx = sqlx::Connection::begin(&mut app).await?;
    sqlx::query("SELECT set_config('immu.importing', 'public.accounts', true)").execute(&mut *tx).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(versions(entity, &[(1, 2019, false, 1)]))).execute(&mut *tx).await?;
    tx.commit().await?;
    let stored = Account::find(&db.pool, entity).await?;
    assert!(stored.valid_from > instant(2026), "stamped by the clock: {}", stored.valid_from);
    // The owner cannot finish an import that was never begun.
    let err = sqlx::query("SELECT immu.finish_import('public.accounts')")
        .execute(&db.owner)
        .await
        .expect_err("finish without begin");
    assert!(err.to_string().contains("no import"), "{err}");
    Ok(())
}

async fn an_import_ends_with_its_transaction(db: Db) -> TestResult {
    // Begun and committed without finish_import: the next transactions, the owner's too, are no
    // import, and immu's writes go on.
    let mut tx = db.owner.begin().await?;
    sqlx::query("SELECT immu.begin_import('public.accounts')").execute(&mut *tx).await?;
    let imported = Uuid::from_u128(rand_id());
    sqlx::raw_sql(sqlx::AssertSqlSafe(versions(imported, &[(1, 2019, false, 1)]))).execute(&mut *tx).await?;
    tx.commit().await?;
    assert_eq!(Account::find(&db.pool, imported).await?.valid_from, instant(2019));
    for conn in [&db.owner, &db.pool] {
        let entity = Uuid::from_u128(rand_id());
        sqlx::raw_sql(sqlx::AssertSqlSafe(versions(entity, &[(1, 2019, false, 1)]))).execute(conn).await?;
        assert!(Account::find(&db.pool, entity).await?.valid_from > instant(2026));
    }
    assert_eq!(Account::modify(&db.pool, imported, |a| a.balance += 1).await?.version, 2);
    // finish_import ends an import within its transaction.
    let mut tx = db.owner.begin().await?;
    sqlx::query("SELECT immu.begin_import('public.accounts')").execute(&mut *tx).await?;
    sqlx::query("SELECT immu.finish_import('public.accounts')").execute(&mut *tx).await?;
    let entity = Uuid::from_u128(rand_id());
    sqlx::raw_sql(sqlx::AssertSqlSafe(versions(entity, &[(1, 2019, false, 1)]))).execute(&mut *tx).await?;
    tx.commit().await?;
    assert!(Account::find(&db.pool, entity).await?.valid_from > instant(2026));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM immu.imports").fetch_one(&db.owner).await?;
    assert!(left <= 1, "begin_import removes what earlier imports left: {left}");
    assert_eq!(problems(&db).await?, 0);
    Ok(())
}

/// A fresh entity id (the tests' uuid has no random feature; the clock and a counter suffice).
fn rand_id() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    (nanos << 64) | u128::from(NEXT.fetch_add(1, Ordering::Relaxed))
}

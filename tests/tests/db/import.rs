//! Importing history that already happened (`immu.begin_import` / `immu.finish_import`): versions
//! keep their own instants, a history that breaks a rule is refused whole, the application cannot
//! import, and an import left unfinished stops writes instead of letting unchecked rows stand.

use chrono::{DateTime, TimeZone, Utc};
use immu_core::{Error, Immutable};
use immu_tests::harness::{Db, TestResult};
use immu_tests::models::Account;
use uuid::Uuid;

immu_tests::tests![
    an_import_keeps_its_own_instants,
    an_import_that_breaks_a_rule_keeps_nothing,
    the_application_cannot_import,
    an_unfinished_import_stops_writes,
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
    for (what, rows) in [
        ("a skipped version", versions(a, &[(1, 2019, false, 1), (3, 2020, false, 3)])),
        ("time running backwards", versions(a, &[(1, 2020, false, 1), (2, 2019, false, 2)])),
        ("no version 1", versions(b, &[(2, 2019, false, 2)])),
        ("a second version 1 of an existing entity", versions(existing.entity_id, &[(1, 2019, false, 9)])),
    ] {
        let err = import(&db, &rows).await.map_err(Error::from).expect_err(what);
        assert!(
            matches!(&err, Error::InvalidHistory { table, .. } if table == "accounts")
                || matches!(&err, Error::Database(_)),
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
    for sql in ["SELECT immu.begin_import('public.accounts')", "SELECT immu.finish_import('public.accounts')"]
    {
        let err = Error::from(sqlx::query(sql).execute(&mut app).await.expect_err(sql));
        assert!(matches!(err, Error::PermissionDenied { .. }), "{sql}: {err:?}");
    }
    // The owner cannot finish an import that was never begun (nor skip the checks that way).
    let err = sqlx::query("SELECT immu.finish_import('public.accounts')")
        .execute(&db.owner)
        .await
        .expect_err("finish without begin");
    assert!(err.to_string().contains("no import"), "{err}");
    Ok(())
}

async fn an_unfinished_import_stops_writes(db: Db) -> TestResult {
    let existing = Account::insert(&db.pool, Account::new("existing", 1)).await?;
    // Begun and committed without finish_import: the insert trigger stays disabled, and immu
    // refuses to write through machinery that is not whole rather than append unchecked rows.
    let mut tx = db.owner.begin().await?;
    sqlx::query("SELECT immu.begin_import('public.accounts')").execute(&mut *tx).await?;
    tx.commit().await?;
    let err = Account::modify(&db.pool, existing.entity_id, |a| a.balance += 1)
        .await
        .expect_err("writes through a disabled trigger");
    assert!(
        matches!(&err, Error::SchemaDrift { differences, .. } if differences.iter().any(|d| d.description.contains("immu_check_insert"))),
        "{err:?}"
    );
    // Syncing the table puts it right.
    sqlx::query("SELECT immu.sync_versioning('public.accounts')").execute(&db.owner).await?;
    assert_eq!(Account::modify(&db.pool, existing.entity_id, |a| a.balance += 1).await?.version, 2);
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

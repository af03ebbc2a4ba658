//! The write path: insert, update, optimistic and read-modify-write updates, delete, undelete,
//! transactions, the database clock.

use immu_core::{Error, Immutable, Written};
use immu_tests::harness::{Db, TestResult};
use immu_tests::models::Account;
use sqlx::{Acquire, Row};
use uuid::Uuid;

immu_tests::tests![
    insert_creates_version_one,
    update_appends_a_version_and_keeps_the_old_one,
    update_of_unknown_entity_is_not_found_and_writes_nothing,
    update_of_deleted_entity_is_refused,
    update_if_version_appends_when_current,
    update_if_version_refuses_stale_and_future_versions,
    save_is_optimistic,
    modify_applies_the_closure_to_the_current_version,
    try_modify_refusal_writes_nothing,
    modify_of_unknown_or_deleted_entity_fails,
    delete_appends_a_tombstone_with_the_last_data,
    delete_twice_is_refused,
    undelete_revives_the_last_data,
    undelete_of_live_or_unknown_entity_is_refused,
    writes_in_a_caller_transaction_commit_and_roll_back_together,
    a_failed_write_leaves_the_caller_transaction_usable,
    writes_accept_a_plain_connection,
    a_connection_left_in_an_untracked_transaction_still_commits_the_write,
    valid_from_never_goes_back_behind_the_previous_version,
    valid_from_is_taken_after_the_lock_not_at_transaction_start,
    stale_repeatable_read_snapshot_is_a_conflict_not_a_duplicate,
    stale_serializable_snapshot_is_a_conflict_not_a_duplicate,
];

/// Row count of the accounts table for one entity.
pub(crate) async fn rows(db: &Db, entity_id: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM accounts WHERE entity_id = $1")
        .bind(entity_id)
        .fetch_one(&db.pool)
        .await
}

/// Versions of one entity as stored, in order.
pub(crate) async fn versions(db: &Db, entity_id: Uuid) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar("SELECT version FROM accounts WHERE entity_id = $1 ORDER BY version")
        .bind(entity_id)
        .fetch_all(&db.pool)
        .await
}

async fn insert_creates_version_one(db: Db) -> TestResult {
    let before: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(&db.pool).await?;
    let v1 = Account::insert(&db.pool, Account::new("ada", 100)).await?;
    assert_eq!(v1.version, 1);
    assert_eq!(v1.data, Account::new("ada", 100));
    assert_eq!(v1.deleted_at, None);
    assert!(v1.valid_from >= before, "valid_from comes from the database clock");
    assert_eq!(v1.entity_id.get_version_num(), 7);
    assert_eq!(v1.id.get_version_num(), 7);
    assert_ne!(v1.id, v1.entity_id);

    let row = sqlx::query(
        "SELECT id, version, valid_from, deleted_at, owner, balance FROM accounts WHERE entity_id = $1",
    )
    .bind(v1.entity_id)
    .fetch_one(&db.pool)
    .await?;
    assert_eq!(row.get::<Uuid, _>("id"), v1.id);
    assert_eq!(row.get::<i64, _>("version"), 1);
    assert_eq!(row.get::<chrono::DateTime<chrono::Utc>, _>("valid_from"), v1.valid_from);
    assert_eq!(row.get::<Option<chrono::DateTime<chrono::Utc>>, _>("deleted_at"), None);
    assert_eq!(row.get::<String, _>("owner"), "ada");
    assert_eq!(row.get::<i64, _>("balance"), 100);

    let other = Account::insert(&db.pool, Account::new("bob", 0)).await?;
    assert_ne!(other.entity_id, v1.entity_id);
    Ok(())
}

async fn update_appends_a_version_and_keeps_the_old_one(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 100)).await?;
    let v2 = Account::update(&db.pool, v1.entity_id, Account::new("ada lovelace", 150)).await?;
    assert_eq!((v2.entity_id, v2.version), (v1.entity_id, 2));
    assert_ne!(v2.id, v1.id);
    assert!(v2.valid_from >= v1.valid_from);
    assert_eq!(v2.data, Account::new("ada lovelace", 150));

    let v3 = Account::update(&db.pool, v1.entity_id, Account::new("ada lovelace", 175)).await?;
    assert_eq!(v3.version, 3);
    assert_eq!(versions(&db, v1.entity_id).await?, [1, 2, 3]);
    assert_eq!(Account::find_version(&db.pool, v1.entity_id, 1).await?, v1);
    assert_eq!(Account::find_version(&db.pool, v1.entity_id, 2).await?, v2);
    assert_eq!(Account::find(&db.pool, v1.entity_id).await?, v3);
    Ok(())
}

async fn update_of_unknown_entity_is_not_found_and_writes_nothing(db: Db) -> TestResult {
    let ghost = Uuid::now_v7();
    let err = Account::update(&db.pool, ghost, Account::new("nobody", 1)).await.unwrap_err();
    assert!(
        matches!(err, Error::NotFound { table: "accounts", entity_id, version: None } if entity_id == ghost),
        "{err:?}"
    );
    assert!(err.to_string().contains(&ghost.to_string()), "{err}");
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts").fetch_one(&db.pool).await?;
    assert_eq!(total, 0);
    Ok(())
}

async fn update_of_deleted_entity_is_refused(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 100)).await?;
    let tomb = Account::delete(&db.pool, v1.entity_id).await?;
    let err = Account::update(&db.pool, v1.entity_id, Account::new("ada", 1)).await.unwrap_err();
    match err {
        Error::Deleted { table, entity_id, version, deleted_at } => {
            assert_eq!((table, entity_id, version), ("accounts", v1.entity_id, 2));
            assert_eq!(Some(deleted_at), tomb.deleted_at);
        }
        other => panic!("expected Deleted, got {other:?}"),
    }
    assert_eq!(rows(&db, v1.entity_id).await?, 2);
    Ok(())
}

async fn update_if_version_appends_when_current(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 100)).await?;
    let v2 = Account::update_if_version(&db.pool, v1.entity_id, 1, Account::new("ada", 90)).await?;
    assert_eq!((v2.version, v2.balance), (2, 90));
    let v3 = Account::update_if_version(&db.pool, v1.entity_id, 2, Account::new("ada", 80)).await?;
    assert_eq!(v3.version, 3);
    Ok(())
}

async fn update_if_version_refuses_stale_and_future_versions(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 100)).await?;
    Account::update(&db.pool, v1.entity_id, Account::new("ada", 90)).await?;
    for expected in [1, 3, 0, -1, i64::MAX] {
        let err = Account::update_if_version(&db.pool, v1.entity_id, expected, Account::new("ada", 0))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::VersionConflict { expected: Some(e), actual: Some(2), .. } if e == expected),
            "expected {expected}: {err:?}"
        );
        assert!(err.is_retryable());
    }
    assert_eq!(versions(&db, v1.entity_id).await?, [1, 2]);
    assert_eq!(Account::find(&db.pool, v1.entity_id).await?.balance, 90);
    Ok(())
}

async fn save_is_optimistic(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 100)).await?;
    let mut mine = Account::find(&db.pool, v1.entity_id).await?;
    let mut theirs = Account::find(&db.pool, v1.entity_id).await?;
    mine.balance += 1;
    theirs.balance += 2;
    let saved = mine.save(&db.pool).await?;
    assert_eq!((saved.version, saved.balance), (2, 101));
    let err = theirs.save(&db.pool).await.unwrap_err();
    assert!(matches!(err, Error::VersionConflict { expected: Some(1), actual: Some(2), .. }), "{err:?}");
    assert_eq!(Account::find(&db.pool, v1.entity_id).await?.balance, 101);
    Ok(())
}

async fn modify_applies_the_closure_to_the_current_version(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 100)).await?;
    let v2 = Account::modify(&db.pool, v1.entity_id, |a| a.balance += 5).await?;
    let v3 = Account::modify(&db.pool, v1.entity_id, |a| a.owner.push_str(" l.")).await?;
    assert_eq!((v2.version, v2.balance), (2, 105));
    assert_eq!((v3.version, v3.balance, v3.owner.as_str()), (3, 105, "ada l."));
    assert_eq!(Account::find(&db.pool, v1.entity_id).await?, v3);
    Ok(())
}

#[derive(Debug)]
enum WithdrawError {
    Insufficient { balance: i64 },
    Immu(Error),
}

impl From<Error> for WithdrawError {
    fn from(err: Error) -> Self {
        WithdrawError::Immu(err)
    }
}

async fn withdraw(db: &Db, id: Uuid, amount: i64) -> Result<Written<Account>, WithdrawError> {
    Account::try_modify(&db.pool, id, |a| {
        if a.balance < amount {
            return Err(WithdrawError::Insufficient { balance: a.balance });
        }
        a.balance -= amount;
        Ok(())
    })
    .await
}

async fn try_modify_refusal_writes_nothing(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 100)).await?;
    let v2 = withdraw(&db, v1.entity_id, 60).await.map_err(|e| format!("{e:?}"))?;
    assert_eq!((v2.version, v2.balance), (2, 40));
    match withdraw(&db, v1.entity_id, 60).await {
        Err(WithdrawError::Insufficient { balance: 40 }) => {}
        other => panic!("expected Insufficient, got {other:?}"),
    }
    match withdraw(&db, Uuid::now_v7(), 1).await {
        Err(WithdrawError::Immu(Error::NotFound { .. })) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(versions(&db, v1.entity_id).await?, [1, 2]);
    Ok(())
}

async fn modify_of_unknown_or_deleted_entity_fails(db: Db) -> TestResult {
    let err = Account::modify(&db.pool, Uuid::now_v7(), |a| a.balance += 1).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    let v1 = Account::insert(&db.pool, Account::new("ada", 100)).await?;
    Account::delete(&db.pool, v1.entity_id).await?;
    let mut called = false;
    let err = Account::modify(&db.pool, v1.entity_id, |_| called = true).await.unwrap_err();
    assert!(err.is_deleted(), "{err:?}");
    assert!(!called, "the closure must not run on a tombstone");
    assert_eq!(rows(&db, v1.entity_id).await?, 2);
    Ok(())
}

async fn delete_appends_a_tombstone_with_the_last_data(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 100)).await?;
    let v2 = Account::update(&db.pool, v1.entity_id, Account::new("ada", 70)).await?;
    let tomb = Account::delete(&db.pool, v1.entity_id).await?;
    assert_eq!(tomb.version, 3);
    assert!(tomb.is_deleted());
    assert_eq!(tomb.deleted_at, Some(tomb.valid_from));
    assert!(tomb.valid_from >= v2.valid_from);
    assert_eq!(tomb.data, v2.data, "a tombstone carries the last data");
    assert_ne!(tomb.id, v2.id);
    let err = Account::find(&db.pool, v1.entity_id).await.unwrap_err();
    assert!(matches!(err, Error::Deleted { version: 3, .. }), "{err:?}");
    assert_eq!(Account::find_version(&db.pool, v1.entity_id, 3).await?, tomb);
    Ok(())
}

async fn delete_twice_is_refused(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 100)).await?;
    Account::delete(&db.pool, v1.entity_id).await?;
    let err = Account::delete(&db.pool, v1.entity_id).await.unwrap_err();
    assert!(matches!(err, Error::Deleted { version: 2, .. }), "{err:?}");
    let err = Account::delete(&db.pool, Uuid::now_v7()).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(versions(&db, v1.entity_id).await?, [1, 2]);
    Ok(())
}

async fn undelete_revives_the_last_data(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 100)).await?;
    let tomb = Account::delete(&db.pool, v1.entity_id).await?;
    let back = Account::undelete(&db.pool, v1.entity_id).await?;
    assert_eq!(back.version, 3);
    assert!(!back.is_deleted());
    assert_eq!(back.data, v1.data);
    assert!(back.valid_from >= tomb.valid_from);
    assert_eq!(Account::find(&db.pool, v1.entity_id).await?, back);
    let v4 = Account::modify(&db.pool, v1.entity_id, |a| a.balance = 1).await?;
    assert_eq!(v4.version, 4);
    Ok(())
}

async fn undelete_of_live_or_unknown_entity_is_refused(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 100)).await?;
    let err = Account::undelete(&db.pool, v1.entity_id).await.unwrap_err();
    assert!(matches!(err, Error::NotDeleted { table: "accounts", version: 1, .. }), "{err:?}");
    assert!(err.to_string().contains("not deleted"), "{err}");
    let err = Account::undelete(&db.pool, Uuid::now_v7()).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(rows(&db, v1.entity_id).await?, 1);
    Ok(())
}

async fn writes_in_a_caller_transaction_commit_and_roll_back_together(db: Db) -> TestResult {
    let a = Account::insert(&db.pool, Account::new("a", 100)).await?;
    let b = Account::insert(&db.pool, Account::new("b", 0)).await?;

    // A transfer that commits: both versions appear.
    let mut tx = db.pool.begin().await?;
    Account::modify(&mut tx, a.entity_id, |x| x.balance -= 30).await?;
    Account::modify(&mut tx, b.entity_id, |x| x.balance += 30).await?;
    let c = Account::insert(&mut tx, Account::new("c", 5)).await?;
    // Reads inside the transaction see its writes; outside, nothing yet.
    assert_eq!(Account::find(&mut *tx, a.entity_id).await?.balance, 70);
    assert_eq!(Account::find(&db.pool, a.entity_id).await?.balance, 100);
    tx.commit().await?;
    assert_eq!(Account::find(&db.pool, a.entity_id).await?.balance, 70);
    assert_eq!(Account::find(&db.pool, b.entity_id).await?.balance, 30);
    assert_eq!(Account::find(&db.pool, c.entity_id).await?.balance, 5);

    // A transfer that rolls back: neither version remains.
    let mut tx = db.pool.begin().await?;
    Account::modify(&mut tx, a.entity_id, |x| x.balance -= 30).await?;
    Account::modify(&mut tx, b.entity_id, |x| x.balance += 30).await?;
    let d = Account::insert(&mut tx, Account::new("d", 5)).await?;
    tx.rollback().await?;
    assert_eq!(versions(&db, a.entity_id).await?, [1, 2]);
    assert_eq!(versions(&db, b.entity_id).await?, [1, 2]);
    assert!(Account::find(&db.pool, d.entity_id).await.unwrap_err().is_not_found());
    Ok(())
}

async fn a_failed_write_leaves_the_caller_transaction_usable(db: Db) -> TestResult {
    let a = Account::insert(&db.pool, Account::new("a", 100)).await?;
    let mut tx = db.pool.begin().await?;
    Account::modify(&mut tx, a.entity_id, |x| x.balance += 1).await?;
    // Each failure is rolled back to its savepoint; the transaction goes on.
    assert!(Account::update(&mut tx, Uuid::now_v7(), Account::new("x", 0)).await.unwrap_err().is_not_found());
    let err = Account::update_if_version(&mut tx, a.entity_id, 1, Account::new("x", 0)).await.unwrap_err();
    assert!(matches!(err, Error::VersionConflict { .. }), "{err:?}");
    assert!(matches!(Account::undelete(&mut tx, a.entity_id).await.unwrap_err(), Error::NotDeleted { .. }));
    // A database-level failure inside the insert (here: a NUL byte, which text cannot hold).
    assert!(Account::insert(&mut tx, Account::new("nul\0byte", 0)).await.is_err());
    Account::modify(&mut tx, a.entity_id, |x| x.balance += 1).await?;
    tx.commit().await?;
    assert_eq!(versions(&db, a.entity_id).await?, [1, 2, 3]);
    assert_eq!(Account::find(&db.pool, a.entity_id).await?.balance, 102);
    Ok(())
}

async fn writes_accept_a_plain_connection(db: Db) -> TestResult {
    let mut conn = db.connect().await?;
    let v1 = Account::insert(&mut conn, Account::new("ada", 1)).await?;
    let v2 = Account::modify(&mut conn, v1.entity_id, |a| a.balance += 1).await?;
    Account::delete(&mut conn, v1.entity_id).await?;
    Account::undelete(&mut conn, v1.entity_id).await?;
    assert_eq!(v2.version, 2);
    assert_eq!(Account::history(&mut conn, v1.entity_id).await?.len(), 4);
    // Each write committed on its own: another connection sees them.
    assert_eq!(versions(&db, v1.entity_id).await?, [1, 2, 3, 4]);
    // And through a pooled connection.
    let mut pooled = db.pool.acquire().await?;
    let v5 = Account::modify(pooled.acquire().await?, v1.entity_id, |a| a.balance += 1).await?;
    assert_eq!(v5.version, 5);
    Ok(())
}

/// What a `BEGIN` cancelled mid-flight leaves behind with sqlx 0.9.0 (launchbadge/sqlx#4393): a
/// connection inside a transaction that sqlx believes is idle. A write through immu must still be
/// committed when it is acknowledged (a bare autocommit statement would stay uncommitted).
async fn a_connection_left_in_an_untracked_transaction_still_commits_the_write(db: Db) -> TestResult {
    let mut conn = db.connect().await?;
    let v1 = Account::insert(&mut conn, Account::new("ada", 1)).await?;
    for step in 0..4 {
        sqlx::raw_sql("BEGIN").execute(&mut conn).await?;
        let written = match step {
            0 => Account::insert(&mut conn, Account::new("bob", 2)).await?,
            1 => Account::update(&mut conn, v1.entity_id, Account::new("ada", 5)).await?.into(),
            2 => Account::delete(&mut conn, v1.entity_id).await?,
            _ => Account::undelete(&mut conn, v1.entity_id).await?,
        };
        // Committed: another connection sees it, and this one is out of any transaction.
        let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts WHERE id = $1")
            .bind(written.id)
            .fetch_one(&db.pool)
            .await?;
        assert_eq!(seen, 1, "step {step}: the write is committed");
        let savepoint = sqlx::raw_sql("SAVEPOINT probe").execute(&mut conn).await;
        assert!(savepoint.is_err(), "step {step}: the connection is out of any transaction block");
    }
    assert_eq!(versions(&db, v1.entity_id).await?, [1, 2, 3, 4]);
    Ok(())
}

async fn valid_from_never_goes_back_behind_the_previous_version(db: Db) -> TestResult {
    // A version whose valid_from lies an hour ahead of the database clock: written while the
    // server's clock ran fast, then set back. (Simulated as the owner, with immu's triggers off:
    // no client can choose a valid_from.) The next version must not be earlier.
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    let future: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT clock_timestamp() + interval '1 hour'").fetch_one(&db.pool).await?;
    let mut conn = db.connect_owner().await?;
    sqlx::query("ALTER TABLE accounts DISABLE TRIGGER immu_check_insert").execute(&mut conn).await?;
    sqlx::query(
        "INSERT INTO accounts (id, entity_id, version, valid_from, owner, balance) VALUES ($1, $2, 2, $3, 'ada', 2)",
    )
    .bind(Uuid::now_v7())
    .bind(v1.entity_id)
    .bind(future)
    .execute(&mut conn)
    .await?;
    sqlx::raw_sql(
        "ALTER TABLE accounts ENABLE ALWAYS TRIGGER immu_check_insert; SELECT immu.rebuild_projection('accounts')",
    )
    .execute(&mut conn)
    .await?;
    let v3 = Account::modify(&db.pool, v1.entity_id, |a| a.balance = 3).await?;
    assert_eq!(v3.valid_from, future, "clamped to the previous version's valid_from");
    let tomb = Account::delete(&db.pool, v1.entity_id).await?;
    assert_eq!(tomb.valid_from, future);
    let back = Account::undelete(&db.pool, v1.entity_id).await?;
    assert_eq!(back.valid_from, future);
    Ok(())
}

async fn valid_from_is_taken_after_the_lock_not_at_transaction_start(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    // Writer A starts its transaction first...
    let mut a = db.pool.begin().await?;
    sqlx::query("SELECT now()").execute(&mut *a).await?;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // ...writer B writes and commits meanwhile...
    let b = Account::modify(&db.pool, v1.entity_id, |x| x.balance = 2).await?;
    // ...then A writes: its version comes after B's, in time as in number. With `now()` (A's
    // transaction start) it would be stamped before B's, or clamped to exactly B's instant.
    let a_version = Account::modify(&mut a, v1.entity_id, |x| x.balance = 3).await?;
    a.commit().await?;
    assert_eq!((b.version, a_version.version), (2, 3));
    assert!(a_version.valid_from > b.valid_from, "{} <= {}", a_version.valid_from, b.valid_from);
    Ok(())
}

async fn stale_snapshot_write(
    db: &Db,
    isolation: &str,
) -> Result<(Uuid, Error), Box<dyn std::error::Error + Send + Sync>> {
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    let mut tx = db.pool.begin().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET TRANSACTION ISOLATION LEVEL {isolation}")))
        .execute(&mut *tx)
        .await?;
    // The snapshot is taken by the first query and predates the other writer's commit.
    assert_eq!(Account::find(&mut *tx, v1.entity_id).await?.version, 1);
    Account::modify(&db.pool, v1.entity_id, |x| x.balance = 2).await?;
    let err = Account::modify(&mut tx, v1.entity_id, |x| x.balance = 3).await.unwrap_err();
    // The caller's transaction is still usable after the failed write (savepoint)...
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    tx.rollback().await?;
    // ...and nothing was duplicated or lost.
    assert_eq!(versions(db, v1.entity_id).await?, [1, 2]);
    assert_eq!(Account::find(&db.pool, v1.entity_id).await?.balance, 2);
    Ok((v1.entity_id, err))
}

async fn stale_repeatable_read_snapshot_is_a_conflict_not_a_duplicate(db: Db) -> TestResult {
    assert_stale_conflict(&db, "REPEATABLE READ").await
}

async fn stale_serializable_snapshot_is_a_conflict_not_a_duplicate(db: Db) -> TestResult {
    assert_stale_conflict(&db, "SERIALIZABLE").await
}

async fn assert_stale_conflict(db: &Db, isolation: &str) -> TestResult {
    let (_, err) = stale_snapshot_write(db, isolation).await?;
    // A transaction conflict like every SQLSTATE 40001: retry the whole transaction.
    assert!(
        matches!(&err, Error::SerializationFailure { code, .. } if code == "40001"),
        "{isolation}: {err:?}"
    );
    assert!(err.is_retryable());
    assert!(err.to_string().contains("retry"), "{err}");
    Ok(())
}

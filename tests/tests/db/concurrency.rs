//! Concurrent writers on separate connections: the entity lock serializes them, no update is
//! lost, versions stay 1..n without gaps, and valid_from never decreases.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use immu_core::{Error, Immutable};
use immu_tests::harness::{Db, TestResult};
use immu_tests::models::Account;
use uuid::Uuid;

immu_tests::tests![
    concurrent_read_modify_write_loses_no_update,
    concurrent_optimistic_writers_exactly_one_wins_each_round,
    writers_of_different_entities_do_not_block_each_other,
];

/// Checks the stored history of one entity: versions 1..=n, valid_from non-decreasing.
async fn assert_contiguous(db: &Db, id: Uuid, n: i64) -> TestResult {
    let rows: Vec<(i64, DateTime<Utc>)> =
        sqlx::query_as("SELECT version, valid_from FROM accounts WHERE entity_id = $1 ORDER BY version")
            .bind(id)
            .fetch_all(&db.pool)
            .await?;
    let versions: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(versions, (1..=n).collect::<Vec<_>>(), "versions 1..{n} without gaps or duplicates");
    assert!(rows.windows(2).all(|w| w[0].1 <= w[1].1), "valid_from never decreases");
    Ok(())
}

async fn concurrent_read_modify_write_loses_no_update(db: Db) -> TestResult {
    const TASKS: usize = 20;
    const INCREMENTS: usize = 10;
    let v1 = Account::insert(&db.pool, Account::new("hot", 0)).await?;
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        // A connection of its own per task: real parallel sessions, not one shared connection.
        let mut conn = db.connect().await?;
        let id = v1.entity_id;
        handles.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..INCREMENTS {
                seen.push(Account::modify(&mut conn, id, |a| a.balance += 1).await?.version);
            }
            Ok::<_, Error>(seen)
        }));
    }
    let mut acknowledged = BTreeSet::new();
    for handle in handles {
        for version in handle.await?? {
            assert!(acknowledged.insert(version), "version {version} acknowledged twice");
        }
    }
    let n = (TASKS * INCREMENTS) as i64;
    assert_eq!(acknowledged, (2..=n + 1).collect::<BTreeSet<_>>());
    assert_eq!(Account::find(&db.pool, v1.entity_id).await?.balance, n, "no lost update");
    assert_contiguous(&db, v1.entity_id, n + 1).await
}

async fn concurrent_optimistic_writers_exactly_one_wins_each_round(db: Db) -> TestResult {
    const WRITERS: usize = 16;
    const ROUNDS: i64 = 5;
    let v1 = Account::insert(&db.pool, Account::new("hot", 0)).await?;
    let pool = db.pool(WRITERS as u32).await?;
    for round in 1..=ROUNDS {
        let mut handles = Vec::new();
        for writer in 0..WRITERS {
            let pool = pool.clone();
            let id = v1.entity_id;
            handles.push(tokio::spawn(async move {
                // (Values differ from every earlier round's: an equal one would append nothing.)
                Account::update_if_version(
                    &pool,
                    id,
                    round,
                    Account::new("hot", round * 100 + writer as i64 + 1),
                )
                .await
            }));
        }
        let mut wins = 0;
        for handle in handles {
            match handle.await? {
                Ok(v) => {
                    assert!(v.is_appended());
                    assert_eq!(v.version, round + 1);
                    wins += 1;
                }
                Err(Error::VersionConflict { expected: Some(e), actual: Some(a), .. }) => {
                    assert_eq!((e, a), (round, round + 1));
                }
                Err(other) => return Err(other.into()),
            }
        }
        assert_eq!(wins, 1, "round {round}");
    }
    assert_contiguous(&db, v1.entity_id, ROUNDS + 1).await
}

async fn writers_of_different_entities_do_not_block_each_other(db: Db) -> TestResult {
    let a = Account::insert(&db.pool, Account::new("a", 0)).await?;
    let b = Account::insert(&db.pool, Account::new("b", 0)).await?;
    // Hold a's lock in an open transaction...
    let mut holder = db.pool.begin().await?;
    Account::modify(&mut holder, a.entity_id, |x| x.balance += 1).await?;
    // ...a write to b goes through; a write to a waits (and times out here).
    let b2 = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        Account::modify(&db.pool, b.entity_id, |x| x.balance += 1),
    )
    .await??;
    assert_eq!(b2.version, 2);
    let blocked = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        Account::modify(&db.pool, a.entity_id, |x| x.balance += 1),
    )
    .await;
    assert!(blocked.is_err(), "a second writer of the same entity waits for the lock");
    holder.commit().await?;
    let a3 = Account::modify(&db.pool, a.entity_id, |x| x.balance += 1).await?;
    assert_eq!((a3.version, a3.balance), (3, 2));
    assert_contiguous(&db, a.entity_id, 3).await
}

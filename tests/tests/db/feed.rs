//! The change feed: every committed version delivered exactly once, in commit order between
//! snapshot intervals and in version order per entity, from a cursor a consumer stores with its
//! effects; including a transaction that writes first and commits last, which a cursor on
//! `valid_from` misses.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use immu_core::feed::{Change, ChangeKind, FeedError};
use immu_core::{Cursor, Error, Immutable};
use immu_tests::harness::{APP_ROLE, Db, TestResult};
use immu_tests::models::Account;
use sqlx::{Connection, PgPool};
use uuid::Uuid;

immu_tests::tests![
    catch_up_from_the_beginning_then_live,
    every_cursor_resumes_right_after_its_change,
    exactly_once_across_a_consumer_crash,
    a_transaction_that_commits_late_is_delivered_though_its_valid_from_is_early,
    concurrent_writers_and_a_consumer_storing_its_cursor_with_its_effects,
    paging_inside_a_big_interval,
    a_cursor_from_another_server_is_refused,
    versions_written_before_release_4_are_delivered_from_the_beginning,
    the_stream_yields_each_change_and_follows_live_writes,
    a_prepared_transaction_is_delivered_when_it_commits,
];

/// A guard against a hang (never a timing assertion): far longer than any wait should be.
const HANG: Duration = Duration::from_secs(60);

use immu_tests::drain;

/// Every stored version of `accounts`: (entity, version).
async fn stored(pool: &PgPool) -> sqlx::Result<BTreeSet<(Uuid, i64)>> {
    let rows: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT entity_id, version FROM accounts").fetch_all(pool).await?;
    Ok(rows.into_iter().collect())
}

/// Checks that `changes` holds each version at most once and each entity's versions in
/// increasing order; returns them as a set.
fn delivered(changes: &[Change<Account>]) -> BTreeSet<(Uuid, i64)> {
    let mut last: BTreeMap<Uuid, i64> = BTreeMap::new();
    let mut set = BTreeSet::new();
    for c in changes {
        assert!(set.insert((c.entity_id, c.version)), "delivered twice: {} v{}", c.entity_id, c.version);
        let before = last.insert(c.entity_id, c.version).unwrap_or(0);
        assert!(before < c.version, "{}: v{} after v{before}", c.entity_id, c.version);
    }
    set
}

/// The consumer's own tables, created by the owner: its effects (one row per version, a primary
/// key that refuses a second delivery) and its cursor.
async fn consumer_tables(db: &Db) -> TestResult {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE feed_effects (consumer text NOT NULL, entity_id uuid NOT NULL, version bigint NOT NULL, \
             balance bigint NOT NULL, PRIMARY KEY (consumer, entity_id, version));
         CREATE TABLE feed_cursors (consumer text PRIMARY KEY, cursor text NOT NULL);
         GRANT SELECT, INSERT ON feed_effects TO {APP_ROLE};
         GRANT SELECT, INSERT, UPDATE ON feed_cursors TO {APP_ROLE};"
    )))
    .execute(&db.owner)
    .await?;
    Ok(())
}

/// The consumer's stored cursor, or the beginning.
async fn stored_cursor(pool: &PgPool, consumer: &str) -> Result<Cursor, Error> {
    let text: Option<String> = sqlx::query_scalar("SELECT cursor FROM feed_cursors WHERE consumer = $1")
        .bind(consumer)
        .fetch_optional(pool)
        .await?;
    text.map_or(Ok(Cursor::beginning()), |t| t.parse())
}

/// Applies `changes` as one transaction: their effects, and the cursor after the last.
async fn apply(pool: &PgPool, consumer: &str, changes: &[Change<Account>]) -> TestResult {
    let Some(last) = changes.last() else { return Ok(()) };
    let mut tx = pool.begin().await?;
    for c in changes {
        sqlx::query("INSERT INTO feed_effects VALUES ($1, $2, $3, $4)")
            .bind(consumer)
            .bind(c.entity_id)
            .bind(c.version)
            .bind(c.balance)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "INSERT INTO feed_cursors VALUES ($1, $2) ON CONFLICT (consumer) DO UPDATE SET cursor = excluded.cursor",
    )
    .bind(consumer)
    .bind(last.cursor.to_string())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The consumer's effects: (entity, version).
async fn effects(pool: &PgPool, consumer: &str) -> sqlx::Result<BTreeSet<(Uuid, i64)>> {
    let rows: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT entity_id, version FROM feed_effects WHERE consumer = $1")
            .bind(consumer)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

async fn catch_up_from_the_beginning_then_live(db: Db) -> TestResult {
    let a = Account::insert(&db.pool, Account::new("ada", 10)).await?;
    Account::modify(&db.pool, a.entity_id, |x| x.balance += 5).await?;
    let b = Account::insert(&db.pool, Account::new("bob", 20)).await?;
    Account::delete(&db.pool, b.entity_id).await?;
    Account::undelete(&db.pool, b.entity_id).await?;
    Account::revert(&db.pool, a.entity_id, 1).await?;

    // Catch-up in pages of 2, then nothing more.
    let mut feed = Account::feed(&db.pool).batch_size(2);
    let changes = drain(&mut feed).await?;
    assert_eq!(delivered(&changes), stored(&db.pool).await?);
    let kinds: BTreeMap<(Uuid, i64), ChangeKind> =
        changes.iter().map(|c| ((c.entity_id, c.version), c.kind)).collect();
    assert_eq!(kinds[&(a.entity_id, 1)], ChangeKind::Inserted);
    assert_eq!(kinds[&(a.entity_id, 2)], ChangeKind::Updated);
    assert_eq!(kinds[&(a.entity_id, 3)], ChangeKind::Reverted);
    assert_eq!(kinds[&(b.entity_id, 2)], ChangeKind::Deleted);
    assert_eq!(kinds[&(b.entity_id, 3)], ChangeKind::Undeleted);
    // The cursor after the last change has seen everything (the feed's own cursor moved on to
    // the snapshot of its last, empty, read: transactions of other databases move snapshots too).
    let last = changes.last().map(|c| c.cursor.clone()).ok_or("nothing delivered")?;
    assert!(drain(&mut Account::feed(&db.pool).from(last)).await?.is_empty());

    // Live: a notification wakes the feed (the poll interval is far beyond the hang guard).
    let mut feed = feed.poll_interval(Duration::from_secs(3600));
    let waiting = tokio::spawn(async move {
        let batch = feed.next_batch().await;
        (feed, batch)
    });
    tokio::time::sleep(Duration::from_millis(200)).await; // lets it start waiting (not required)
    let c = Account::insert(&db.pool, Account::new("cy", 30)).await?;
    let (mut feed, batch) = tokio::time::timeout(HANG, waiting).await??;
    let batch = batch?;
    assert_eq!(batch.len(), 1);
    assert_eq!((batch.changes[0].entity_id, batch.changes[0].kind), (c.entity_id, ChangeKind::Inserted));
    assert_eq!(batch.changes[0].versioned, c);
    assert!(feed.read_batch().await?.is_empty());

    // And again, with the listener established: several writes, one or more batches.
    let mut ids = BTreeSet::new();
    for i in 0..5 {
        ids.insert((Account::insert(&db.pool, Account::new("dee", i)).await?.entity_id, 1));
    }
    let mut got = BTreeSet::new();
    while got.len() < ids.len() {
        let batch = tokio::time::timeout(HANG, feed.next_batch()).await??;
        got.extend(batch.iter().map(|c| (c.entity_id, c.version)));
    }
    assert_eq!(got, ids);
    Ok(())
}

async fn every_cursor_resumes_right_after_its_change(db: Db) -> TestResult {
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(Account::insert(&db.pool, Account::new("r", i)).await?.entity_id);
    }
    // Several versions in one transaction: one interval, several pages.
    let mut tx = db.pool.begin().await?;
    for id in &ids {
        Account::modify(&mut *tx, *id, |a| a.balance += 1).await?;
    }
    tx.commit().await?;
    for id in &ids {
        Account::modify(&db.pool, *id, |a| a.balance += 1).await?;
    }
    let all = drain(&mut Account::feed(&db.pool).batch_size(3)).await?;
    assert_eq!(all.len(), 12);
    for (i, change) in all.iter().enumerate() {
        // The text form round-trips, and a feed from it delivers exactly what followed.
        let text = change.cursor.to_string();
        let cursor: Cursor = text.parse()?;
        assert_eq!(cursor, change.cursor);
        let json = serde_json::to_string(&change.cursor)?;
        assert_eq!(serde_json::from_str::<Cursor>(&json)?, cursor);
        for size in [1, 2, 1000] {
            let rest = drain(&mut Account::feed(&db.pool).from(cursor.clone()).batch_size(size)).await?;
            let expected: Vec<(Uuid, i64)> = all[i + 1..].iter().map(|c| (c.entity_id, c.version)).collect();
            let got: Vec<(Uuid, i64)> = rest.iter().map(|c| (c.entity_id, c.version)).collect();
            // The same versions; the order of different entities may differ only where the
            // resumed read splits intervals differently, so compare per entity.
            assert_eq!(
                got.iter().collect::<BTreeSet<_>>(),
                expected.iter().collect::<BTreeSet<_>>(),
                "after {text}"
            );
            delivered(&rest);
        }
    }
    // Cursor::now: nothing before it.
    let now = Cursor::now(&db.pool).await?;
    assert!(drain(&mut Account::feed(&db.pool).from(now.clone())).await?.is_empty());
    let late = Account::insert(&db.pool, Account::new("late", 0)).await?;
    let after_now = drain(&mut Account::feed(&db.pool).from(now)).await?;
    assert_eq!(after_now.iter().map(|c| c.id).collect::<Vec<_>>(), [late.id]);
    Ok(())
}

async fn exactly_once_across_a_consumer_crash(db: Db) -> TestResult {
    consumer_tables(&db).await?;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(Account::insert(&db.pool, Account::new("x", i)).await?.entity_id);
    }
    for round in 0..3 {
        for id in &ids {
            Account::modify(&db.pool, *id, |a| a.balance += round).await?;
        }
    }
    // The consumer applies two batches, then "crashes" in the middle of the third: its
    // transaction (effects of part of the batch) never commits, the feed is dropped.
    let mut feed = Account::feed(&db.pool).from(stored_cursor(&db.pool, "c").await?).batch_size(7);
    for _ in 0..2 {
        let batch = feed.next_batch().await?;
        apply(&db.pool, "c", &batch.changes).await?;
    }
    let batch = feed.next_batch().await?;
    {
        let mut tx = db.pool.begin().await?;
        for c in batch.iter().take(3) {
            sqlx::query("INSERT INTO feed_effects VALUES ('c', $1, $2, $3)")
                .bind(c.entity_id)
                .bind(c.version)
                .bind(c.balance)
                .execute(&mut *tx)
                .await?;
        }
        drop(tx); // rolled back: the crash
    }
    drop(feed);
    // More writes while it is down.
    for id in &ids[..4] {
        Account::modify(&db.pool, *id, |a| a.balance += 100).await?;
    }
    // Restart from the stored cursor; batches applied one transaction each, plus a crash after a
    // change mid-batch (the cursor of a change, not of a batch).
    let mut feed = Account::feed(&db.pool).from(stored_cursor(&db.pool, "c").await?).batch_size(5);
    let batch = feed.next_batch().await?;
    apply(&db.pool, "c", &batch.changes[..2]).await?;
    drop(feed);
    let mut feed = Account::feed(&db.pool).from(stored_cursor(&db.pool, "c").await?).batch_size(5);
    loop {
        let batch = feed.read_batch().await?;
        if batch.is_empty() {
            break;
        }
        apply(&db.pool, "c", &batch.changes).await?;
    }
    assert_eq!(effects(&db.pool, "c").await?, stored(&db.pool).await?, "every version exactly once");
    // The effects are the versions' own data.
    let wrong: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM feed_effects e JOIN accounts a USING (entity_id, version) WHERE e.balance <> a.balance",
    )
    .fetch_one(&db.pool)
    .await?;
    assert_eq!(wrong, 0);
    Ok(())
}

async fn a_transaction_that_commits_late_is_delivered_though_its_valid_from_is_early(db: Db) -> TestResult {
    let id = Account::insert(&db.pool, Account::new("early", 0)).await?.entity_id;
    let mut feed = Account::feed(&db.pool);
    assert_eq!(drain(&mut feed).await?.len(), 1);

    // A transaction writes first (its version gets the earliest valid_from, in a savepoint of
    // the caller's transaction)...
    let mut slow = db.connect().await?;
    let mut tx = slow.begin().await?;
    let early = Account::modify(&mut *tx, id, |a| a.balance = 1).await?.into_versioned();
    // ...others write and commit after it...
    let mut later = Vec::new();
    for i in 0..3 {
        later.push(Account::insert(&db.pool, Account::new("later", i)).await?);
    }
    // ...and the consumer reads them: the slow one is not committed, so not delivered yet.
    let first = drain(&mut feed).await?;
    assert_eq!(
        first.iter().map(|c| c.id).collect::<BTreeSet<_>>(),
        later.iter().map(|v| v.id).collect::<BTreeSet<_>>()
    );
    let high_water: DateTime<Utc> = first.iter().map(|c| c.valid_from).max().ok_or("nothing delivered")?;
    assert!(early.valid_from < high_water, "the slow transaction's version is stamped earlier");

    // The slow transaction commits last.
    tx.commit().await?;
    let second = drain(&mut feed).await?;
    assert_eq!(second.iter().map(|c| c.id).collect::<Vec<_>>(), [early.id], "delivered after all");
    assert_eq!(second[0].version, 2);

    // A cursor on valid_from ("everything after the latest valid_from I saw") misses it.
    let by_valid_from: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts WHERE valid_from > $1")
        .bind(high_water)
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(by_valid_from, 0, "a valid_from cursor finds nothing new, and would never deliver it");
    Ok(())
}

async fn concurrent_writers_and_a_consumer_storing_its_cursor_with_its_effects(db: Db) -> TestResult {
    const WRITERS: usize = 8;
    const OPS: i64 = 25;
    consumer_tables(&db).await?;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(Account::insert(&db.pool, Account::new("hot", i)).await?.entity_id);
    }
    let pool = db.pool(4).await?;
    let consumer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut feed = Account::feed(&pool)
                .from(stored_cursor(&pool, "live").await?)
                .batch_size(16)
                .poll_interval(Duration::from_millis(500));
            let mut all = Vec::new();
            loop {
                let batch = feed.next_batch().await?;
                apply(&pool, "live", &batch.changes).await.map_err(|e| e.to_string())?;
                all.extend(batch);
                let done: bool =
                    sqlx::query_scalar("SELECT EXISTS (SELECT FROM accounts WHERE owner = 'done')")
                        .fetch_one(&pool)
                        .await?;
                if done && all.iter().any(|c| c.owner == "done") {
                    return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(all);
                }
            }
        })
    };
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut conn = db.connect().await?;
        let ids = ids.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..OPS {
                let id = ids[(w + i as usize) % ids.len()];
                if i % 5 == 0 {
                    // Some in a transaction of two writes that commits later than it wrote.
                    let mut tx = conn.begin().await?;
                    Account::modify(&mut *tx, id, |a| a.balance += 1).await?;
                    Account::insert(&mut *tx, Account::new("tx", i)).await?;
                    tx.commit().await?;
                } else {
                    Account::modify(&mut conn, id, |a| a.balance += 1).await?;
                }
            }
            Ok::<_, Error>(())
        }));
    }
    for w in writers {
        w.await??;
    }
    Account::insert(&db.pool, Account::new("done", 0)).await?;
    let all = tokio::time::timeout(HANG, consumer).await??.map_err(|e| e.to_string())?;
    let versions = stored(&db.pool).await?;
    assert_eq!(delivered(&all), versions);
    assert_eq!(effects(&db.pool, "live").await?, versions);
    Ok(())
}

async fn paging_inside_a_big_interval(db: Db) -> TestResult {
    let before = Account::insert(&db.pool, Account::new("before", 0)).await?;
    let mut feed = Account::feed(&db.pool).batch_size(7);
    assert_eq!(drain(&mut feed).await?.len(), 1);
    // 250 versions in one transaction: one interval.
    let mut tx = db.pool.begin().await?;
    let mut ids = Vec::new();
    for i in 0..50 {
        let v = Account::insert(&mut *tx, Account::new("bulk", i)).await?;
        for _ in 0..4 {
            Account::modify(&mut *tx, v.entity_id, |a| a.balance += 1).await?;
        }
        ids.push(v.entity_id);
    }
    tx.commit().await?;
    let first = feed.read_batch().await?;
    assert_eq!(first.len(), 7);
    // A version committed while the big interval is being read belongs to the next one.
    let between = Account::modify(&db.pool, before.entity_id, |a| a.balance += 1).await?.into_versioned();
    // Resume from the middle in a new feed, in pages of another size.
    let mut rest = Account::feed(&db.pool).from(first.cursor.clone()).batch_size(11);
    let mut changes = first.changes.clone();
    changes.extend(drain(&mut rest).await?);
    assert_eq!(changes.len(), 251);
    // The interval first, in primary key order (entity, then version), then the later commit.
    let (bulk, next) = changes.split_at(250);
    let keys: Vec<(Uuid, i64)> = bulk.iter().map(|c| (c.entity_id, c.version)).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(keys.iter().map(|k| k.0).collect::<BTreeSet<_>>(), ids.into_iter().collect());
    assert_eq!(next[0].id, between.id);
    delivered(&changes);
    Ok(())
}

async fn a_cursor_from_another_server_is_refused(db: Db) -> TestResult {
    Account::insert(&db.pool, Account::new("a", 0)).await?;
    let now: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text").fetch_one(&db.pool).await?;
    let xmax: i64 = now.split(':').nth(1).ok_or("snapshot")?.parse()?;
    let ahead: Cursor = format!("v1/{0}:{0}:", xmax + 1_000_000).parse()?;
    match Account::feed(&db.pool).from(ahead).read_batch().await {
        Err(Error::Feed(FeedError::CursorAhead { cursor, server })) => {
            assert_eq!(cursor, xmax + 1_000_000);
            assert!(server < cursor);
        }
        other => return Err(format!("expected CursorAhead, got {other:?}").into()),
    }
    match "v1/nonsense".parse::<Cursor>() {
        Err(Error::Feed(FeedError::InvalidCursor { .. })) => {}
        other => return Err(format!("expected InvalidCursor, got {other:?}").into()),
    }
    Ok(())
}

async fn versions_written_before_release_4_are_delivered_from_the_beginning(db: Db) -> TestResult {
    use immu_demo::Customer;
    // The release-2 fixture (versions without immu_xid), upgraded by immu's migrations alone.
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/upgrade/release-2.sql");
    let dump: String = std::fs::read_to_string(fixture)?
        .lines()
        .filter(|line| !line.starts_with('\\'))
        .map(|line| format!("{line}\n"))
        .collect();
    let pool = db.empty_database().await?;
    let mut restore = sqlx::PgConnection::connect_with(&db.empty_database_options()).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(dump)).execute(&mut restore).await?;
    restore.close().await?;
    immu_core::MIGRATOR.run(&pool).await?;
    let old: i64 =
        sqlx::query_scalar("SELECT count(*) FROM customers WHERE immu_xid IS NULL").fetch_one(&pool).await?;
    assert!(old > 0, "the fixture's versions have no immu_xid");
    let now = Cursor::now(&pool).await?;
    let new =
        Customer::insert(&pool, Customer { name: "after the upgrade".into(), city: "Lyon".into() }).await?;

    let mut feed = Customer::feed(&pool).batch_size(5);
    let mut all = Vec::new();
    loop {
        let batch = feed.read_batch().await?;
        if batch.is_empty() {
            break;
        }
        all.extend(batch);
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM customers").fetch_one(&pool).await?;
    assert_eq!(all.len() as i64, total, "every version, the old ones included");
    assert_eq!(all.iter().filter(|c| c.id == new.id).count(), 1);
    // From a cursor taken after the upgrade, the old versions count as seen.
    let mut feed = Customer::feed(&pool).from(now);
    let later = feed.read_batch().await?;
    assert_eq!(later.iter().map(|c| c.id).collect::<Vec<_>>(), [new.id]);
    drop(feed);
    pool.close().await;
    db.drop_empty_database().await?;
    Ok(())
}

async fn the_stream_yields_each_change_and_follows_live_writes(db: Db) -> TestResult {
    use futures_util::StreamExt;
    let a = Account::insert(&db.pool, Account::new("s", 0)).await?;
    Account::modify(&db.pool, a.entity_id, |x| x.balance += 1).await?;
    let mut stream = std::pin::pin!(Account::feed(&db.pool).batch_size(1).into_stream());
    let mut seen = Vec::new();
    for _ in 0..2 {
        let change = tokio::time::timeout(HANG, stream.next()).await?.ok_or("the stream ended")??;
        seen.push((change.version, change.cursor.clone()));
    }
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2]);
    // Caught up, it waits for the next commit.
    let pending = tokio::spawn(async move {
        Account::modify(&db.pool, a.entity_id, |x| x.balance += 1).await.map(|w| w.version)
    });
    let change = tokio::time::timeout(HANG, stream.next()).await?.ok_or("the stream ended")??;
    assert_eq!(change.version, pending.await??);
    assert_eq!((change.kind, change.version), (ChangeKind::Updated, 3));
    Ok(())
}

/// Two-phase commit: a prepared transaction counts as running (it is in every snapshot's running
/// list) until `COMMIT PREPARED`, then is delivered; it cannot notify (PostgreSQL refuses to
/// prepare a transaction that did, so it writes with `immu.notify = 'off'`), and the poll interval
/// delivers it. On a server of its own (`max_prepared_transactions`).
async fn a_prepared_transaction_is_delivered_when_it_commits(_db: Db) -> TestResult {
    let server = tokio::task::spawn_blocking(|| {
        immu_testdb::TempPostgres::builder().setting("max_prepared_transactions", "4").start()
    })
    .await??;
    let outcome = async {
        let admin: sqlx::postgres::PgConnectOptions = server.url().parse()?;
        let mut conn = sqlx::ConnectOptions::connect(&admin).await?;
        sqlx::raw_sql("CREATE DATABASE twophase").execute(&mut conn).await?;
        conn.close().await?;
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect_with(admin.database("twophase")).await?;
        immu_core::MIGRATOR.run(&pool).await?;
        immu_tests::MIGRATOR.run(&pool).await?;
        let prepare = |name: &str| {
            format!(
                "BEGIN; SET LOCAL immu.notify = 'off'; INSERT INTO accounts (id, entity_id, version, owner, balance) \
                 VALUES (gen_random_uuid(), gen_random_uuid(), 1, '{name}', 1); PREPARE TRANSACTION '{name}'"
            )
        };
        let mut feed = Account::feed(&pool).from(Cursor::now(&pool).await?);
        // Prepared first (its version stamped first), then another transaction commits.
        sqlx::raw_sql(sqlx::AssertSqlSafe(prepare("p1"))).execute(&pool).await?;
        let later = Account::insert(&pool, Account::new("later", 0)).await?;
        let first = drain(&mut feed).await?;
        assert_eq!(first.iter().map(|c| c.id).collect::<Vec<_>>(), [later.id], "the prepared one is running");
        sqlx::raw_sql("COMMIT PREPARED 'p1'").execute(&pool).await?;
        let second = drain(&mut feed).await?;
        assert_eq!(second.iter().map(|c| c.owner.as_str()).collect::<Vec<_>>(), ["p1"]);
        // Live, without a notification: the poll interval delivers it.
        sqlx::raw_sql(sqlx::AssertSqlSafe(prepare("p2"))).execute(&pool).await?;
        let mut feed = feed.poll_interval(Duration::from_millis(100));
        let waiting = tokio::spawn(async move { feed.next_batch().await });
        sqlx::raw_sql("COMMIT PREPARED 'p2'").execute(&pool).await?;
        let third = tokio::time::timeout(HANG, waiting).await???;
        assert_eq!(third.iter().map(|c| c.owner.as_str()).collect::<Vec<_>>(), ["p2"]);
        pool.close().await;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    tokio::task::spawn_blocking(move || server.stop()).await??;
    outcome
}

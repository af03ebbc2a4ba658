//! Scenario: the change feed under faults. 32 writers on a durable server of its own, connections
//! killed (`pg_terminate_backend`, writers' and consumers' alike, the feeds' listening connections
//! included) and the server crashed (`pg_ctl stop -m immediate`) and restarted, while two
//! consumers follow the feed. Each consumer stores its effects (one row per version, primary key
//! `(consumer, entity_id, version)`) and its cursor in one transaction, and on any error starts
//! again from its stored cursor. At the end, per consumer: every stored version (so every
//! acknowledged one, which the history check verifies is stored) delivered exactly once, nothing
//! delivered that is not stored, each entity's versions in increasing order, with their data.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use immu_core::feed::Change;
use immu_core::{Cursor, Immutable};
use immu_testdb::TempPostgres;
use immu_tests::models::Account;
use immu_tests::reliability::{self, History, Kind, Rng};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use uuid::Uuid;

use crate::{BoxError, Env, Verdict};

const WRITERS: usize = 32;
const ENTITIES: usize = 64;
const CONSUMERS: usize = 2;

pub(crate) async fn feed_under_faults(env: Env) -> Result<Verdict, BoxError> {
    let mut verdict = Verdict::new(&format!(
        "{WRITERS} writers, connections killed, server crashed and restarted, {CONSUMERS} consumers storing \
         effects + cursor in one transaction: every stored version delivered once per consumer, in order"
    ));
    if env.external {
        verdict.skipped = Some(
            "DATABASE_URL is set; this scenario needs a durable server of its own (unset DATABASE_URL)"
                .to_owned(),
        );
        return Ok(verdict);
    }
    let pg = tokio::task::spawn_blocking(|| {
        TempPostgres::builder().fsync(true).setting("max_connections", "120").start()
    })
    .await??;
    let pg = Arc::new(pg);
    let outcome = run(&pg, env.scale, &mut verdict).await;
    let pg = Arc::try_unwrap(pg).map_err(|_| "the feed server is still shared")?;
    let stopped = tokio::task::spawn_blocking(move || pg.stop()).await?;
    outcome?;
    stopped?;
    Ok(verdict)
}

/// A pool whose sessions name themselves `name` (so that the killer finds them).
async fn pool(options: &PgConnectOptions, name: &str, max: u32) -> sqlx::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_millis(500))
        .connect_with(options.clone().application_name(name))
        .await
}

async fn run(pg: &Arc<TempPostgres>, scale: u32, verdict: &mut Verdict) -> Result<(), BoxError> {
    let admin: PgConnectOptions = pg.url().parse()?;
    let mut conn = admin.connect().await?;
    sqlx::raw_sql("CREATE DATABASE feed").execute(&mut conn).await?;
    conn.close().await?;
    let options = admin.database("feed");
    let setup = pool(&options, "feed-setup", 4).await?;
    immu_core::MIGRATOR.run(&setup).await?;
    immu_tests::MIGRATOR.run(&setup).await?;
    sqlx::raw_sql(
        "CREATE TABLE feed_effects (consumer int NOT NULL, entity_id uuid NOT NULL, version bigint NOT NULL, \
             balance bigint NOT NULL, seq bigserial, PRIMARY KEY (consumer, entity_id, version));
         CREATE TABLE feed_cursors (consumer int PRIMARY KEY, cursor text NOT NULL);",
    )
    .execute(&setup)
    .await?;

    let mut history = History::new();
    let mut ids = Vec::new();
    for i in 0..ENTITIES {
        let v = history.push(reliability::insert(&setup, format!("init-{i}"), 0).await);
        ids.push(v.ok_or("insert failed")?.entity_id);
    }

    // The consumers: from the beginning (the setup's inserts included).
    let stop_at = Arc::new(tokio::sync::watch::channel(None::<Uuid>));
    let duplicates = Arc::new(AtomicUsize::new(0));
    let restarts = Arc::new(AtomicUsize::new(0));
    let mut consumers = Vec::new();
    for c in 0..CONSUMERS {
        let pool = pool(&options, "feed-consumer", 4).await?;
        let (mut done, duplicates, restarts) =
            (stop_at.1.clone(), Arc::clone(&duplicates), Arc::clone(&restarts));
        consumers.push(tokio::spawn(async move {
            let consumer = c as i32;
            loop {
                match consume(&pool, consumer, &mut done, &duplicates).await {
                    Ok(()) => return,
                    Err(_) => {
                        restarts.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }

    // The writers, on one pool.
    let writers_pool = pool(&options, "feed-writer", WRITERS as u32).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (pool, ids, stop) = (writers_pool.clone(), ids.clone(), Arc::clone(&stop));
        writers.push(tokio::spawn(async move {
            let mut rng = Rng::new(0xFEED_0000 + w as u64);
            let mut ops = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let tag = format!("w{w}-op{i}");
                let op = if rng.chance(5) {
                    reliability::insert(&pool, tag, 0).await
                } else {
                    let entity = ids[rng.index(ids.len())];
                    let kind = match rng.below(3) {
                        0 => Kind::Modify { delta: 1 },
                        1 => Kind::Patch { delta: 1 },
                        _ => Kind::Update { balance: rng.below(1000) as i64 },
                    };
                    reliability::write(&pool, entity, kind, tag).await
                };
                if !op.outcome.is_ok() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                ops.push(op);
                i += 1;
            }
            ops
        }));
    }

    // The killer: a random writer's or consumer's session every 50 ms.
    let kills = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (options, stop, kills) = (options.clone(), Arc::clone(&stop), Arc::clone(&kills));
        tokio::spawn(async move {
            let mut rng = Rng::new(0xDEAD);
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let Ok(mut conn) = options.connect().await else { continue };
                let who = if rng.chance(30) { "feed-consumer" } else { "feed-writer" };
                let killed: Option<bool> = sqlx::query_scalar(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = 'feed' AND application_name = $1 ORDER BY random() LIMIT 1",
                )
                .bind(who)
                .fetch_optional(&mut conn)
                .await
                .ok()
                .flatten();
                if killed == Some(true) {
                    kills.fetch_add(1, Ordering::Relaxed);
                }
                let _ = conn.close().await;
            }
        })
    };

    let load = Duration::from_millis(1_500 * u64::from(scale));
    tokio::time::sleep(load).await;
    let server = Arc::clone(pg);
    tokio::task::spawn_blocking(move || server.pg_ctl(&["stop", "-m", "immediate", "-w"])).await??;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let server = Arc::clone(pg);
    tokio::task::spawn_blocking(move || server.restart()).await??;
    tokio::time::sleep(load).await;
    stop.store(true, Ordering::SeqCst);
    killer.await?;
    for w in writers {
        history.extend(w.await?);
    }

    // The last version: once a consumer has applied it, it has applied everything before it.
    let setup = pool(&options, "feed-setup", 4).await?;
    let mut marker = None;
    for attempt in 0..50 {
        if let Some(v) = history.push(reliability::insert(&setup, format!("marker-{attempt}"), 0).await) {
            marker = Some(v.entity_id);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let marker = marker.ok_or("the marker could not be written")?;
    stop_at.0.send_replace(Some(marker));
    let waited =
        tokio::time::timeout(Duration::from_secs(60), futures_util::future::join_all(consumers)).await;
    if waited.is_err() {
        verdict.fail("the consumers did not reach the marker within 60 s");
    }

    verdict.report = Some(reliability::check(&setup, &history).await?);
    let stored: BTreeMap<(Uuid, i64), i64> =
        sqlx::query_as::<_, (Uuid, i64, i64)>("SELECT entity_id, version, balance FROM accounts")
            .fetch_all(&setup)
            .await?
            .into_iter()
            .map(|(e, v, b)| ((e, v), b))
            .collect();
    let mut delivered = 0;
    for c in 0..CONSUMERS as i32 {
        let rows: Vec<(Uuid, i64, i64)> = sqlx::query_as(
            "SELECT entity_id, version, balance FROM feed_effects WHERE consumer = $1 ORDER BY seq",
        )
        .bind(c)
        .fetch_all(&setup)
        .await?;
        delivered += rows.len();
        let got: BTreeMap<(Uuid, i64), i64> = rows.iter().map(|(e, v, b)| ((*e, *v), *b)).collect();
        let missing = stored.keys().filter(|k| !got.contains_key(k)).count();
        let extra = got.keys().filter(|k| !stored.contains_key(k)).count();
        let wrong = got.iter().filter(|(k, b)| stored.get(k).is_some_and(|s| s != *b)).count();
        let mut last: BTreeMap<Uuid, i64> = BTreeMap::new();
        let mut out_of_order = 0;
        for (e, v, _) in &rows {
            if last.insert(*e, *v).is_some_and(|before| before >= *v) {
                out_of_order += 1;
            }
        }
        verdict.expect(missing == 0, || format!("consumer {c}: {missing} stored versions never delivered"));
        verdict.expect(extra == 0, || format!("consumer {c}: {extra} delivered versions are not stored"));
        verdict.expect(wrong == 0, || format!("consumer {c}: {wrong} versions delivered with other data"));
        verdict.expect(out_of_order == 0, || format!("consumer {c}: {out_of_order} versions out of order"));
    }
    let duplicates = duplicates.load(Ordering::Relaxed);
    verdict.expect(duplicates == 0, || format!("{duplicates} versions delivered twice"));
    let acknowledged: BTreeSet<(Uuid, i64)> =
        history.ops.iter().filter_map(|op| op.outcome.version().map(|v| (v.entity_id, v.version))).collect();
    verdict.delivered = delivered;
    verdict.count(format!(
        "{delivered} versions delivered ({} stored x {CONSUMERS} consumers, {} acknowledged), {} sessions killed, \
         {} consumer restarts, {duplicates} duplicates",
        stored.len(),
        acknowledged.len(),
        kills.load(Ordering::Relaxed),
        restarts.load(Ordering::Relaxed)
    ));
    setup.close().await;
    writers_pool.close().await;
    Ok(())
}

/// One life of a consumer: from its stored cursor, applies batches (effects and cursor in one
/// transaction) until it has applied the marker. Any error ends it; the caller starts it again.
async fn consume(
    pool: &PgPool,
    consumer: i32,
    done: &mut tokio::sync::watch::Receiver<Option<Uuid>>,
    duplicates: &AtomicUsize,
) -> Result<(), BoxError> {
    let text: Option<String> = sqlx::query_scalar("SELECT cursor FROM feed_cursors WHERE consumer = $1")
        .bind(consumer)
        .fetch_optional(pool)
        .await?;
    let cursor = match text {
        Some(text) => text.parse()?,
        None => Cursor::beginning(),
    };
    let mut feed = Account::feed(pool).from(cursor).batch_size(50).poll_interval(Duration::from_millis(500));
    loop {
        let marker = *done.borrow();
        if let Some(marker) = marker {
            let applied: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT FROM feed_effects WHERE consumer = $1 AND entity_id = $2)",
            )
            .bind(consumer)
            .bind(marker)
            .fetch_one(pool)
            .await?;
            if applied {
                return Ok(());
            }
        }
        let batch = tokio::select! {
            batch = feed.next_batch() => batch?,
            _ = done.changed() => continue,
        };
        apply(pool, consumer, &batch.changes, duplicates).await?;
    }
}

/// The consumer's effects and cursor, in one transaction. A version already applied is counted as
/// a duplicate (and not applied twice).
async fn apply(
    pool: &PgPool,
    consumer: i32,
    changes: &[Change<Account>],
    duplicates: &AtomicUsize,
) -> Result<(), BoxError> {
    let Some(last) = changes.last() else { return Ok(()) };
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO feed_effects (consumer, entity_id, version, balance) \
         SELECT $1, c.e, c.v, c.b FROM unnest($2::uuid[], $3::bigint[], $4::bigint[]) WITH ORDINALITY AS c (e, v, b, o) \
         ORDER BY o ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(changes.iter().map(|c| c.entity_id).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.version).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.balance).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("INSERT INTO feed_cursors VALUES ($1, $2) ON CONFLICT (consumer) DO UPDATE SET cursor = excluded.cursor")
        .bind(consumer)
        .bind(last.cursor.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    duplicates.fetch_add(changes.len() - inserted as usize, Ordering::Relaxed);
    Ok(())
}

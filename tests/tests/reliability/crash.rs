//! Scenario 8: the server crashes (`pg_ctl stop -m immediate`) under load and restarts; one
//! shared pool of writers carries on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use immu_testdb::TempPostgres;
use immu_tests::reliability::{self, History, Kind, Op, Rng};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use crate::{BoxError, Env, Verdict};

const WRITERS: usize = 6;
const ENTITIES: usize = 8;

/// One recorded op with when it started and ended.
struct Timed {
    start: Instant,
    end: Instant,
    op: Op,
}

pub(crate) async fn crash_and_restart(env: Env) -> Result<Verdict, BoxError> {
    let mut verdict = Verdict::new(&format!(
        "{WRITERS} writers on one pool, durable server killed (stop -m immediate) and restarted: errors during \
         the outage, same pool recovers, every ack survives"
    ));
    if env.external {
        verdict.skipped = Some(
            "DATABASE_URL is set; this scenario needs a durable server of its own (unset DATABASE_URL)"
                .to_owned(),
        );
        return Ok(verdict);
    }
    let pg = tokio::task::spawn_blocking(|| {
        TempPostgres::builder().fsync(true).setting("max_connections", "50").start()
    })
    .await??;
    let pg = Arc::new(pg);
    let outcome = run(&pg, env.scale, &mut verdict).await;
    let pg = Arc::try_unwrap(pg).map_err(|_| "the crash server is still shared")?;
    let stopped = tokio::task::spawn_blocking(move || pg.stop()).await?;
    outcome?;
    stopped?;
    Ok(verdict)
}

async fn run(pg: &Arc<TempPostgres>, scale: u32, verdict: &mut Verdict) -> Result<(), BoxError> {
    let admin: PgConnectOptions = pg.url().parse()?;
    let mut conn = admin.connect().await?;
    sqlx::raw_sql("CREATE DATABASE crash").execute(&mut conn).await?;
    conn.close().await?;
    let options = admin.database("crash");
    let pool = PgPoolOptions::new()
        .max_connections(WRITERS as u32)
        .acquire_timeout(Duration::from_millis(500))
        .connect_with(options)
        .await?;
    immu_core::MIGRATOR.run(&pool).await?;
    immu_tests::MIGRATOR.run(&pool).await?;

    let mut history = History::new();
    let mut ids = Vec::new();
    for i in 0..ENTITIES {
        let v = history.push(reliability::insert(&pool, format!("init-{i}"), 0).await);
        ids.push(v.ok_or("insert failed")?.entity_id);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let (pool, ids, stop) = (pool.clone(), ids.clone(), Arc::clone(&stop));
        handles.push(tokio::spawn(async move {
            let mut rng = Rng::new(0x8000 + w as u64);
            let mut ops = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let entity = ids[rng.index(ids.len())];
                let kind = if rng.chance(70) {
                    Kind::Modify { delta: 1 }
                } else {
                    Kind::Update { balance: rng.below(1000) as i64 }
                };
                let start = Instant::now();
                let op = reliability::write(&pool, entity, kind, format!("w{w}-op{i}")).await;
                let end = Instant::now();
                let ok = op.outcome.is_ok();
                ops.push(Timed { start, end, op });
                if !ok {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                i += 1;
            }
            ops
        }));
    }

    let load = Duration::from_millis(1_000 * u64::from(scale));
    tokio::time::sleep(load).await;
    let server = Arc::clone(pg);
    tokio::task::spawn_blocking(move || server.pg_ctl(&["stop", "-m", "immediate", "-w"])).await??;
    let crashed = Instant::now();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let restarting = Instant::now();
    let server = Arc::clone(pg);
    tokio::task::spawn_blocking(move || server.restart()).await??;
    let restarted = Instant::now();
    tokio::time::sleep(load).await;
    stop.store(true, Ordering::SeqCst);
    let mut timed = Vec::new();
    for handle in handles {
        timed.extend(handle.await?);
    }

    // During the outage every write failed; none succeeded silently.
    let outage: Vec<&Timed> = timed.iter().filter(|t| t.start >= crashed && t.end <= restarting).collect();
    let silent = outage.iter().filter(|t| t.op.outcome.is_ok()).count();
    verdict.expect(silent == 0, || format!("{silent} writes acknowledged while the server was down"));
    verdict.expect(!outage.is_empty(), || "no write was attempted during the outage".to_owned());
    let before = timed.iter().filter(|t| t.end < crashed && t.op.outcome.is_ok()).count();
    let unknown = timed.iter().filter(|t| t.op.outcome.is_unknown()).count();
    // The same pool serves again after the restart, within a bound.
    let first_ack =
        timed.iter().filter(|t| t.start >= restarted && t.op.outcome.is_ok()).map(|t| t.end).min();
    let after = timed.iter().filter(|t| t.start >= restarted && t.op.outcome.is_ok()).count();
    match first_ack {
        Some(at) => {
            let recovery = at.duration_since(restarted);
            verdict.expect(recovery < Duration::from_secs(10), || {
                format!("first write after the restart took {recovery:?}")
            });
            verdict.count(format!("first ack {:.0} ms after restart", recovery.as_secs_f64() * 1000.0));
        }
        None => verdict.fail("the pool never served a write after the restart"),
    }
    verdict.count(format!(
        "{before} acks before the crash, {} failed during the outage, {unknown} unknown, {after} acks after the restart",
        outage.len()
    ));
    let mut errors: Vec<String> = outage
        .iter()
        .filter_map(|t| t.op.outcome.error().map(reliability::error_name))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    errors.truncate(4);
    verdict.count(format!("outage errors: {}", errors.join(", ")));
    history.extend(timed.into_iter().map(|t| t.op));
    verdict.report = Some(reliability::check(&pool, &history).await?);
    pool.close().await;
    Ok(())
}

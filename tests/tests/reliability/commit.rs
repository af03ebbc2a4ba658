//! Scenario 14: cancels and statement timeouts that land at commit time.
//!
//! Outside a caller's transaction a write is a procedure that commits and then returns. A cancel
//! or `statement_timeout` that lands after its `COMMIT` fails the `CALL` although the version is
//! stored. The server of this scenario widens that window on purpose (`fsync` on, `commit_delay`
//! 10 ms with `commit_siblings` 0: every commit waits 10 ms), and each write is cancelled or timed
//! out at a random moment around its commit. The checker believes no error: a `Canceled` or
//! `LockTimeout` is recorded as unknown, like a broken connection; an application that retries
//! every retryable error retries under a tag of its own, so that a write stored by two attempts
//! is seen. The scenario then proves: every acknowledged attempt stored, no logical write stored
//! twice, and no attempt that immu reported as "nothing written" stored.

use std::sync::Arc;
use std::time::{Duration, Instant};

use immu_core::{Error, Immutable};
use immu_testdb::TempPostgres;
use immu_tests::models::Account;
use immu_tests::reliability::{self, History, Kind, Op, Outcome, Rng};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::{BoxError, Env, Verdict};

const WORKERS: usize = 8;
const ENTITIES: usize = 4;
/// How long every commit waits (`commit_delay`, microseconds).
const COMMIT_DELAY_US: u64 = 10_000;

pub(crate) async fn commit_time_cancels(env: Env) -> Result<Verdict, BoxError> {
    let mut verdict = Verdict::new(&format!(
        "{WORKERS} workers, each write cancelled or timed out around its commit ({} ms commit_delay): \
         canceled/timed-out writes counted unknown, retried under their own tag; no ack lost, none stored twice, \
         none stored that immu called unwritten",
        COMMIT_DELAY_US / 1000
    ));
    if env.external {
        verdict.skipped = Some(
            "DATABASE_URL is set; this scenario needs a server of its own with commit_delay (unset DATABASE_URL)"
                .to_owned(),
        );
        return Ok(verdict);
    }
    let pg = tokio::task::spawn_blocking(|| {
        TempPostgres::builder()
            .fsync(true)
            .setting("commit_delay", &COMMIT_DELAY_US.to_string())
            .setting("commit_siblings", "0")
            .setting("max_connections", "60")
            .start()
    })
    .await??;
    let pg = Arc::new(pg);
    let outcome = run(&pg, env.scale, &mut verdict).await;
    let pg = Arc::try_unwrap(pg).map_err(|_| "the scenario's server is still shared")?;
    let stopped = tokio::task::spawn_blocking(move || pg.stop()).await?;
    outcome?;
    stopped?;
    Ok(verdict)
}

/// One attempt of a logical write, with what was done to it.
struct Attempt {
    logical: String,
    op: Op,
    /// immu reported it as not written (a typed error that guarantees it).
    said_unwritten: bool,
    /// A cancel was delivered while its call was running.
    cancelled_in_flight: bool,
    /// immu reported [`Error::OutcomeUnknown`].
    outcome_unknown: bool,
}

async fn run(pg: &Arc<TempPostgres>, scale: u32, verdict: &mut Verdict) -> Result<(), BoxError> {
    let admin: PgConnectOptions = pg.url().parse()?;
    let mut conn = admin.connect().await?;
    sqlx::raw_sql("CREATE DATABASE commits").execute(&mut conn).await?;
    conn.close().await?;
    let options = admin.database("commits");
    let pool = PgPoolOptions::new().max_connections(WORKERS as u32 + 2).connect_with(options.clone()).await?;
    immu_core::MIGRATOR.run(&pool).await?;
    immu_tests::MIGRATOR.run(&pool).await?;

    let mut history = History::new();
    let mut ids = Vec::new();
    for i in 0..ENTITIES {
        let v = history.push(reliability::insert(&pool, format!("init-{i}"), 0).await);
        ids.push(v.ok_or("insert failed")?.entity_id);
    }
    let writes = 25 * scale as usize;
    let mut handles = Vec::new();
    for w in 0..WORKERS {
        let (pool, ids, options) = (pool.clone(), ids.clone(), options.clone());
        handles.push(tokio::spawn(async move { worker(w, writes, &ids, &options, &pool).await }));
    }
    let mut attempts = Vec::new();
    for handle in handles {
        attempts.extend(handle.await??);
    }

    let unknown = attempts.iter().filter(|a| a.outcome_unknown).count();
    // Which logical writes are stored, by how many of their attempts.
    let stored: Vec<(String,)> = sqlx::query_as("SELECT owner FROM accounts").fetch_all(&pool).await?;
    let stored: std::collections::HashSet<String> = stored.into_iter().map(|(o,)| o).collect();
    let mut per_logical: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let (mut acked, mut said_unwritten, mut cancels, mut committed_then_cancelled) = (0, 0, 0, 0);
    for attempt in &attempts {
        let is_stored = stored.contains(&attempt.op.tag);
        if is_stored {
            *per_logical.entry(attempt.logical.as_str()).or_default() += 1;
        }
        if attempt.said_unwritten {
            said_unwritten += 1;
            verdict.expect(!is_stored, || {
                format!(
                    "attempt {:?} was reported as not written ({:?}) but is stored",
                    attempt.op.tag, attempt.op.outcome
                )
            });
        }
        if attempt.cancelled_in_flight {
            cancels += 1;
            if attempt.op.outcome.is_ok() {
                committed_then_cancelled += 1;
            }
        }
        if attempt.op.outcome.is_ok() {
            acked += 1;
        }
    }
    let twice: Vec<_> = per_logical.iter().filter(|(_, n)| **n > 1).collect();
    verdict.expect(twice.is_empty(), || format!("logical writes stored twice: {twice:?}"));
    verdict.count(format!(
        "{} attempts of {} logical writes: {acked} acknowledged, {said_unwritten} typed failures (none stored), \
         {unknown} OutcomeUnknown; {cancels} cancels landed mid-call, {committed_then_cancelled} of them after \
         the commit (reported as written); 0 logical writes stored twice",
        attempts.len(),
        WORKERS * writes,
    ));
    history.extend(attempts.into_iter().map(|a| a.op));
    verdict.report = Some(reliability::check(&pool, &history).await?);
    pool.close().await;
    Ok(())
}

/// One worker on a connection of its own: `writes` logical writes, each attempt disturbed at
/// random: cancelled by another connection after a random delay, or under a random
/// `statement_timeout`, or left alone; retried (undisturbed) while immu says it may be.
async fn worker(
    w: usize,
    writes: usize,
    ids: &[uuid::Uuid],
    options: &PgConnectOptions,
    pool: &sqlx::PgPool,
) -> Result<Vec<Attempt>, BoxError> {
    let mut conn = options.connect().await?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut conn).await?;
    let mut rng = Rng::new(0xC0117 + w as u64);
    let mut attempts = Vec::new();
    // A write takes the commit delay and a little more; disturbances land around it.
    let window_us = 2 * COMMIT_DELAY_US + 4_000;
    for i in 0..writes {
        let logical = format!("w{w}-{i}");
        let entity = ids[rng.index(ids.len())];
        let kind = if rng.chance(50) {
            Kind::Modify { delta: 1 }
        } else {
            Kind::Update { balance: rng.below(1000) as i64 }
        };
        for retry in 0..4 {
            let disturb = if retry == 0 { rng.below(3) } else { 2 };
            let delay = Duration::from_micros(rng.below(window_us));
            let tag = format!("{logical}~{retry}");
            if disturb == 1 {
                let ms = delay.as_millis().max(1);
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET statement_timeout = {ms}")))
                    .execute(&mut conn)
                    .await?;
            }
            let canceller = (disturb == 0).then(|| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let at = Instant::now();
                    let sent: bool = sqlx::query_scalar("SELECT pg_cancel_backend($1)")
                        .bind(pid)
                        .fetch_one(&pool)
                        .await
                        .unwrap_or(false);
                    sent.then_some(at)
                })
            });
            let started = Instant::now();
            let result = write(&mut conn, entity, kind, &tag).await;
            let ended = Instant::now();
            let cancelled_at = match canceller {
                Some(handle) => handle.await.ok().flatten(),
                None => None,
            };
            if disturb == 1 {
                sqlx::raw_sql("SET statement_timeout = 0").execute(&mut conn).await?;
            }
            // A cancel sent after the call ended may hit the next statement: absorb it.
            if cancelled_at.is_some_and(|at| at >= ended) {
                let _ = sqlx::raw_sql("SELECT 1").execute(&mut conn).await;
            }
            let cancelled_in_flight = cancelled_at.is_some_and(|at| at > started && at < ended);
            let retryable = result.as_ref().err().is_some_and(Error::is_retryable);
            let said_unwritten =
                retryable && matches!(result, Err(Error::Canceled { .. } | Error::LockTimeout { .. }));
            let outcome_unknown = matches!(result, Err(Error::OutcomeUnknown { .. }));
            // The checker believes no error about a cancel or a timeout: unknown.
            let outcome = match result {
                Ok(v) => Outcome::Ok(v),
                Err(
                    err @ (Error::Canceled { .. } | Error::LockTimeout { .. } | Error::OutcomeUnknown { .. }),
                ) => Outcome::Unknown(format!("{err}")),
                Err(err) => Outcome::of(Err(err)),
            };
            attempts.push(Attempt {
                logical: logical.clone(),
                op: Op { entity: Some(entity), kind, tag, group: None, outcome },
                said_unwritten,
                cancelled_in_flight,
                outcome_unknown,
            });
            if !retryable {
                break;
            }
        }
    }
    conn.close().await?;
    Ok(attempts)
}

/// One write of `kind` on `conn`, outside any transaction: the committing procedure.
async fn write(
    conn: &mut PgConnection,
    entity: uuid::Uuid,
    kind: Kind,
    tag: &str,
) -> immu_core::Result<immu_core::Versioned<Account>> {
    let audit = immu_core::Audit::actor(immu_tests::reliability::ACTOR).with_reason(tag);
    let written = audit
        .scope(async {
            match kind {
                Kind::Update { balance } => {
                    Account::update(&mut *conn, entity, Account::new(tag, balance)).await
                }
                Kind::Modify { delta } => {
                    let owner = tag.to_owned();
                    Account::modify(&mut *conn, entity, move |a| {
                        a.owner = owner;
                        a.balance += delta;
                    })
                    .await
                }
                _ => unreachable!("the scenario writes updates and modifies"),
            }
        })
        .await;
    written.map(Into::into)
}

//! The change feed's latency: from a writer's acknowledged commit to the consumer's receipt of
//! the version, with writers committing while one consumer follows the feed (same process, one
//! monotonic clock).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use immu_core::{Cursor, Immutable};
use sqlx::{ConnectOptions, postgres::PgConnectOptions};
use uuid::Uuid;

use crate::data::{Ctx, Setup};
use crate::run::median;
use crate::{Account, BoxError, Config};

/// Writers committing while the consumer follows.
const WRITERS: usize = 8;

/// What the measurement found.
pub(crate) struct FeedLatency {
    /// How long the writers wrote.
    pub(crate) seconds: f64,
    /// Versions acknowledged to the writers (all delivered, or the run fails).
    pub(crate) delivered: usize,
    /// Batches the consumer received.
    pub(crate) batches: usize,
    /// Median latency, ms.
    pub(crate) median_ms: f64,
    /// 99th percentile, ms.
    pub(crate) p99_ms: f64,
    /// The largest, ms.
    pub(crate) max_ms: f64,
    /// Versions received before their writer's acknowledgement arrived (counted as 0 ms).
    pub(crate) early: usize,
    /// The plans of a catch-up read and of a live read (EXPLAIN ANALYZE): title, plan.
    pub(crate) plans: Vec<(String, String)>,
}

/// Runs writers for a few seconds (1 with `--quick`) while a feed from [`Cursor::now`] follows;
/// waits until every acknowledged version is delivered.
pub(crate) async fn latency(setup: &Setup, ctx: &Ctx, config: &Config) -> Result<FeedLatency, BoxError> {
    let length = if config.quick { Duration::from_secs(1) } else { Duration::from_secs(5) };
    // The feed woken at commit (immu's notify option, off by default), for this measurement only.
    sqlx::query("SELECT immu.configure_versioning('accounts', notify => true)").execute(&setup.pool).await?;
    let measured = measure(setup, ctx, length).await;
    sqlx::query("SELECT immu.configure_versioning('accounts', notify => false)").execute(&setup.pool).await?;
    measured
}

/// The measurement itself (see [`latency`]).
async fn measure(setup: &Setup, ctx: &Ctx, length: Duration) -> Result<FeedLatency, BoxError> {
    let options: PgConnectOptions = setup.url.parse()?;
    let consumer_pool =
        sqlx::postgres::PgPoolOptions::new().max_connections(3).connect_with(options.clone()).await?;
    let start = Cursor::now(&consumer_pool).await?;
    let (ids_tx, mut ids_rx) = tokio::sync::watch::channel(None::<usize>);
    let consumer = tokio::spawn(async move {
        let mut feed = Account::feed(&consumer_pool).from(start);
        let mut received: HashMap<Uuid, Instant> = HashMap::new();
        let mut batches = 0;
        loop {
            let expected = *ids_rx.borrow();
            if expected.is_some_and(|n| received.len() >= n) {
                return Ok::<_, immu_core::Error>((received, batches));
            }
            let batch = tokio::select! {
                batch = feed.next_batch() => batch?,
                _ = ids_rx.changed() => continue,
            };
            let now = Instant::now();
            batches += 1;
            for change in batch {
                received.insert(change.id, now);
            }
        }
    });
    let until = Instant::now() + length;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut conn = options.connect().await?;
        let ids: Vec<Uuid> = ctx.live.iter().skip(w).step_by(WRITERS).map(|(id, _)| *id).take(1000).collect();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while Instant::now() < until {
                let id = ids[i % ids.len()];
                i += 1;
                let written = Account::modify(&mut conn, id, |a| a.balance += 1).await?;
                acked.push((written.id, Instant::now()));
            }
            Ok::<_, immu_core::Error>(acked)
        }));
    }
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await??);
    }
    ids_tx.send_replace(Some(acked.len()));
    let (received, batches) = tokio::time::timeout(Duration::from_secs(60), consumer)
        .await
        .map_err(|_| "the feed did not deliver every acknowledged version within 60 s")???;
    let mut early = 0;
    let mut ms: Vec<f64> = Vec::with_capacity(acked.len());
    for (id, at) in &acked {
        let got =
            received.get(id).ok_or_else(|| format!("version {id} was acknowledged and never delivered"))?;
        match got.checked_duration_since(*at) {
            Some(d) => ms.push(d.as_secs_f64() * 1000.0),
            None => {
                early += 1;
                ms.push(0.0);
            }
        }
    }
    ms.sort_by(f64::total_cmp);
    let plans = plans(setup, ctx).await?;
    let p99 =
        ms.get(((ms.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)).copied().unwrap_or(f64::NAN);
    Ok(FeedLatency {
        seconds: length.as_secs_f64(),
        delivered: acked.len(),
        batches,
        median_ms: median(&ms),
        p99_ms: p99,
        max_ms: ms.last().copied().unwrap_or(f64::NAN),
        early,
        plans,
    })
}

/// The plans of the feed's two kinds of read on the loaded table: the first page of a catch-up
/// from the beginning, and a live read of an interval holding 10 versions.
async fn plans(setup: &Setup, ctx: &Ctx) -> Result<Vec<(String, String)>, BoxError> {
    let catch_up = Account::feed(&setup.pool).explain(true).await?;
    let from = Cursor::now(&setup.pool).await?;
    for (id, _) in ctx.live.iter().take(10) {
        Account::modify(&setup.pool, *id, |a| a.balance += 1).await?;
    }
    let live = Account::feed(&setup.pool).from(from).explain(true).await?;
    Ok(vec![
        ("Catch-up: the first page from `Cursor::beginning()` (1000 of every version)".to_owned(), catch_up),
        ("Live: the versions of 10 transactions committed since the cursor".to_owned(), live),
    ])
}

impl FeedLatency {
    /// One line for the console.
    pub(crate) fn line(&self) -> String {
        format!(
            "feed         {} versions in {} batches, commit to delivery: median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.delivered, self.batches, self.median_ms, self.p99_ms, self.max_ms
        )
    }

    /// The report's section.
    pub(crate) fn section(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "### Change feed: commit to delivery")?;
        writeln!(out)?;
        writeln!(
            out,
            "{WRITERS} writers (`modify`, a connection each) committed for {:.0} s while one consumer followed \
             `Account::feed` from `Cursor::now` (default batch size and poll interval, woken by `LISTEN`). \
             Latency is the consumer's receipt of the batch holding a version minus its writer's acknowledged \
             commit, on one monotonic clock in one process.",
            self.seconds
        )?;
        writeln!(out)?;
        writeln!(out, "| versions delivered | batches | median | p99 | max |")?;
        writeln!(out, "|---:|---:|---:|---:|---:|")?;
        writeln!(
            out,
            "| {} | {} | {:.2} ms | {:.2} ms | {:.2} ms |",
            self.delivered, self.batches, self.median_ms, self.p99_ms, self.max_ms
        )?;
        writeln!(out)?;
        if self.early > 0 {
            writeln!(
                out,
                "{} versions reached the consumer before their writer saw its acknowledgement (counted as 0 ms): \
                 the notification is sent at commit, the acknowledgement travels back to the writer after it.",
                self.early
            )?;
            writeln!(out)?;
        }
        for (title, plan) in &self.plans {
            writeln!(out, "<details><summary>Plan, {title}</summary>")?;
            writeln!(out)?;
            writeln!(out, "```\n{}\n```", plan.trim_end())?;
            writeln!(out)?;
            writeln!(out, "</details>")?;
            writeln!(out)?;
        }
        Ok(())
    }
}

//! Timing: rounds of one variant at a time, alternating between the variants of a scenario.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Barrier;

use crate::BoxError;
use crate::data::Ctx;
use crate::scenarios::{Op, Role, Scenario, Unit, Worker};

/// One timed round of one variant: every client ran operations until the round's time was up.
#[derive(Debug, Clone)]
pub(crate) struct Round {
    /// Successful operations, all clients together.
    pub(crate) ops: u64,
    /// Failed operations.
    pub(crate) errors: u64,
    /// From the common start until the last client's last operation ended.
    pub(crate) elapsed: Duration,
    /// The first error's message, if any.
    pub(crate) first_error: Option<String>,
}

impl Round {
    /// Operations per second.
    pub(crate) fn per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// Milliseconds per operation (one client: its latency).
    pub(crate) fn ms_per_op(&self) -> f64 {
        if self.ops == 0 { f64::INFINITY } else { self.elapsed.as_secs_f64() * 1000.0 / self.ops as f64 }
    }
}

/// The rounds of one variant.
pub(crate) struct Measured {
    /// Who ran it.
    pub(crate) role: Role,
    /// What it ran.
    pub(crate) does: &'static str,
    /// Its timed rounds (warm-up excluded).
    pub(crate) rounds: Vec<Round>,
}

impl Measured {
    /// The per-round values in the scenario's unit, sorted.
    pub(crate) fn values(&self, unit: Unit) -> Vec<f64> {
        let mut values: Vec<f64> = self
            .rounds
            .iter()
            .map(|r| match unit {
                Unit::Throughput => r.per_second(),
                Unit::Latency => r.ms_per_op(),
            })
            .collect();
        values.sort_by(f64::total_cmp);
        values
    }

    /// The median per-round value in the scenario's unit.
    pub(crate) fn median(&self, unit: Unit) -> f64 {
        median(&self.values(unit))
    }

    /// Failed operations over all rounds.
    pub(crate) fn errors(&self) -> u64 {
        self.rounds.iter().map(|r| r.errors).sum()
    }

    /// Successful operations over all rounds, warm-up excluded.
    pub(crate) fn ops(&self) -> u64 {
        self.rounds.iter().map(|r| r.ops).sum()
    }

    /// The first error of any round.
    pub(crate) fn first_error(&self) -> Option<&str> {
        self.rounds.iter().find_map(|r| r.first_error.as_deref())
    }
}

/// The median of sorted values (the mean of the middle two for an even count).
pub(crate) fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// A scenario's measurements: one entry per variant, in the scenario's order.
pub(crate) struct Outcome {
    /// The variants' rounds.
    pub(crate) measured: Vec<Measured>,
    /// Operations of the warm-up rounds, per variant (they count for final-value checks).
    pub(crate) warm_up_ops: Vec<u64>,
}

impl Outcome {
    /// The variant of `role`, if it ran.
    pub(crate) fn get(&self, role: Role) -> Option<&Measured> {
        self.measured.iter().find(|m| m.role == role)
    }
}

/// How long rounds last.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Timed rounds per variant.
    pub(crate) rounds: usize,
    /// Length of one round.
    pub(crate) round: Duration,
    /// Length of the untimed warm-up round of each variant.
    pub(crate) warm_up: Duration,
}

/// Runs `scenario`: a warm-up round per variant, then `timing.rounds` rounds per variant,
/// interleaved (round `r` starts with variant `r mod n`, every other round in reverse order, so no
/// variant always runs first or after the same one), on a
/// pool of exactly `clients` connections (each client holds one connection for the round).
pub(crate) async fn scenario(
    url: &str,
    scenario: &Scenario,
    ctx: &Arc<Ctx>,
    timing: Timing,
) -> Result<Outcome, BoxError> {
    let clients = scenario.clients;
    let pool = PgPoolOptions::new()
        .max_connections(clients as u32)
        .min_connections(clients as u32)
        .acquire_timeout(Duration::from_secs(60))
        .connect(url)
        .await?;
    let n = scenario.variants.len();
    let mut warm_up_ops = Vec::with_capacity(n);
    for variant in &scenario.variants {
        let warm = round(&pool, clients, variant.op, ctx, timing.warm_up, seed(usize::MAX)).await?;
        warm_up_ops.push(warm.ops);
    }
    let mut measured: Vec<Measured> = scenario
        .variants
        .iter()
        .map(|v| Measured { role: v.role, does: v.does, rounds: Vec::with_capacity(timing.rounds) })
        .collect();
    for r in 0..timing.rounds {
        for i in 0..n {
            // Round r starts with variant r mod n, and every other round runs backwards, so that no
            // variant always follows the same one (a write-heavy variant leaves dead rows and WAL
            // to its successor).
            let k = if r % 2 == 0 { (r + i) % n } else { (r + n - i) % n };
            let result = round(&pool, clients, scenario.variants[k].op, ctx, timing.round, seed(r)).await?;
            measured[k].rounds.push(result);
        }
    }
    pool.close().await;
    Ok(Outcome { measured, warm_up_ops })
}

/// A seed per round and variant: every variant sees the same sequence of entities in round `r`.
fn seed(round: usize) -> u64 {
    0x5EED_0000_0000_0000 ^ round as u64
}

/// One round: `clients` tasks, each on its own connection, start together and run `op` until
/// `duration` has passed (at least once each).
async fn round(
    pool: &PgPool,
    clients: usize,
    op: Op,
    ctx: &Arc<Ctx>,
    duration: Duration,
    seed: u64,
) -> Result<Round, BoxError> {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let mut conn = pool.acquire().await?;
        let (barrier, ctx) = (Arc::clone(&barrier), Arc::clone(ctx));
        tasks.push(tokio::spawn(async move {
            let mut worker = Worker::new(client, clients, seed, ctx);
            barrier.wait().await;
            let deadline = Instant::now() + duration;
            let (mut ops, mut errors, mut first_error) = (0u64, 0u64, None);
            loop {
                match op(&mut conn, &mut worker).await {
                    Ok(()) => ops += 1,
                    Err(err) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| err.to_string());
                    }
                }
                if Instant::now() >= deadline {
                    break;
                }
            }
            (ops, errors, first_error, Instant::now())
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut result = Round { ops: 0, errors: 0, elapsed: Duration::ZERO, first_error: None };
    for task in tasks {
        let (ops, errors, first_error, end) = task.await?;
        result.ops += ops;
        result.errors += errors;
        result.elapsed = result.elapsed.max(end.saturating_duration_since(start));
        if result.first_error.is_none() {
            result.first_error = first_error;
        }
    }
    Ok(result)
}

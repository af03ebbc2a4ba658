//! The reliability suite: scenarios that record every operation (acknowledged, failed or unknown)
//! in a history and check the stored rows against it (see `RELIABILITY.md` at the repository
//! root and `immu_tests::reliability`).
//!
//! Run: `cargo test --test reliability` (part of `cargo test --workspace`);
//! `IMMU_RELIABILITY_SCALE=10 cargo test --test reliability` multiplies the operation counts.
//! Uses `DATABASE_URL` if set (the crash scenario, which needs a server of its own, is then
//! skipped); otherwise starts a throwaway server, and stops it before exiting.

mod as_of;
mod commit;
mod concurrency;
mod crash;
mod faults;
mod feed;
mod input;
mod refusals;
mod transactions;

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use immu_tests::reliability::{self, Report};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// Any error a scenario's setup may hit; it makes the scenario fail.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a scenario runs against.
#[derive(Clone, Debug)]
pub(crate) struct Env {
    /// A pool of 16 connections on the scenario's fresh database.
    pub(crate) pool: PgPool,
    /// Connection options of that database.
    pub(crate) options: PgConnectOptions,
    /// The operation count multiplier (`IMMU_RELIABILITY_SCALE`).
    pub(crate) scale: u32,
    /// Whether the server is an external one (`DATABASE_URL`).
    pub(crate) external: bool,
}

impl Env {
    /// A new connection of its own.
    pub(crate) async fn connect(&self) -> sqlx::Result<PgConnection> {
        self.options.connect().await
    }

    /// A new pool of up to `max` connections.
    pub(crate) async fn pool(&self, max: u32) -> sqlx::Result<PgPool> {
        PgPoolOptions::new().max_connections(max).connect_with(self.options.clone()).await
    }

    /// `n` times the scale.
    pub(crate) fn scaled(&self, n: usize) -> usize {
        n * self.scale as usize
    }
}

/// The result of one scenario.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    /// What it checked, in a few words.
    pub(crate) checked: String,
    /// The history check, if the scenario recorded one.
    pub(crate) report: Option<Report>,
    /// Counts worth printing (`"412 conflicts"`).
    pub(crate) counts: Vec<String>,
    /// Expectations that did not hold: the scenario fails.
    pub(crate) failures: Vec<String>,
    /// Why the scenario did not run.
    pub(crate) skipped: Option<String>,
    /// Versions delivered by change feeds (the feed scenario).
    pub(crate) delivered: usize,
}

impl Verdict {
    pub(crate) fn new(checked: &str) -> Self {
        Verdict { checked: checked.to_owned(), ..Verdict::default() }
    }

    /// Records a failure unless `ok`.
    pub(crate) fn expect(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(what());
        }
    }

    pub(crate) fn fail(&mut self, what: impl Into<String>) {
        self.failures.push(what.into());
    }

    pub(crate) fn count(&mut self, what: impl Into<String>) {
        self.counts.push(what.into());
    }

    fn passed(&self) -> bool {
        self.failures.is_empty() && self.report.as_ref().is_none_or(Report::is_clean)
    }
}

type Run = fn(Env) -> Pin<Box<dyn Future<Output = Result<Verdict, BoxError>> + Send>>;

struct Scenario {
    name: &'static str,
    run: Run,
}

macro_rules! scenarios {
    ($($name:literal => $path:path),* $(,)?) => {
        vec![$(Scenario { name: $name, run: |env| Box::pin($path(env)) }),*]
    };
}

fn main() -> ExitCode {
    let started = Instant::now();
    // Panics are reported per scenario (or probe); one line each, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("reliability: caught a panic (its scenario reports it): {info}")
    }));
    let scale = reliability::scale();
    let scenarios = scenarios![
        "mixed" => concurrency::mixed,
        "hot-spot" => concurrency::hot_spot,
        "tx-read-committed" => transactions::read_committed,
        "tx-repeatable-read" => transactions::repeatable_read,
        "tx-serializable" => transactions::serializable,
        "as-of-stability" => as_of::stability,
        "killed-connection" => faults::killed_connection,
        "crash-restart" => crash::crash_and_restart,
        "lock-timeout" => faults::lock_timeout,
        "statement-timeout" => faults::statement_timeout,
        "raw-sql-refusals" => refusals::raw_sql,
        "bad-input" => input::bad_input,
        "cancelled-writes" => faults::cancelled_writes,
        "commit-time-cancels" => commit::commit_time_cancels,
        "feed" => feed::feed_under_faults,
    ];
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let scenarios: Vec<Scenario> = scenarios
        .into_iter()
        .filter(|s| filter.is_empty() || filter.iter().any(|f| s.name.contains(f.as_str())))
        .collect();

    let builder = immu_testdb::TempPostgres::builder()
        .setting("max_connections", "300")
        .setting("deadlock_timeout", "100ms");
    let server = match immu_testdb::TestDatabase::from_env_or(builder) {
        Ok(server) => server,
        Err(err) => {
            eprintln!("reliability: error: starting the test server: {err}");
            return ExitCode::FAILURE;
        }
    };
    let external = !server.is_temp();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "reliability: {} scenarios, scale {scale}, server {}",
        scenarios.len(),
        if external { "DATABASE_URL" } else { "throwaway" }
    );

    let admin: Result<PgConnectOptions, _> = server.url().parse();
    let mut total = Report::default();
    let (mut failed, mut ran, mut skipped, mut delivered) = (0, 0, 0, 0);
    match admin {
        Err(err) => {
            eprintln!("reliability: error: bad server URL: {err}");
            failed += 1;
        }
        Ok(admin) => {
            let count = scenarios.len();
            for (i, scenario) in scenarios.into_iter().enumerate() {
                let t0 = Instant::now();
                let verdict = runtime.block_on(run_one(&admin, i, &scenario, scale, external));
                let elapsed = t0.elapsed();
                let verdict = verdict.unwrap_or_else(|err| Verdict {
                    failures: vec![format!("setup error: {err}")],
                    ..Verdict::new("(did not run)")
                });
                if verdict.skipped.is_some() {
                    skipped += 1;
                } else {
                    ran += 1;
                    if !verdict.passed() {
                        failed += 1;
                    }
                }
                if let Some(report) = &verdict.report {
                    total.add(report);
                }
                delivered += verdict.delivered;
                print_verdict(i + 1, count, scenario.name, &verdict, elapsed);
            }
        }
    }
    drop(runtime);

    println!(
        "reliability: {ran} scenarios{}, {} acknowledged writes, {} lost, {} duplicate versions, {} gaps, \
         {} phantom, {} state violations, {} time reversals, {} wrong provenance, {} tamper alarms, {delivered} versions delivered by feeds; \
         {} in {:.1}s",
        if skipped > 0 { format!(" ({skipped} skipped)") } else { String::new() },
        total.acknowledged,
        total.lost,
        total.duplicate_versions,
        total.gaps,
        total.phantom + total.written_by_failed + total.duplicate_writes + total.mismatched,
        total.state_violations + total.torn_transactions + total.projection_mismatches,
        total.time_reversals,
        total.wrong_provenance,
        total.tamper_alarms,
        if failed == 0 { "PASS".to_owned() } else { format!("FAIL ({failed} failed)") },
        started.elapsed().as_secs_f64()
    );
    if let Err(err) = server.stop() {
        eprintln!("reliability: warning: stopping the test server: {err}");
    }
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// The most one scenario may take before it counts as hung (times the scale).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(180);

/// Creates a fresh migrated database, runs the scenario in a task of its own (a panic fails it,
/// the run goes on), drops the database.
async fn run_one(
    admin: &PgConnectOptions,
    index: usize,
    scenario: &Scenario,
    scale: u32,
    external: bool,
) -> Result<Verdict, BoxError> {
    let name = format!("immu_reliability_{}_{index}", std::process::id());
    let mut conn = admin.connect().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&mut conn)
        .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await?;
    let options = admin.clone().database(&name);
    let pool = PgPoolOptions::new().max_connections(16).connect_with(options.clone()).await?;
    immu_core::MIGRATOR.run(&pool).await?;
    immu_tests::MIGRATOR.run(&pool).await?;
    let env = Env { pool: pool.clone(), options, scale, external };

    let task = tokio::spawn((scenario.run)(env));
    let limit = SCENARIO_TIMEOUT * scale;
    let verdict = match tokio::time::timeout(limit, task).await {
        Ok(Ok(Ok(verdict))) => verdict,
        Ok(Ok(Err(err))) => Verdict { failures: vec![format!("error: {err}")], ..Verdict::new("(aborted)") },
        Ok(Err(join)) => {
            let message = join
                .try_into_panic()
                .ok()
                .and_then(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                })
                .unwrap_or_else(|| "cancelled".to_owned());
            Verdict { failures: vec![format!("panicked: {message}")], ..Verdict::new("(panicked)") }
        }
        Err(_) => Verdict {
            failures: vec![format!("did not finish within {}s", limit.as_secs())],
            ..Verdict::new("(hung)")
        },
    };
    pool.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(verdict)
}

fn print_verdict(n: usize, count: usize, name: &str, verdict: &Verdict, elapsed: Duration) {
    let status = if verdict.skipped.is_some() {
        "SKIP"
    } else if verdict.passed() {
        "PASS"
    } else {
        "FAIL"
    };
    let tally = verdict.report.as_ref().map_or(String::new(), |r| {
        format!(
            "{} ack / {} failed / {} unknown, {} violations; ",
            r.acknowledged,
            r.failed,
            r.unknown,
            r.violations()
        )
    });
    println!(
        "[{n:>2}/{count}] {name:<18} {status} {:>6.2}s  {tally}{}",
        elapsed.as_secs_f64(),
        verdict.checked
    );
    if let Some(reason) = &verdict.skipped {
        println!("        skipped: {reason}");
    }
    if let Some(report) = &verdict.report {
        println!("        history: {report}");
        for problem in &report.problems {
            println!("        VIOLATION: {problem}");
        }
    }
    if !verdict.counts.is_empty() {
        println!("        counts: {}", verdict.counts.join(", "));
    }
    for failure in &verdict.failures {
        println!("        FAILED: {failure}");
    }
}

/// Rows of `accounts` (all entities).
pub(crate) async fn account_rows(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM accounts").fetch_one(pool).await
}

/// Compares immu's own reads (history, current, current list) with the rows read by raw SQL;
/// every disagreement becomes a failure.
pub(crate) async fn reads_agree(pool: &PgPool, verdict: &mut Verdict) -> Result<(), BoxError> {
    use immu_core::Immutable;
    use immu_tests::models::Account;
    let rows = reliability::stored_rows(pool).await?;
    let mut entities: Vec<uuid::Uuid> = rows.iter().map(|r| r.entity_id).collect();
    entities.dedup();
    let mut live = Vec::new();
    for entity in &entities {
        let stored: Vec<_> = rows.iter().filter(|r| r.entity_id == *entity).collect();
        let history = Account::history(pool, *entity).await?;
        let same = history.len() == stored.len()
            && history.iter().zip(&stored).all(|(h, r)| {
                (h.id, h.version, h.valid_from, h.deleted_at, h.owner.as_str(), h.balance)
                    == (r.id, r.version, r.valid_from, r.deleted_at, r.owner.as_str(), r.balance)
            });
        verdict.expect(same, || format!("Account::history({entity}) differs from the stored rows"));
        let last = stored.last().expect("an entity has rows");
        match Account::find(pool, *entity).await {
            Ok(v) => verdict.expect(last.deleted_at.is_none() && v.id == last.id, || {
                format!(
                    "Account::find({entity}) returned version {}, stored latest is {}",
                    v.version, last.version
                )
            }),
            Err(immu_core::Error::Deleted { version, .. }) => {
                verdict.expect(last.deleted_at.is_some() && version == last.version, || {
                    format!(
                        "Account::find({entity}) says deleted at {version}, stored latest is {}",
                        last.version
                    )
                })
            }
            Err(err) => verdict.fail(format!("Account::find({entity}): {err}")),
        }
        if last.deleted_at.is_none() {
            live.push(last.id);
        }
    }
    let mut listed: Vec<_> = Account::query().fetch_all(pool).await?.into_iter().map(|v| v.id).collect();
    listed.sort_unstable();
    live.sort_unstable();
    verdict.expect(listed == live, || {
        format!(
            "Account::query() lists {} current versions, the stored rows have {} live entities",
            listed.len(),
            live.len()
        )
    });
    Ok(())
}

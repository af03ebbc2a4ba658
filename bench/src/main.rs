//! immu's benchmark: `cargo run --release -p immu-bench`.
//!
//! Starts a throwaway PostgreSQL (or uses `DATABASE_URL`), loads a data set of versioned accounts
//! (default 100k entities x 10 versions, 5% deleted) into immu's table, the same current data into
//! a plain mutable table (the floor) and the same history into a table versioned by the periods
//! extension (a peer), then times every scenario for each contender in alternating rounds and
//! writes the medians and ratios to BENCHMARKS.md (between its markers).
//!
//! ```text
//! cargo run --release -p immu-bench                           # full run, rewrites BENCHMARKS.md
//! cargo run --release -p immu-bench -- --quick --no-write     # CI: small data set, under 2 minutes
//! cargo run --release -p immu-bench -- --entities 20000 --versions 50 --rounds 7 --seconds 2
//! ```
//!
//! Timings are reported, never asserted. The run fails only when a contender returns wrong data
//! (the checks before measuring), an operation fails, or the hot entity's final value is not exact.

mod data;
mod feed;
mod ledger;
mod report;
mod run;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use immu_core::Immutable;
use immu_testdb::{TempPostgres, TestDatabase};

use crate::data::{Ctx, DATABASE, SERVER_SETTINGS};
use crate::report::{Hot, Report};
use crate::run::Timing;
use crate::scenarios::Role;

/// Any error of the benchmark.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The benchmark's entity: a bank account, as in the README.
#[derive(Debug, Clone, Immutable)]
#[immu(table = "accounts")]
pub(crate) struct Account {
    /// The owner's name.
    pub(crate) owner: String,
    /// The balance.
    pub(crate) balance: i64,
}

/// What to run, from the command line.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The small CI data set and short rounds.
    pub(crate) quick: bool,
    /// Whether to rewrite the report file.
    pub(crate) write: bool,
    /// The report file.
    pub(crate) output: PathBuf,
    /// Entities in the data set.
    pub(crate) entities: u64,
    /// Versions per entity.
    pub(crate) versions: u64,
    /// Round lengths and counts.
    pub(crate) timing: Timing,
    /// Whether to include EXPLAIN ANALYZE of the list shapes.
    pub(crate) explain: bool,
    /// Only these scenarios (by key, in this order; repeats allowed), if given.
    pub(crate) only: Option<Vec<String>>,
    /// The arguments as given.
    pub(crate) args: Vec<String>,
}

const USAGE: &str = "usage: cargo run --release -p immu-bench -- [options]

  --quick            small data set (5000 x 5) and short rounds, for CI (under 2 minutes);
                     does not write the report unless --output is given
  --entities N       entities in the data set (default 100000)
  --versions M       versions per entity, at least 2 (default 10)
  --rounds R         timed rounds per contender and scenario (default 5)
  --seconds S        length of one round in seconds (default 1; --quick: 0.12)
  --output PATH      report file (default: BENCHMARKS.md at the workspace root)
  --no-write         print the report only
  --no-explain       leave out the EXPLAIN ANALYZE of the list shapes
  --only K1,K2,...   run only these scenarios, in this order (keys: read-current, read-as-of,
                     list-filter, list-all, count-all, list-as-of, list-as-of-recent, history, insert, update-2,
                     update-8, hot)

Without DATABASE_URL a throwaway PostgreSQL is started and removed (as for the tests).";

impl Config {
    /// Parses the arguments; `Ok(None)` for `--help`.
    fn parse(args: Vec<String>) -> Result<Option<Config>, String> {
        let quick = args.iter().any(|a| a == "--quick");
        let mut config = Config {
            quick,
            write: !quick,
            output: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../BENCHMARKS.md")),
            entities: if quick { 5_000 } else { 100_000 },
            versions: if quick { 5 } else { 10 },
            timing: Timing { rounds: 5, round: Duration::from_secs(1), warm_up: Duration::from_millis(300) },
            explain: true,
            only: None,
            args: args.clone(),
        };
        let mut seconds = if quick { 0.12 } else { 1.0 };
        let mut no_write = false;
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
            match arg.as_str() {
                "--quick" => {}
                "--help" | "-h" => return Ok(None),
                "--no-write" => no_write = true,
                "--no-explain" => config.explain = false,
                "--only" => config.only = Some(value("--only")?.split(',').map(str::to_owned).collect()),
                "--output" => {
                    config.output = PathBuf::from(value("--output")?);
                    config.write = true;
                }
                "--entities" => config.entities = number(&value("--entities")?)?,
                "--versions" => config.versions = number(&value("--versions")?)?,
                "--rounds" => config.timing.rounds = number(&value("--rounds")?)? as usize,
                "--seconds" => {
                    let v = value("--seconds")?;
                    seconds = v.parse().map_err(|_| format!("--seconds: not a number: {v}"))?;
                }
                other => return Err(format!("unknown argument: {other}")),
            }
        }
        if no_write {
            config.write = false;
        }
        if config.versions < 2 || config.versions > 99_999 {
            return Err("--versions must be between 2 and 99999".into());
        }
        if config.entities < 100 {
            return Err("--entities must be at least 100".into());
        }
        if config.timing.rounds == 0 || !(seconds > 0.0 && seconds < 3600.0) {
            return Err("--rounds and --seconds must be positive".into());
        }
        config.timing.round = Duration::from_secs_f64(seconds);
        config.timing.warm_up = Duration::from_secs_f64((seconds / 3.0).max(0.05));
        Ok(Some(config))
    }

    /// The command that reproduces this run.
    pub(crate) fn command(&self) -> String {
        let mut command = String::from("cargo run --release -p immu-bench");
        if !self.args.is_empty() {
            command.push_str(" -- ");
            command.push_str(&self.args.join(" "));
        }
        command
    }
}

fn number(value: &str) -> Result<u64, String> {
    value.replace('_', "").parse().map_err(|_| format!("not a number: {value}"))
}

fn main() -> ExitCode {
    let config = match Config::parse(std::env::args().skip(1).collect()) {
        Ok(Some(config)) => config,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("error: {err}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut builder = TempPostgres::builder().fsync(true);
    for (name, value) in SERVER_SETTINGS {
        builder = builder.setting(name, value);
    }
    let server = match TestDatabase::from_env_or(builder) {
        Ok(server) => server,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(bench(&config, &server));
    drop(runtime);
    if let Err(err) = server.stop() {
        eprintln!("warning: stopping the throwaway server: {err}");
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The whole run: load, checks, storage, memory, plans, scenarios, report.
async fn bench(config: &Config, server: &TestDatabase) -> Result<(), BoxError> {
    let started = chrono::Utc::now();
    let clock = Instant::now();
    let setup = data::prepare(server.url(), server.url_for(DATABASE), config).await?;
    eprintln!("loaded {} version rows in {:.1} s", setup.version_rows, setup.load_time.as_secs_f64());
    if let Err(why) = &setup.periods {
        eprintln!("note: periods skipped: {why}");
    }
    let storage = data::storage(&setup).await?;
    let checks = data::checks(&setup).await?;
    let memory = {
        let mut conn = setup.pool.acquire().await?;
        scenarios::memory(&mut conn).await?
    };
    let verification = ledger::verification(&setup.pool).await?;
    eprintln!(
        "verified {} versions in {:.2} s ({:.0}/s), digest in {:.2} s",
        verification.versions,
        verification.elapsed.as_secs_f64(),
        verification.per_second(),
        verification.digest.as_secs_f64()
    );
    let plans = if config.explain { report::explain(&setup).await } else { Vec::new() };
    let ctx = Arc::new(Ctx::load(&setup).await?);

    let mut results = Vec::new();
    let mut failures = Vec::new();
    for scenario in scenarios::select(setup.periods.is_ok(), config.only.as_deref())? {
        let outcome = run::scenario(&setup.url, &scenario, &ctx, config.timing).await?;
        let line: Vec<String> = outcome
            .measured
            .iter()
            .map(|m| {
                let value = m.median(scenario.unit);
                match scenario.unit {
                    scenarios::Unit::Throughput => format!("{} {value:.0} ops/s", m.role.name()),
                    scenarios::Unit::Latency => format!("{} {value:.3} ms", m.role.name()),
                }
            })
            .collect();
        eprintln!("{:<12} {}", scenario.key, line.join(", "));
        for measured in &outcome.measured {
            if measured.errors() > 0 {
                failures.push(format!(
                    "{}, {}: {} failed calls, first: {}",
                    scenario.title,
                    measured.role.name(),
                    measured.errors(),
                    measured.first_error().unwrap_or("?")
                ));
            }
        }
        results.push((scenario, outcome));
    }

    let hash_cost = ledger::hash_cost(server, config.quick).await?;
    eprintln!(
        "hash chain: insert {:.0} -> {:.0} µs, update {:.0} -> {:.0} µs per version",
        hash_cost.insert_us.0, hash_cost.insert_us.1, hash_cost.update_us.0, hash_cost.update_us.1
    );
    let (library_balance, library_version, plain_balance) = data::hot_values(&setup.pool, ctx.hot).await?;
    let hot = Hot {
        library_balance,
        library_version,
        plain_balance,
        library_ops: report::hot_ops(&results, Role::Library) + report::hot_ops(&results, Role::LibraryPatch),
        plain_ops: report::hot_ops(&results, Role::Floor),
    };
    if !hot.exact() {
        failures.push(format!(
            "hot entity: library balance {library_balance} (version {library_version}) after {} calls, plain \
             balance {plain_balance} after {} calls",
            hot.library_ops, hot.plain_ops
        ));
    }
    let feed = feed::latency(&setup, &ctx, config).await?;
    eprintln!("{}", feed.line());
    let report = Report {
        config,
        setup: &setup,
        storage: &storage,
        checks: &checks,
        memory: &memory,
        hash_cost: &hash_cost,
        verification: &verification,
        plans: &plans,
        results: &results,
        hot: &hot,
        feed: &feed,
        started,
        seconds: clock.elapsed().as_secs_f64(),
    };
    let markdown = report.render();
    println!("{markdown}");
    if config.write {
        report::write(&config.output, &markdown)?;
        eprintln!("wrote {}", config.output.display());
    }
    setup.pool.close().await;
    if !server.is_temp() {
        data::drop_database(server.url()).await?;
    }
    if failures.is_empty() { Ok(()) } else { Err(failures.join("\n").into()) }
}

//! Integration tests against a real PostgreSQL server: a throwaway one started for the run
//! (from the locally installed binaries, as the `postgres` user when run as root) unless
//! `DATABASE_URL` is set. Every test gets a fresh database with immu's and the test tables'
//! migrations applied.
//!
//! Run: `cargo test --workspace` (all tests) or `cargo test --test db -- <filter>`.

mod associations;
mod audit;
mod concurrency;
mod demo;
mod drift;
mod evolution;
mod feed;
mod feed_review;
mod import;
mod joins;
mod ledger;
mod ledger_attacks;
mod queries;
mod raw_sql;
mod reads;
mod schema;
mod security;
mod sqlx_cli;
mod upgrade;
mod writes;

fn main() -> std::process::ExitCode {
    immu_tests::harness::main(
        [
            writes::tests(),
            reads::tests(),
            raw_sql::tests(),
            schema::tests(),
            concurrency::tests(),
            demo::tests(),
            queries::tests(),
            associations::tests(),
            joins::tests(),
            upgrade::tests(),
            security::tests(),
            evolution::tests(),
            drift::tests(),
            import::tests(),
            sqlx_cli::tests(),
            audit::tests(),
            feed::tests(),
            feed_review::tests(),
            ledger::tests(),
            ledger_attacks::tests(),
        ]
        .into_iter()
        .flatten()
        .collect(),
    )
}

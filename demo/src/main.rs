//! immu's demo: `cargo run -p immu-demo`.
//!
//! Starts a throwaway PostgreSQL (unless `DATABASE_URL` is set), creates an account, changes it,
//! reads it as of an earlier instant, lists its history, deletes and undeletes it, and shows the
//! database refusing a raw `UPDATE`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // The server lives in `main` so that it is stopped and removed when the demo ends.
    let server = match immu_testdb::TestDatabase::from_env() {
        Ok(server) => server,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    match &server {
        immu_testdb::TestDatabase::Temp(pg) => {
            println!("Started a throwaway PostgreSQL at {} (removed when the demo ends).", pg.url())
        }
        _ => println!("Using the database at DATABASE_URL."),
    }
    let url = server.url().to_owned();
    let outcome = run(&url).await;
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

async fn run(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let pool = sqlx::PgPool::connect(url).await?;
    immu_demo::run(&pool, &mut std::io::stdout()).await?;
    pool.close().await;
    Ok(())
}

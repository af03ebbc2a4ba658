//! immu's demo: `cargo run -p immu-demo`.
//!
//! Starts a throwaway PostgreSQL (unless `DATABASE_URL` is set), creates an account, changes it,
//! reads it as of an earlier instant, lists its history, deletes and undeletes it, and shows the
//! database refusing a raw `UPDATE`.

use std::process::ExitCode;
use std::time::Duration;

use immu_core::{Error, Immutable, Versioned};
use immu_demo::Account;
use sqlx::PgPool;

#[tokio::main]
async fn main() -> ExitCode {
    // The server lives in `main` so that it is stopped and removed when the demo ends.
    let (server, url) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            println!("Using the database at DATABASE_URL.");
            (None, url)
        }
        _ => match immu_testdb::TempPostgres::start() {
            Ok(pg) => {
                println!(
                    "Started a throwaway PostgreSQL at {} (removed when the demo ends).",
                    pg.url()
                );
                let url = pg.url().to_owned();
                (Some(pg), url)
            }
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::FAILURE;
            }
        },
    };
    let outcome = run(&url).await;
    if let Some(pg) = server
        && let Err(err) = pg.stop()
    {
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
    let pool = PgPool::connect(url).await?;
    immu_core::MIGRATOR.run(&pool).await?;
    immu_demo::MIGRATOR.run(&pool).await?;
    println!("Migrated: immu's trigger function and the versioned table \"accounts\".\n");

    section("1. Create an account, then change it twice: every change appends a version");
    let v1 = Account::insert(
        &pool,
        Account {
            owner: "Ada".into(),
            balance: 10_000,
        },
    )
    .await?;
    show("insert", &v1);
    pause().await;
    let v2 = Account::modify(&pool, v1.entity_id, |a| a.balance += 5_000).await?;
    show("deposit 50.00", &v2);
    pause().await;
    let v3 = Account::modify(&pool, v1.entity_id, |a| a.balance -= 3_000).await?;
    show("withdraw 30.00", &v3);

    section("2. Read the account as it was at an earlier instant");
    let current = Account::find(&pool, v1.entity_id).await?;
    println!(
        "  current:                    version {}  balance {}",
        current.version,
        money(current.balance)
    );
    let then = Account::find_as_of(&pool, v1.entity_id, v2.valid_from).await?;
    println!(
        "  as of {}: version {}  balance {}",
        then.valid_from.format("%H:%M:%S%.6f"),
        then.version,
        money(then.balance)
    );
    let before = Account::find_as_of(&pool, v1.entity_id, v1.valid_from - chrono::Duration::seconds(1)).await;
    println!(
        "  as of one second before it was created: {}",
        describe(before.map(|_| ()))
    );

    section("3. Optimistic concurrency: a write based on a stale version is refused");
    let stale = Account::update_if_version(
        &pool,
        v1.entity_id,
        2,
        Account {
            owner: "Ada".into(),
            balance: 0,
        },
    )
    .await;
    println!("  update expecting version 2: {}", describe(stale.map(|_| ())));

    section("4. Delete, then undelete: both append a version; nothing is erased");
    let tomb = Account::delete(&pool, v1.entity_id).await?;
    show("delete", &tomb);
    println!(
        "  find after delete: {}",
        describe(Account::find(&pool, v1.entity_id).await.map(|_| ()))
    );
    pause().await;
    let back = Account::undelete(&pool, v1.entity_id).await?;
    show("undelete", &back);

    section("5. The full history, oldest first");
    println!(
        "  {:<7} {:<26} {:<8} {:>10}",
        "version", "valid_from", "deleted", "balance"
    );
    for v in Account::history(&pool, v1.entity_id).await? {
        println!(
            "  {:<7} {:<26} {:<8} {:>10}",
            v.version,
            v.valid_from.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
            if v.is_deleted() { "yes" } else { "" },
            money(v.balance)
        );
    }

    section("6. The database itself refuses to change history");
    for sql in [
        "UPDATE accounts SET balance = 1000000 WHERE owner = 'Ada'",
        "DELETE FROM accounts",
        "TRUNCATE accounts",
    ] {
        println!("  > {sql}");
        match sqlx::raw_sql(sql).execute(&pool).await {
            Ok(_) => return Err(format!("{sql:?} was not refused").into()),
            Err(err) => {
                let message = err
                    .as_database_error()
                    .map(|e| e.message().to_owned())
                    .unwrap_or_default();
                println!("    ERROR: {message}");
                println!("    as immu_core::Error: {:?}", Error::from(err));
            }
        }
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts")
        .fetch_one(&pool)
        .await?;
    println!("  rows in accounts afterwards: {rows} (all versions kept)");
    pool.close().await;
    println!("\nDone.");
    Ok(())
}

fn section(title: &str) {
    println!("\n== {title}");
}

fn show(what: &str, v: &Versioned<Account>) {
    println!(
        "  {what:<15} -> version {}  valid_from {}  {:<10} balance {}{}",
        v.version,
        v.valid_from.format("%H:%M:%S%.6f"),
        v.owner,
        money(v.balance),
        if v.is_deleted() { "  (tombstone)" } else { "" }
    );
}

fn describe(result: Result<(), Error>) -> String {
    match result {
        Ok(()) => "ok".to_owned(),
        Err(err) => format!("Err({}) — {err}", variant(&err)),
    }
}

fn variant(err: &Error) -> &'static str {
    match err {
        Error::NotFound { .. } => "NotFound",
        Error::Deleted { .. } => "Deleted",
        Error::NotDeleted { .. } => "NotDeleted",
        Error::VersionConflict { .. } => "VersionConflict",
        Error::AppendOnly { .. } => "AppendOnly",
        _ => "Error",
    }
}

fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, (cents % 100).abs())
}

/// A short pause so that the versions' timestamps are visibly apart.
async fn pause() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

//! immu's demo: its entity type, its migrations (checked by the test suite against the DDL the
//! derive generates) and the story it tells, which the test suite also runs end to end.

use std::io::Write;
use std::time::Duration;

use immu_core::{Error, Immutable, Versioned};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

/// A bank account.
#[derive(Debug, Clone, PartialEq, Eq, Immutable, Serialize, Deserialize)]
#[immu(table = "accounts")]
pub struct Account {
    /// Who owns it.
    pub owner: String,
    /// Balance in cents.
    pub balance: i64,
}

/// `writeln!` that ignores write errors (a closed stdout must not abort the story).
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {
        let _ = writeln!($out, $($arg)*);
    };
}

/// The demo's migrations (`demo/migrations/`), run after [`immu_core::MIGRATOR`].
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Runs the demo on an empty database: migrates it, then tells the story to `out`.
pub async fn run<W: Write + Send>(pool: &PgPool, out: &mut W) -> Result<(), Box<dyn std::error::Error>> {
    let pool = pool.clone();
    immu_core::MIGRATOR.run(&pool).await?;
    MIGRATOR.run(&pool).await?;
    say!(out, "Migrated: immu's trigger function and the versioned table \"accounts\".\n");

    section(out, "1. Create an account, then change it twice: every change appends a version");
    let v1 = Account::insert(&pool, Account { owner: "Ada".into(), balance: 10_000 }).await?;
    show(out, "insert", &v1);
    pause().await;
    let v2 = Account::modify(&pool, v1.entity_id, |a| a.balance += 5_000).await?;
    show(out, "deposit 50.00", &v2);
    pause().await;
    let v3 = Account::modify(&pool, v1.entity_id, |a| a.balance -= 3_000).await?;
    show(out, "withdraw 30.00", &v3);

    section(out, "2. Read the account as it was at an earlier instant");
    let current = Account::find(&pool, v1.entity_id).await?;
    say!(
        out,
        "  current:                    version {}  balance {}",
        current.version,
        money(current.balance)
    );
    let then = Account::find_as_of(&pool, v1.entity_id, v2.valid_from).await?;
    say!(
        out,
        "  as of {}: version {}  balance {}",
        then.valid_from.format("%H:%M:%S%.6f"),
        then.version,
        money(then.balance)
    );
    let before = Account::find_as_of(&pool, v1.entity_id, v1.valid_from - chrono::Duration::seconds(1)).await;
    say!(out, "  as of one second before it was created: {}", describe(before.map(|_| ())));

    section(out, "3. Optimistic concurrency: a write based on a stale version is refused");
    let stale =
        Account::update_if_version(&pool, v1.entity_id, 2, Account { owner: "Ada".into(), balance: 0 }).await;
    say!(out, "  update expecting version 2: {}", describe(stale.map(|_| ())));

    section(out, "4. Delete, then undelete: both append a version; nothing is erased");
    let tomb = Account::delete(&pool, v1.entity_id).await?;
    show(out, "delete", &tomb);
    say!(out, "  find after delete: {}", describe(Account::find(&pool, v1.entity_id).await.map(|_| ())));
    pause().await;
    let back = Account::undelete(&pool, v1.entity_id).await?;
    show(out, "undelete", &back);

    section(out, "5. The full history, oldest first");
    say!(out, "  {:<7} {:<26} {:<8} {:>10}", "version", "valid_from", "deleted", "balance");
    for v in Account::history(&pool, v1.entity_id).await? {
        say!(
            out,
            "  {:<7} {:<26} {:<8} {:>10}",
            v.version,
            v.valid_from.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
            if v.is_deleted() { "yes" } else { "" },
            money(v.balance)
        );
    }

    section(out, "6. The database itself refuses to change history");
    for sql in [
        "UPDATE accounts SET balance = 1000000 WHERE owner = 'Ada'",
        "DELETE FROM accounts",
        "TRUNCATE accounts",
    ] {
        say!(out, "  > {sql}");
        match sqlx::raw_sql(sql).execute(&pool).await {
            Ok(_) => return Err(format!("{sql:?} was not refused").into()),
            Err(err) => {
                let message = err.as_database_error().map(|e| e.message().to_owned()).unwrap_or_default();
                say!(out, "    ERROR: {message}");
                say!(out, "    as immu_core::Error: {:?}", Error::from(err));
            }
        }
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts").fetch_one(&pool).await?;
    say!(out, "  rows in accounts afterwards: {rows} (all versions kept)");
    say!(out, "\nDone.");
    Ok(())
}

fn section(out: &mut impl Write, title: &str) {
    say!(out, "\n== {title}");
}

fn show(out: &mut impl Write, what: &str, v: &Versioned<Account>) {
    say!(
        out,
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

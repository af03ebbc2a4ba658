//! immu's demo: a small ledger (customers, accounts, transfers, advisors) that shows versions,
//! as-of reads and lists, a join as of a past instant, history, delete/undelete, optimistic
//! concurrency, the database refusing an `UPDATE`, an entity changing shape between two
//! releases of the app, and the audit trail: a request that sets its actor once, a partial
//! update, a no-op write, diffs with who and why, and a revert; then a live change feed of transfers,
//! resumed from a stored cursor.
//!
//! The test suite runs [`run`] end to end and checks the migrations in `demo/migrations/`
//! against the DDL the derive generates.

use std::io::Write;

use chrono::{DateTime, Utc};
use immu_core::sea_query::{Expr, ExprTrait, Order};
use immu_core::{Audit, Change, Cursor, Error, Immutable, Snapshot, Versioned};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

/// A customer of the bank.
#[derive(Debug, Clone, PartialEq, Eq, Immutable, Serialize, Deserialize)]
#[immu(table = "customers")]
pub struct Customer {
    /// Name.
    pub name: String,
    /// City of residence.
    pub city: String,
}

/// A bank account, owned by a customer.
#[derive(Debug, Clone, PartialEq, Eq, Immutable, Serialize, Deserialize)]
#[immu(table = "accounts")]
pub struct Account {
    /// The owner (a customer's `entity_id`, with a foreign key).
    #[immu(references = Customer)]
    pub owner_id: Uuid,
    /// What the account is called.
    pub label: String,
    /// Balance in cents.
    pub balance: i64,
}

/// A transfer between two accounts: written once, never changed.
#[derive(Debug, Clone, PartialEq, Eq, Immutable, Serialize, Deserialize)]
#[immu(table = "transfers")]
pub struct Transfer {
    /// Debited account.
    #[immu(references = Account)]
    pub from_account: Uuid,
    /// Credited account.
    #[immu(references = Account)]
    pub to_account: Uuid,
    /// Amount in cents.
    pub amount: i64,
}

/// A customer's advisor, as the first release of the app stored it: one `name` (shape 1).
#[derive(Debug, Clone, PartialEq, Eq, Immutable, Serialize, Deserialize)]
#[immu(table = "advisors")]
pub struct AdvisorV1 {
    /// Full name.
    pub name: String,
    /// The advised customer.
    #[immu(references = Customer)]
    pub customer_id: Uuid,
}

/// A customer's advisor since the second release: the name split in two (shape 2). Versions
/// written by the first release are read as [`AdvisorV1`] and converted.
#[derive(Debug, Clone, PartialEq, Eq, Immutable, Serialize, Deserialize)]
#[immu(table = "advisors", shape = 2, upcast = AdvisorV1)]
pub struct Advisor {
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// The advised customer.
    #[immu(references = Customer)]
    pub customer_id: Uuid,
}

impl From<AdvisorV1> for Advisor {
    fn from(old: AdvisorV1) -> Advisor {
        let (first, last) = old.name.rsplit_once(' ').unwrap_or(("", &old.name));
        Advisor { first_name: first.to_owned(), last_name: last.to_owned(), customer_id: old.customer_id }
    }
}

/// The last migration of the demo app's first release; the story applies the second release's
/// (`20261201000500_advisors_split_name.sql`) halfway.
pub const FIRST_RELEASE: i64 = 20261123000400;

/// The demo's migrations (`demo/migrations/`), run after [`immu_core::MIGRATOR`].
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// `writeln!` that ignores write errors (a closed stdout must not abort the story).
macro_rules! say {
    ($out:expr) => {
        let _ = writeln!($out);
    };
    ($out:expr, $($arg:tt)*) => {
        let _ = writeln!($out, $($arg)*);
    };
}

/// Moves `amount` cents between two accounts: both balances and the transfer record change in one
/// transaction, each account under its entity lock (read-modify-write: no lost update).
pub async fn transfer(
    pool: &PgPool,
    from: Uuid,
    to: Uuid,
    amount: i64,
) -> Result<Versioned<Transfer>, Error> {
    let mut tx = pool.begin().await?;
    Account::modify(&mut tx, from, |a| a.balance -= amount).await?;
    Account::modify(&mut tx, to, |a| a.balance += amount).await?;
    let record = Transfer::insert(&mut tx, Transfer { from_account: from, to_account: to, amount }).await?;
    tx.commit().await?;
    Ok(record)
}

/// Runs the demo on an empty database: migrates it, then tells the story to `out`.
pub async fn run<W: Write + Send>(pool: &PgPool, out: &mut W) -> Result<(), Box<dyn std::error::Error>> {
    immu_core::MIGRATOR.run(pool).await?;
    MIGRATOR.run_to(FIRST_RELEASE, pool).await?;
    immu_core::schema::check::<Customer>(pool).await?;
    immu_core::schema::check::<Account>(pool).await?;
    immu_core::schema::check::<Transfer>(pool).await?;
    immu_core::schema::check::<AdvisorV1>(pool).await?;
    say!(out, "Migrated: immu's schema, then the versioned tables customers, accounts, transfers, advisors.");

    section(out, "1. Open the ledger: every insert is version 1 of a new entity");
    let ada = Customer::insert(pool, Customer { name: "Ada".into(), city: "London".into() }).await?;
    let bob = Customer::insert(pool, Customer { name: "Bob".into(), city: "Paris".into() }).await?;
    let checking = open(pool, &ada, "Ada checking", dollars(100)).await?;
    let savings = open(pool, &ada, "Ada savings", dollars(500)).await?;
    let bobs = open(pool, &bob, "Bob checking", dollars(50)).await?;
    for a in [&checking, &savings, &bobs] {
        show(out, "opened", a);
    }
    let quarter_end = Snapshot::now(pool).await?;
    say!(out, "  -- quarter end: {} --", time(quarter_end.instant()));

    section(out, "2. Changes append versions: two transfers and a move");
    transfer(pool, checking.entity_id, bobs.entity_id, dollars(30)).await?;
    say!(out, "  transfer 30.00 from Ada checking to Bob checking");
    transfer(pool, savings.entity_id, checking.entity_id, dollars(200)).await?;
    say!(out, "  transfer 200.00 from Ada savings to Ada checking");
    Customer::modify(pool, bob.entity_id, |c| c.city = "Berlin".into()).await?;
    say!(out, "  Bob moves to Berlin");

    section(out, "3. Lists with a filter, now and as of the quarter end (filters see the resolved version)");
    let rich = || Account::BALANCE.gt(dollars(100));
    let now = Account::query().filter(rich()).order_by(Account::LABEL, Order::Asc).fetch_all(pool).await?;
    say!(out, "  balance > 100.00 now:            {}", labels(&now));
    let then = quarter_end
        .query::<Account>()
        .filter(rich())
        .order_by(Account::LABEL, Order::Asc)
        .fetch_all(pool)
        .await?;
    say!(out, "  balance > 100.00 at quarter end: {}", labels(&then));

    section(out, "4. A join as of the quarter end: accounts with their owners as they were then");
    for (when, snapshot) in [("quarter end", quarter_end), ("now", Snapshot::now(pool).await?)] {
        let rows = snapshot
            .query::<Account>()
            .join::<Customer>(Account::OWNER_ID)
            .order_by(Account::LABEL, Order::Asc)
            .fetch_all(pool)
            .await?;
        say!(out, "  {when}:");
        for (account, owner) in rows {
            say!(
                out,
                "    {:<13} {:>8}  owner {} ({})",
                account.label,
                money(account.balance),
                owner.name,
                owner.city
            );
        }
    }

    section(out, "5. The history of one account, oldest first");
    say!(out, "  {:<7} {:<15} {:<8} {:>9}", "version", "valid_from", "deleted", "balance");
    for v in Account::history(pool, checking.entity_id).await? {
        say!(
            out,
            "  {:<7} {:<15} {:<8} {:>9}",
            v.version,
            time(v.valid_from),
            yes(v.is_deleted()),
            money(v.balance)
        );
    }
    let changes = Account::query()
        .all_versions()
        .changed_between(quarter_end.instant(), Utc::now())
        .count(pool)
        .await?;
    say!(out, "  account versions written since the quarter end: {changes}");

    section(out, "6. Each transfer with its source account as it was at that moment (one query)");
    let transfers = Transfer::query().order_by(Transfer::VALID_FROM, Order::Asc).fetch_all(pool).await?;
    let sources =
        Account::find_each_as_of(pool, transfers.iter().map(|t| (t.from_account, t.valid_from))).await?;
    for (t, source) in transfers.iter().zip(&sources) {
        let source = source.as_ref().map(|a| format!("{} (balance then {})", a.label, money(a.balance)));
        say!(out, "  {} at {}: from {}", money(t.amount), time(t.valid_from), source.unwrap_or_default());
    }

    section(out, "7. Close and reopen an account: delete and undelete append versions");
    let closed = Account::delete(pool, bobs.entity_id).await?;
    show(out, "deleted", &closed);
    say!(out, "  find now: {}", describe(Account::find(pool, bobs.entity_id).await.map(|_| ())));
    say!(
        out,
        "  live accounts: {}",
        labels(&Account::query().order_by(Account::LABEL, Order::Asc).fetch_all(pool).await?)
    );
    let reopened = Account::undelete(pool, bobs.entity_id).await?;
    show(out, "undeleted", &reopened);

    section(out, "8. Optimistic concurrency: a write based on a stale version is refused");
    let stale = Account::find_version(pool, checking.entity_id, 1).await?;
    say!(out, "  save of version 1 after later changes: {}", describe(stale.save(pool).await.map(|_| ())));

    section(out, "9. The database itself refuses to change history");
    for sql in [
        "UPDATE accounts SET balance = 1000000 WHERE label = 'Bob checking'",
        "DELETE FROM accounts",
        "TRUNCATE accounts",
        // The projection current reads use is kept by the history's trigger, and by nothing else.
        "UPDATE accounts_current SET balance = 1000000 WHERE label = 'Bob checking'",
    ] {
        say!(out, "  > {sql}");
        match sqlx::raw_sql(sql).execute(pool).await {
            Ok(_) => return Err(format!("{sql:?} was not refused").into()),
            Err(err) => {
                let message = err.as_database_error().map(|e| e.message().to_owned()).unwrap_or_default();
                say!(out, "    ERROR: {message}");
                say!(out, "    as immu_core::Error: {:?}", Error::from(err));
            }
        }
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts").fetch_one(pool).await?;
    say!(out, "  rows in accounts afterwards: {rows} (every version kept)");

    section(out, "10. The app changes shape: an advisor's name is split in two");
    let advisor =
        AdvisorV1::insert(pool, AdvisorV1 { name: "Grace Hopper".into(), customer_id: ada.entity_id })
            .await?;
    AdvisorV1::modify(pool, advisor.entity_id, |a| a.name = "Grace B. Hopper".into()).await?;
    say!(out, "  first release: advisor {:?}, 2 versions", "Grace B. Hopper");
    // The second release's struct against the first release's table: the check says what to do.
    if let Err(Error::SchemaDrift { differences, .. }) = immu_core::schema::check::<Advisor>(pool).await {
        say!(out, "  check of the new struct before its migration:");
        for d in &differences {
            say!(out, "    {}", d.description);
        }
    }
    MIGRATOR.run(pool).await?;
    immu_core::schema::check::<Advisor>(pool).await?;
    say!(out, "  migrated (ALTER TABLE advisors ... ; SELECT immu.sync_versioning('advisors')); check: ok");
    let moved = Advisor::modify(pool, advisor.entity_id, |a| a.customer_id = bob.entity_id).await?;
    say!(out, "  {:<7} {:<6} {:<12} {:<10}", "version", "shape", "first_name", "last_name");
    for v in Advisor::history(pool, moved.entity_id).await? {
        let shape: i32 = sqlx::query_scalar("SELECT immu_shape FROM advisors WHERE id = $1")
            .bind(v.id)
            .fetch_one(pool)
            .await?;
        say!(out, "  {:<7} {:<6} {:<12} {:<10}", v.version, shape, v.first_name, v.last_name);
    }
    say!(out, "  (versions of shape 1 stay as written, and are converted on read)");

    section(
        out,
        "11. Who and why: a request sets its actor once; a partial update, a no-op, diffs, a revert",
    );
    let before_fee = Snapshot::now(pool).await?;
    // What a web handler's middleware does once per request: every write inside records it.
    let request = Audit::actor("teller:eve").with_context(serde_json::json!({ "request_id": "req-7" }));
    let (fee, same) = request
        .scope(async {
            // balance = balance - 5.00, computed by the database under the account's lock.
            let fee = Audit::reason("monthly fee")
                .scope(
                    Account::patch(pool, checking.entity_id)
                        .set(Account::BALANCE, Expr::col(Account::BALANCE).sub(dollars(5))),
                )
                .await?;
            // Saving what is already there appends nothing, and says so.
            let same = Account::update(pool, checking.entity_id, fee.data.clone()).await?;
            Ok::<_, Error>((fee, same))
        })
        .await?;
    say!(out, "  patch balance = balance - 5.00: version {}, balance {}", fee.version, money(fee.balance));
    say!(
        out,
        "  update with the same data: appended {} (still version {})",
        same.is_appended(),
        same.version
    );
    let refund = Audit::actor("supervisor:sam")
        .with_reason("fee charged in error")
        .scope(Account::revert_as_of(pool, checking.entity_id, before_fee.instant()))
        .await?;
    say!(
        out,
        "  revert to the version before the fee: version {}, balance {}",
        refund.version,
        money(refund.balance)
    );
    say!(
        out,
        "  {:<7} {:<10} {:<15} {:<20} {:<13} changes",
        "version",
        "change",
        "actor",
        "reason",
        "db user"
    );
    for (v, diff) in Account::history_with_diffs(pool, checking.entity_id).await? {
        let change = match diff.change {
            Some(Change::Reverted { to }) => format!("revert {to}"),
            Some(other) => format!("{other:?}").to_lowercase(),
            None => String::new(),
        };
        let fields: Vec<String> =
            diff.fields.iter().map(|f| format!("{} {} -> {}", f.column, f.from, f.to)).collect();
        say!(
            out,
            "  {:<7} {:<10} {:<15} {:<20} {:<13} {}",
            v.version,
            change,
            v.provenance.actor.as_deref().unwrap_or("-"),
            v.provenance.reason.as_deref().unwrap_or("-"),
            v.provenance.db_user.as_deref().unwrap_or("-"),
            fields.join(", ")
        );
    }
    let by_eve = Account::query().all_versions().by_actor("teller:eve").count(pool).await?;
    say!(out, "  account versions written by teller:eve: {by_eve}");

    section(out, "12. Proving history: hash chains, a digest kept elsewhere, and a tamperer caught");
    prove_history(pool, out, savings.entity_id).await?;

    section(out, "13. Following changes: a live feed of transfers, resumed from a stored cursor");
    follow_transfers(pool, out, [&checking, &savings, &bobs]).await?;
    say!(out, "\nDone.");
    Ok(())
}

/// Section 12: verify the ledger, keep a digest, tamper with a stored version as the table's owner
/// (triggers disabled, as a superuser could too), and verify again.
async fn prove_history<W: Write + Send>(
    pool: &PgPool,
    out: &mut W,
    savings: Uuid,
) -> Result<(), Box<dyn std::error::Error>> {
    let report = Account::verify(pool).await?;
    say!(out, "  verify: {report}");
    let digest = Account::digest(pool).await?;
    say!(
        out,
        "  digest kept outside the database: {} versions of {} entities, root {}..",
        digest.versions,
        digest.entities,
        &digest.root[..16]
    );
    // Someone with the owner's keys (or a superuser) edits history with the triggers disabled.
    let mut tx = pool.begin().await?;
    sqlx::raw_sql("ALTER TABLE accounts DISABLE TRIGGER USER").execute(&mut *tx).await?;
    sqlx::query("UPDATE accounts SET balance = balance + 1000000 WHERE entity_id = $1 AND version = 1")
        .bind(savings)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(
        "ALTER TABLE accounts ENABLE ALWAYS TRIGGER immu_check_insert, ENABLE ALWAYS TRIGGER immu_append_only,
                               ENABLE ALWAYS TRIGGER immu_append_only_rows;",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    say!(out, "  tampered: version 1 of Ada savings given 10,000.00 more, triggers disabled, as the owner");
    let report = Account::verify(pool).against(&digest).await?;
    say!(out, "  verify against the digest: intact {}", report.is_intact());
    for line in report.to_string().lines() {
        say!(out, "    {line}");
    }
    Ok(())
}

/// Section 13: a consumer follows the transfers feed from now while transfers commit, then a
/// second consumer resumes from the cursor stored after the first transfer.
async fn follow_transfers<W: Write + Send>(
    pool: &PgPool,
    out: &mut W,
    accounts: [&Versioned<Account>; 3],
) -> Result<(), Box<dyn std::error::Error>> {
    let label =
        |id: Uuid| accounts.iter().find(|a| a.entity_id == id).map_or("?", |a| a.label.as_str()).to_owned();
    // Wake feeds at commit (off by default: notifying commits queue on one lock per database).
    sqlx::query("SELECT immu.configure_versioning('transfers', notify => true)").execute(pool).await?;
    let from = Cursor::now(pool).await?;
    say!(out, "  following transfers from now, cursor {from}");
    // The consumer waits (woken by LISTEN) while the transfers below commit.
    let mut feed = Transfer::feed(pool).from(from);
    let follower = tokio::spawn(async move {
        let mut received = Vec::new();
        while received.len() < 3 {
            received.extend(feed.next_batch().await?);
        }
        Ok::<_, Error>(received)
    });
    let [checking, savings, bobs] = accounts.map(|a| a.entity_id);
    for (from, to, amount) in [(bobs, checking, 20), (checking, savings, 15), (savings, bobs, 5)] {
        transfer(pool, from, to, dollars(amount)).await?;
    }
    let received = follower.await??;
    for change in &received {
        say!(
            out,
            "  received  {:?} transfer {:>6} from {} to {}",
            change.kind,
            money(change.amount),
            label(change.from_account),
            label(change.to_account)
        );
    }
    // A consumer stores the cursor after each change with its effects; one that stopped after the
    // first transfer resumes right after it.
    let stored = received[0].cursor.to_string();
    let mut resumed = Transfer::feed(pool).from(stored.parse::<Cursor>()?);
    let rest = resumed.read_batch().await?;
    say!(
        out,
        "  resumed from the cursor stored after the first: {} more transfers ({}), none twice",
        rest.len(),
        rest.iter().map(|c| money(c.amount)).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

async fn open(
    pool: &PgPool,
    owner: &Versioned<Customer>,
    label: &str,
    balance: i64,
) -> Result<Versioned<Account>, Error> {
    Account::insert(pool, Account { owner_id: owner.entity_id, label: label.into(), balance }).await
}

fn section(out: &mut impl Write, title: &str) {
    say!(out, "\n== {title}");
}

fn show(out: &mut impl Write, what: &str, v: &Versioned<Account>) {
    say!(
        out,
        "  {what:<9} {:<13} version {}  valid_from {}  balance {:>8}{}",
        v.label,
        v.version,
        time(v.valid_from),
        money(v.balance),
        if v.is_deleted() { "  (tombstone)" } else { "" }
    );
}

fn labels(accounts: &[Versioned<Account>]) -> String {
    let labels: Vec<String> = accounts.iter().map(|a| format!("{} {}", a.label, money(a.balance))).collect();
    if labels.is_empty() { "(none)".to_owned() } else { labels.join(", ") }
}

fn describe(result: Result<(), Error>) -> String {
    match result {
        Ok(()) => "ok".to_owned(),
        Err(err) => {
            let variant = match &err {
                Error::NotFound { .. } => "NotFound",
                Error::Deleted { .. } => "Deleted",
                Error::VersionConflict { .. } => "VersionConflict",
                _ => "Error",
            };
            format!("Err({variant}): {err}")
        }
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%H:%M:%S%.6f").to_string()
}

fn yes(flag: bool) -> &'static str {
    if flag { "yes" } else { "" }
}

/// Whole dollars in cents.
const fn dollars(n: i64) -> i64 {
    n * 100
}

fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
}

//! The scenarios: what each contender runs for one operation.
//!
//! The library runs through its public API only; the floor is plain sqlx on the plain mutable
//! table `accounts_plain`; the peers are the periods extension's system-versioned table and the
//! `GROUP BY entity_id MAX(version)` join (the reference library's shape for current lists), as
//! raw SQL against immu's table.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use immu_core::Immutable;
use immu_core::sea_query::ExprTrait;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::data::{BALANCE_RANGE, Ctx, FILTER_BELOW};
use crate::{Account, BoxError};

/// One operation in flight.
pub(crate) type OpFuture<'a> = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>>;

/// One operation of a contender, run by a client on its own connection.
pub(crate) type Op = for<'a> fn(&'a mut PgConnection, &'a mut Worker) -> OpFuture<'a>;

/// Who runs a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Plain sqlx on the plain mutable table.
    Floor,
    /// immu through its public API.
    Library,
    /// The periods extension's system versioning.
    Periods,
    /// The `GROUP BY entity_id MAX(version)` join on immu's table.
    GroupByMax,
    /// immu through its public API, every write with an `Audit` (actor, reason, JSON context).
    LibraryAudited,
    /// immu's partial update (`Account::patch`), computed by the database.
    LibraryPatch,
}

impl Role {
    /// The column heading.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Floor => "floor",
            Role::Library => "library",
            Role::Periods => "periods",
            Role::GroupByMax => "GROUP BY MAX",
            Role::LibraryAudited => "library + audit",
            Role::LibraryPatch => "library patch",
        }
    }
}

/// What is reported for a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Operations per second over all clients (higher is better); ratios are throughput ratios.
    Throughput,
    /// Milliseconds per operation (lower is better); ratios are time ratios.
    Latency,
}

/// The issue's target for a scenario.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Target {
    /// No target.
    None,
    /// Library throughput at least this share of the floor's.
    AtLeast(f64),
    /// Library throughput at least this share of the floor's, and above the periods peer's.
    AtLeastAndAbovePeriods(f64),
    /// Library time at most this multiple of the floor's.
    AtMost(f64),
    /// Library time below the periods peer's.
    FasterThanPeriods,
    /// No errors, and the final value is exact.
    Exact,
}

/// One contender's way of running a scenario.
pub(crate) struct Variant {
    /// Who.
    pub(crate) role: Role,
    /// What it runs, for the report.
    pub(crate) does: &'static str,
    /// The operation.
    pub(crate) op: Op,
}

/// A scenario: its clients, what is measured, the contenders and the target.
pub(crate) struct Scenario {
    /// Short key (stable, for logs).
    pub(crate) key: &'static str,
    /// Heading in the report.
    pub(crate) title: &'static str,
    /// Concurrent clients, each on its own connection.
    pub(crate) clients: usize,
    /// What is reported.
    pub(crate) unit: Unit,
    /// The contenders, the floor first and the library second.
    pub(crate) variants: Vec<Variant>,
    /// The issue's target.
    pub(crate) target: Target,
    /// Anything the reader must know about the comparison.
    pub(crate) note: &'static str,
}

/// A client's state: which client it is, its random numbers, the shared context.
pub(crate) struct Worker {
    /// This client's index, `0..clients`.
    pub(crate) client: usize,
    /// How many clients run concurrently.
    pub(crate) clients: usize,
    rng: u64,
    /// What the scenarios read and write.
    pub(crate) ctx: Arc<Ctx>,
}

impl Worker {
    /// A client with its own random sequence.
    pub(crate) fn new(client: usize, clients: usize, seed: u64, ctx: Arc<Ctx>) -> Worker {
        Worker { client, clients, rng: seed ^ (client as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15), ctx }
    }

    /// splitmix64.
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A random live entity.
    fn any_entity(&mut self) -> Uuid {
        let n = self.ctx.live.len() as u64;
        let index = (self.next() % n) as usize;
        self.ctx.live[index].0
    }

    /// A random live entity of this client's share (clients never write the same entity).
    fn own_entity(&mut self) -> (Uuid, String) {
        let share = (self.ctx.live.len() / self.clients) as u64;
        let index = (self.next() % share) as usize * self.clients + self.client;
        self.ctx.live[index].clone()
    }

    /// A random balance.
    fn balance(&mut self) -> i64 {
        (self.next() % BALANCE_RANGE as u64) as i64
    }
}

const PLAIN_READ: &str = "SELECT id, owner, balance FROM accounts_plain WHERE id = $1";
const PLAIN_INSERT: &str = "INSERT INTO accounts_plain (id, owner, balance) VALUES ($1, $2, $3)";
const PLAIN_UPDATE: &str = "UPDATE accounts_plain SET owner = $2, balance = $3 WHERE id = $1";
const PLAIN_LIST_FILTER: &str = "SELECT id, owner, balance FROM accounts_plain WHERE balance < $1";
const PLAIN_LIST_ALL: &str = "SELECT id, owner, balance FROM accounts_plain";
const PLAIN_COUNT: &str = "SELECT count(*) FROM accounts_plain";

const PERIODS_INSERT: &str = "INSERT INTO periods_accounts (entity_id, owner, balance) VALUES ($1, $2, $3)";
const PERIODS_UPDATE: &str = "UPDATE periods_accounts SET owner = $2, balance = $3 WHERE entity_id = $1";
const PERIODS_READ_AS_OF: &str = "SELECT entity_id, owner, balance, system_time_start FROM periods_accounts__as_of($2) WHERE entity_id = $1";
const PERIODS_LIST_FILTER: &str =
    "SELECT entity_id, owner, balance, system_time_start FROM periods_accounts WHERE balance < $1";
const PERIODS_LIST_AS_OF: &str =
    "SELECT entity_id, owner, balance, system_time_start FROM periods_accounts__as_of($1) WHERE balance < $2";
const PERIODS_HISTORY: &str = "SELECT entity_id, owner, balance, system_time_start,
        NULLIF(system_time_end, 'infinity') AS system_time_end
    FROM periods_accounts_with_history WHERE entity_id = $1 ORDER BY system_time_start";

/// The columns the library reads, from the `GROUP BY MAX` join.
const GROUP_BY_COLUMNS: &str =
    r#"a."id", a."entity_id", a."version", a."valid_from", a."deleted_at", a."owner", a."balance""#;
/// The reference library's current list: a join to the whole table grouped by entity.
const GROUP_BY_CURRENT: &str = r#"FROM "accounts" AS a
    JOIN (SELECT "entity_id", MAX("version") AS "version" FROM "accounts" GROUP BY "entity_id") AS m
      ON m."entity_id" = a."entity_id" AND m."version" = a."version"
    WHERE a."deleted_at" IS NULL"#;

/// `GROUP BY MAX` current list filtered on `balance < $1`.
pub(crate) fn group_by_list_filter() -> String {
    format!(r#"SELECT {GROUP_BY_COLUMNS} {GROUP_BY_CURRENT} AND a."balance" < $1"#)
}

/// `GROUP BY MAX` current list of everything.
pub(crate) fn group_by_list_all() -> String {
    format!("SELECT {GROUP_BY_COLUMNS} {GROUP_BY_CURRENT}")
}

/// `GROUP BY MAX` as of `$1`, filtered on `balance < $2`.
pub(crate) fn group_by_list_as_of() -> String {
    format!(
        r#"SELECT {GROUP_BY_COLUMNS} FROM "accounts" AS a
    JOIN (SELECT "entity_id", MAX("version") AS "version" FROM "accounts" WHERE "valid_from" <= $1 GROUP BY "entity_id") AS m
      ON m."entity_id" = a."entity_id" AND m."version" = a."version"
    WHERE a."deleted_at" IS NULL AND a."balance" < $2"#
    )
}

/// A row of the plain table.
type PlainRow = (Uuid, String, i64);
/// A row of the periods table.
type PeriodsRow = (Uuid, String, i64, DateTime<Utc>);
/// A row of the periods table's history view.
/// (The current row's end is `infinity`, read as `NULL`.)
type PeriodsHistoryRow = (Uuid, String, i64, DateTime<Utc>, Option<DateTime<Utc>>);
/// A row of immu's table, as the `GROUP BY MAX` peer decodes it.
type VersionRow = (Uuid, Uuid, i64, DateTime<Utc>, Option<DateTime<Utc>>, String, i64);

/// Statement text built once (sqlx caches prepared statements by text).
struct Texts {
    group_by_list_filter: String,
    group_by_list_all: String,
    group_by_list_as_of: String,
    group_by_count: String,
}

fn texts() -> &'static Texts {
    static TEXTS: std::sync::OnceLock<Texts> = std::sync::OnceLock::new();
    TEXTS.get_or_init(|| Texts {
        group_by_list_filter: group_by_list_filter(),
        group_by_list_all: group_by_list_all(),
        group_by_list_as_of: group_by_list_as_of(),
        group_by_count: format!("SELECT count(*) {GROUP_BY_CURRENT}"),
    })
}

// ---- single reads -------------------------------------------------------------------------

fn plain_read<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    let id = w.any_entity();
    Box::pin(async move {
        let row: PlainRow = sqlx::query_as(PLAIN_READ).bind(id).fetch_one(conn).await?;
        black_box(row);
        Ok(())
    })
}

fn library_find<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    let id = w.any_entity();
    Box::pin(async move {
        black_box(Account::find(conn, id).await?);
        Ok(())
    })
}

fn library_find_as_of<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    let (id, at) = (w.any_entity(), w.ctx.as_of);
    Box::pin(async move {
        black_box(Account::find_as_of(conn, id, at).await?);
        Ok(())
    })
}

fn periods_read_as_of<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    let (id, at) = (w.any_entity(), w.ctx.as_of);
    Box::pin(async move {
        let row: PeriodsRow = sqlx::query_as(PERIODS_READ_AS_OF).bind(id).bind(at).fetch_one(conn).await?;
        black_box(row);
        Ok(())
    })
}

fn library_history<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    let id = w.any_entity();
    Box::pin(async move {
        black_box(Account::history(conn, id).await?);
        Ok(())
    })
}

fn periods_history<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    let id = w.any_entity();
    Box::pin(async move {
        let rows: Vec<PeriodsHistoryRow> = sqlx::query_as(PERIODS_HISTORY).bind(id).fetch_all(conn).await?;
        black_box(rows);
        Ok(())
    })
}

// ---- lists ---------------------------------------------------------------------------------

fn plain_list_filter<'a>(conn: &'a mut PgConnection, _: &'a mut Worker) -> OpFuture<'a> {
    Box::pin(async move {
        let rows: Vec<PlainRow> =
            sqlx::query_as(PLAIN_LIST_FILTER).bind(FILTER_BELOW).fetch_all(conn).await?;
        black_box(rows);
        Ok(())
    })
}

fn library_list_filter<'a>(conn: &'a mut PgConnection, _: &'a mut Worker) -> OpFuture<'a> {
    Box::pin(async move {
        black_box(Account::query().filter(Account::BALANCE.lt(FILTER_BELOW)).fetch_all(conn).await?);
        Ok(())
    })
}

fn periods_list_filter<'a>(conn: &'a mut PgConnection, _: &'a mut Worker) -> OpFuture<'a> {
    Box::pin(async move {
        let rows: Vec<PeriodsRow> =
            sqlx::query_as(PERIODS_LIST_FILTER).bind(FILTER_BELOW).fetch_all(conn).await?;
        black_box(rows);
        Ok(())
    })
}

fn group_by_filter<'a>(conn: &'a mut PgConnection, _: &'a mut Worker) -> OpFuture<'a> {
    Box::pin(async move {
        let sql = texts().group_by_list_filter.as_str();
        let rows: Vec<VersionRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(FILTER_BELOW).fetch_all(conn).await?;
        black_box(rows);
        Ok(())
    })
}

fn plain_list_all<'a>(conn: &'a mut PgConnection, _: &'a mut Worker) -> OpFuture<'a> {
    Box::pin(async move {
        let rows: Vec<PlainRow> = sqlx::query_as(PLAIN_LIST_ALL).fetch_all(conn).await?;
        black_box(rows);
        Ok(())
    })
}

fn library_list_all<'a>(conn: &'a mut PgConnection, _: &'a mut Worker) -> OpFuture<'a> {
    Box::pin(async move {
        black_box(Account::query().fetch_all(conn).await?);
        Ok(())
    })
}

fn group_by_all<'a>(conn: &'a mut PgConnection, _: &'a mut Worker) -> OpFuture<'a> {
    Box::pin(async move {
        let sql = texts().group_by_list_all.as_str();
        let rows: Vec<VersionRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(conn).await?;
        black_box(rows);
        Ok(())
    })
}

fn plain_count<'a>(conn: &'a mut PgConnection, _: &'a mut Worker) -> OpFuture<'a> {
    Box::pin(async move {
        let n: i64 = sqlx::query_scalar(PLAIN_COUNT).fetch_one(conn).await?;
        black_box(n);
        Ok(())
    })
}

fn library_count<'a>(conn: &'a mut PgConnection, _: &'a mut Worker) -> OpFuture<'a> {
    Box::pin(async move {
        black_box(Account::query().count(conn).await?);
        Ok(())
    })
}

fn group_by_count<'a>(conn: &'a mut PgConnection, _: &'a mut Worker) -> OpFuture<'a> {
    Box::pin(async move {
        let sql = texts().group_by_count.as_str();
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(conn).await?;
        black_box(n);
        Ok(())
    })
}

fn library_list_as_of<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    library_list_at(conn, w.ctx.as_of)
}

fn library_list_as_of_recent<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    library_list_at(conn, w.ctx.as_of_recent)
}

fn library_list_at(conn: &mut PgConnection, at: DateTime<Utc>) -> OpFuture<'_> {
    Box::pin(async move {
        black_box(
            Account::query().as_of(at).filter(Account::BALANCE.lt(FILTER_BELOW)).fetch_all(conn).await?,
        );
        Ok(())
    })
}

fn periods_list_as_of<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    periods_list_at(conn, w.ctx.as_of)
}

fn periods_list_as_of_recent<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    periods_list_at(conn, w.ctx.as_of_recent)
}

fn periods_list_at(conn: &mut PgConnection, at: DateTime<Utc>) -> OpFuture<'_> {
    Box::pin(async move {
        let rows: Vec<PeriodsRow> =
            sqlx::query_as(PERIODS_LIST_AS_OF).bind(at).bind(FILTER_BELOW).fetch_all(conn).await?;
        black_box(rows);
        Ok(())
    })
}

fn group_by_as_of<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    group_by_at(conn, w.ctx.as_of)
}

fn group_by_as_of_recent<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    group_by_at(conn, w.ctx.as_of_recent)
}

fn group_by_at(conn: &mut PgConnection, at: DateTime<Utc>) -> OpFuture<'_> {
    Box::pin(async move {
        let sql = texts().group_by_list_as_of.as_str();
        let rows: Vec<VersionRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(at).bind(FILTER_BELOW).fetch_all(conn).await?;
        black_box(rows);
        Ok(())
    })
}

// ---- writes --------------------------------------------------------------------------------

fn plain_insert<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    let balance = w.balance();
    Box::pin(async move {
        sqlx::query(PLAIN_INSERT).bind(Uuid::now_v7()).bind("new").bind(balance).execute(conn).await?;
        Ok(())
    })
}

fn library_insert<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    let balance = w.balance();
    Box::pin(async move {
        black_box(Account::insert(conn, Account { owner: "new".into(), balance }).await?);
        Ok(())
    })
}

fn periods_insert<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    let balance = w.balance();
    Box::pin(async move {
        sqlx::query(PERIODS_INSERT).bind(Uuid::now_v7()).bind("new").bind(balance).execute(conn).await?;
        Ok(())
    })
}

fn plain_update<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    let ((id, owner), balance) = (w.own_entity(), w.balance());
    Box::pin(async move {
        sqlx::query(PLAIN_UPDATE).bind(id).bind(owner).bind(balance).execute(conn).await?;
        Ok(())
    })
}

fn library_update<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    let ((id, owner), balance) = (w.own_entity(), w.balance());
    Box::pin(async move {
        black_box(Account::update(conn, id, Account { owner, balance }).await?);
        Ok(())
    })
}

fn library_update_audited<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    let ((id, owner), balance) = (w.own_entity(), w.balance());
    let audit = immu_core::Audit::actor(format!("client-{}", w.client))
        .with_reason("benchmark")
        .with_context(serde_json::json!({ "request_id": balance }));
    Box::pin(async move {
        black_box(audit.scope(Account::update(conn, id, Account { owner, balance })).await?);
        Ok(())
    })
}

fn periods_update<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    let ((id, owner), balance) = (w.own_entity(), w.balance());
    Box::pin(async move {
        sqlx::query(PERIODS_UPDATE).bind(id).bind(owner).bind(balance).execute(conn).await?;
        Ok(())
    })
}

fn plain_hot<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    let id = w.ctx.hot;
    Box::pin(async move {
        let mut tx = conn.begin().await?;
        let balance: i64 = sqlx::query_scalar("SELECT balance FROM accounts_plain WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query("UPDATE accounts_plain SET balance = $2 WHERE id = $1")
            .bind(id)
            .bind(balance + 1)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    })
}

fn library_hot<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    let id = w.ctx.hot;
    Box::pin(async move {
        black_box(Account::modify(conn, id, |a| a.balance += 1).await?);
        Ok(())
    })
}

fn library_hot_patch<'a>(conn: &'a mut PgConnection, w: &'a mut Worker) -> OpFuture<'a> {
    use immu_core::sea_query::{Expr, ExprTrait};
    let id = w.ctx.hot;
    Box::pin(async move {
        black_box(Account::patch(conn, id).set(Account::BALANCE, Expr::col(Account::BALANCE).add(1)).await?);
        Ok(())
    })
}

/// The key of the hot-entity scenario (its final values are checked after it ran).
pub(crate) const HOT: &str = "hot";

/// Every timed scenario, in the order they run: reads and lists on the freshly loaded data first,
/// then the writes (which add versions and dead rows).
pub(crate) fn all(periods: bool) -> Vec<Scenario> {
    let v = |role: Role, does: &'static str, op: Op| Variant { role, does, op };
    let peer = |variant: Variant| (variant.role != Role::Periods || periods).then_some(variant);
    let with = |variants: Vec<Option<Variant>>| variants.into_iter().flatten().collect::<Vec<_>>();
    vec![
        Scenario {
            key: "read-current",
            title: "current read of one entity",
            clients: 1,
            unit: Unit::Latency,
            variants: with(vec![
                Some(v(Role::Floor, "SELECT by primary key", plain_read)),
                Some(v(Role::Library, "Account::find", library_find)),
            ]),
            target: Target::AtMost(1.2),
            note: "random live entity per call",
        },
        Scenario {
            key: "read-as-of",
            title: "as-of read of one entity",
            clients: 1,
            unit: Unit::Latency,
            variants: with(vec![
                Some(v(Role::Floor, "SELECT by primary key (current)", plain_read)),
                Some(v(Role::Library, "Account::find_as_of", library_find_as_of)),
                peer(v(Role::Periods, "periods_accounts__as_of(t) WHERE entity_id = $1", periods_read_as_of)),
            ]),
            target: Target::AtMost(1.3),
            note: "the floor has no history: it is the plain primary-key lookup, as in the issue's target",
        },
        Scenario {
            key: "list-filter",
            title: "current list, filter matching 1%",
            clients: 1,
            unit: Unit::Latency,
            variants: with(vec![
                Some(v(Role::Floor, "SELECT ... WHERE balance < 1000", plain_list_filter)),
                Some(v(Role::Library, "query().filter(BALANCE.lt(1000)).fetch_all", library_list_filter)),
                peer(v(Role::Periods, "its current table WHERE balance < 1000", periods_list_filter)),
                Some(v(
                    Role::GroupByMax,
                    "JOIN (GROUP BY entity_id MAX(version)) WHERE balance < 1000",
                    group_by_filter,
                )),
            ]),
            target: Target::AtMost(2.0),
            note: "no index on balance in any table: every contender scans",
        },
        Scenario {
            key: "list-all",
            title: "current list of everything (full fetch)",
            clients: 1,
            unit: Unit::Latency,
            variants: with(vec![
                Some(v(Role::Floor, "SELECT all rows", plain_list_all)),
                Some(v(Role::Library, "query().fetch_all", library_list_all)),
                Some(v(Role::GroupByMax, "JOIN (GROUP BY entity_id MAX(version))", group_by_all)),
            ]),
            target: Target::AtMost(2.0),
            note: "every live entity fetched and decoded",
        },
        Scenario {
            key: "count-all",
            title: "current count of everything",
            clients: 1,
            unit: Unit::Latency,
            variants: with(vec![
                Some(v(Role::Floor, "SELECT count(*)", plain_count)),
                Some(v(Role::Library, "query().count", library_count)),
                Some(v(Role::GroupByMax, "count(*) over the GROUP BY MAX join", group_by_count)),
            ]),
            target: Target::AtMost(2.0),
            note: "the issue's target for the full current list applied to a count",
        },
        Scenario {
            key: "list-as-of",
            title: "as-of list, filter matching 1%",
            clients: 1,
            unit: Unit::Latency,
            variants: with(vec![
                Some(v(Role::Floor, "current list WHERE balance < 1000 (no history)", plain_list_filter)),
                Some(v(
                    Role::Library,
                    "query().as_of(t).filter(BALANCE.lt(1000)).fetch_all",
                    library_list_as_of,
                )),
                peer(v(Role::Periods, "periods_accounts__as_of(t) WHERE balance < 1000", periods_list_as_of)),
                Some(v(
                    Role::GroupByMax,
                    "JOIN (GROUP BY entity_id MAX(version) WHERE valid_from <= t)",
                    group_by_as_of,
                )),
            ]),
            target: Target::FasterThanPeriods,
            note: "the floor is the plain current list (a plain table has no past); the target is the periods peer; \
                   about half of the entities have changed since the instant",
        },
        Scenario {
            key: "list-as-of-recent",
            title: "as-of list at a recent instant (10% changed since), filter matching 1%",
            clients: 1,
            unit: Unit::Latency,
            variants: with(vec![
                Some(v(Role::Floor, "current list WHERE balance < 1000 (no history)", plain_list_filter)),
                Some(v(
                    Role::Library,
                    "query().as_of(recent).filter(BALANCE.lt(1000)).fetch_all",
                    library_list_as_of_recent,
                )),
                peer(v(
                    Role::Periods,
                    "periods_accounts__as_of(recent) WHERE balance < 1000",
                    periods_list_as_of_recent,
                )),
                Some(v(
                    Role::GroupByMax,
                    "JOIN (GROUP BY entity_id MAX(version) WHERE valid_from <= recent)",
                    group_by_as_of_recent,
                )),
            ]),
            target: Target::FasterThanPeriods,
            note: "the instant after which 10% of the entities have a newer version (the 90th percentile of the \
                   latest versions' valid_from): the library reads the other 90% from the projection",
        },
        Scenario {
            key: "history",
            title: "history of one entity",
            clients: 1,
            unit: Unit::Latency,
            variants: with(vec![
                Some(v(Role::Floor, "SELECT by primary key (one row, no history)", plain_read)),
                Some(v(Role::Library, "Account::history", library_history)),
                peer(v(Role::Periods, "periods_accounts_with_history WHERE entity_id = $1", periods_history)),
            ]),
            target: Target::None,
            note: "the floor has no history; the plain lookup is shown for scale",
        },
        Scenario {
            key: "insert",
            title: "insert a new entity",
            clients: 1,
            unit: Unit::Throughput,
            variants: with(vec![
                Some(v(Role::Floor, "INSERT", plain_insert)),
                Some(v(Role::Library, "Account::insert", library_insert)),
                peer(v(Role::Periods, "INSERT (system time set by its trigger)", periods_insert)),
            ]),
            target: Target::AtLeast(0.8),
            note: "",
        },
        Scenario {
            key: "update-2",
            title: "update, 2 clients, spread over many entities",
            clients: 2,
            unit: Unit::Throughput,
            variants: with(vec![
                Some(v(Role::Floor, "UPDATE ... WHERE id = $1", plain_update)),
                Some(v(Role::Library, "Account::update", library_update)),
                peer(v(Role::Periods, "UPDATE (history row written by its trigger)", periods_update)),
                Some(v(
                    Role::LibraryAudited,
                    "Audit::actor(..).with_reason(..).with_context(..).scope(Account::update)",
                    library_update_audited,
                )),
            ]),
            target: Target::AtLeastAndAbovePeriods(0.8),
            note: "each client writes its own share of the entities; the floor's UPDATE changes no indexed \
                   column (a HOT update: no index is touched), the library appends a history row (one index entry) and its trigger moves the projection row \
                   (a HOT update)",
        },
        Scenario {
            key: "update-8",
            title: "update, 8 clients, spread over many entities",
            clients: 8,
            unit: Unit::Throughput,
            variants: with(vec![
                Some(v(Role::Floor, "UPDATE ... WHERE id = $1", plain_update)),
                Some(v(Role::Library, "Account::update", library_update)),
                peer(v(Role::Periods, "UPDATE (history row written by its trigger)", periods_update)),
                Some(v(
                    Role::LibraryAudited,
                    "Audit::actor(..).with_reason(..).with_context(..).scope(Account::update)",
                    library_update_audited,
                )),
            ]),
            target: Target::AtLeastAndAbovePeriods(0.65),
            note: "each client writes its own share of the entities",
        },
        Scenario {
            key: HOT,
            title: "read-modify-write of one hot entity, 32 clients",
            clients: 32,
            unit: Unit::Throughput,
            variants: with(vec![
                Some(v(Role::Floor, "BEGIN; SELECT ... FOR UPDATE; UPDATE; COMMIT", plain_hot)),
                Some(v(Role::Library, "Account::modify(.., |a| a.balance += 1)", library_hot)),
                Some(v(
                    Role::LibraryPatch,
                    "Account::patch(..).set(BALANCE, BALANCE + 1)",
                    library_hot_patch,
                )),
            ]),
            target: Target::Exact,
            note: "errors must be 0 and the final balance must equal the number of successful calls",
        },
    ]
}

/// The scenarios named in `only` (in that order, repeats allowed), or all of them.
pub(crate) fn select(periods: bool, only: Option<&[String]>) -> Result<Vec<Scenario>, BoxError> {
    let Some(only) = only else { return Ok(all(periods)) };
    let mut selected = Vec::new();
    for key in only {
        let scenario = all(periods)
            .into_iter()
            .find(|s| s.key == key)
            .ok_or_else(|| format!("unknown scenario {key:?} (see --help)"))?;
        selected.push(scenario);
    }
    Ok(selected)
}

/// Peak memory of reading every version: streamed, then collected.
pub(crate) struct Memory {
    /// Rows read.
    pub(crate) rows: u64,
    /// Resident set size before streaming, in kB.
    pub(crate) stream_base_kb: u64,
    /// Peak resident set size while streaming, in kB.
    pub(crate) stream_peak_kb: u64,
    /// Resident set size before `fetch_all`, in kB.
    pub(crate) collect_base_kb: u64,
    /// Peak resident set size of `fetch_all`, in kB.
    pub(crate) collect_peak_kb: u64,
    /// Whether the peak could be reset between the two (`/proc/self/clear_refs`).
    pub(crate) reset: bool,
}

/// A field of `/proc/self/status`, in kB.
pub(crate) fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets the peak resident set size to the current one (Linux: `5` to `/proc/self/clear_refs`).
pub(crate) fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Reads every version of every entity with `all_versions()`: first as a stream
/// (`fetch`), then collected (`fetch_all`), and reports the process's peak RSS (`VmHWM`) of each.
pub(crate) async fn memory(conn: &mut PgConnection) -> Result<Memory, BoxError> {
    let reset = reset_peak();
    let stream_base_kb = status_kb("VmRSS");
    let mut rows = 0u64;
    {
        let mut stream = Account::query().all_versions().fetch(&mut *conn);
        while let Some(version) = stream.try_next().await? {
            black_box(&version);
            rows += 1;
        }
    }
    let stream_peak_kb = status_kb("VmHWM");
    let reset = reset && reset_peak();
    let collect_base_kb = status_kb("VmRSS");
    let all = Account::query().all_versions().fetch_all(&mut *conn).await?;
    let collect_peak_kb = status_kb("VmHWM");
    if all.len() as u64 != rows {
        return Err(format!("fetch_all returned {} versions, the stream {rows}", all.len()).into());
    }
    drop(all);
    Ok(Memory { rows, stream_base_kb, stream_peak_kb, collect_base_kb, collect_peak_kb, reset })
}

//! A Jepsen-style recorder and checker for the reliability suite (`tests/tests/reliability/`).
//!
//! Every operation a scenario performs is recorded in a [`History`] together with what the client
//! learned about it: acknowledged (with the version immu returned), failed (a typed error that
//! guarantees nothing was written), rolled back (it succeeded inside a caller's transaction that
//! did not commit) or unknown (for example the connection broke during the commit). Each write
//! stores a unique tag in the row (`Account::owner`), so [`check`] can read every stored row with
//! raw SQL and explain it by the operation that wrote it, or report it.
//!
//! ```ignore
//! let mut history = History::default();
//! let v1 = history.push(reliability::insert(&pool, "w0-op0", 100).await);
//! history.push(reliability::write(&pool, id, Kind::Modify { delta: 5 }, "w0-op1").await);
//! let report = reliability::check(&pool, &history).await?;
//! assert!(report.is_clean(), "{report}");
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;

use chrono::{DateTime, Utc};
use immu_core::{Audit, Error, Immutable, Versioned};
use sqlx::postgres::{PgDatabaseError, PgSeverity};
use sqlx::{Acquire, PgPool, Postgres};
use uuid::Uuid;

use crate::models::Account;

/// The multiplier of operation counts: `IMMU_RELIABILITY_SCALE` (default 1, at least 1).
pub fn scale() -> u32 {
    std::env::var("IMMU_RELIABILITY_SCALE").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1).max(1)
}

/// A small deterministic pseudo-random generator (xorshift64*): reproducible runs, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value; zero is replaced).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// An index into a slice of length `n`.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What an operation tried to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `Account::insert` with this balance (the owner is the op's tag).
    Insert {
        /// The balance written.
        balance: i64,
    },
    /// `Account::update` to this balance.
    Update {
        /// The balance written.
        balance: i64,
    },
    /// `Account::modify` adding `delta` to the balance (and setting the owner to the tag).
    Modify {
        /// The amount added.
        delta: i64,
    },
    /// `Account::patch` setting the owner to the tag and `balance = balance + delta`, computed by
    /// the database: checked like `Modify`.
    Patch {
        /// The amount added.
        delta: i64,
    },
    /// `Account::update_if_version(expected)` to this balance.
    UpdateIfVersion {
        /// The version the write expects to be current.
        expected: i64,
        /// The balance written.
        balance: i64,
    },
    /// `Account::delete`: a tombstone copying the last data (carries no tag).
    Delete,
    /// `Account::undelete`: a live copy of the tombstone's data (carries no tag).
    Undelete,
    /// A row inserted with raw SQL (bypassing immu), at this version.
    Raw {
        /// The version number the statement tried to insert.
        version: i64,
    },
}

impl Kind {
    /// Whether the op stores its tag in a new row (every kind but delete and undelete).
    pub fn writes_tag(self) -> bool {
        !matches!(self, Kind::Delete | Kind::Undelete)
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Insert { .. } => "insert",
            Kind::Update { .. } => "update",
            Kind::Modify { .. } => "modify",
            Kind::Patch { .. } => "patch",
            Kind::UpdateIfVersion { .. } => "update_if_version",
            Kind::Delete => "delete",
            Kind::Undelete => "undelete",
            Kind::Raw { .. } => "raw insert",
        }
    }
}

/// What the client learned about an operation.
#[derive(Debug)]
pub enum Outcome {
    /// Acknowledged: committed, at this version.
    Ok(Versioned<Account>),
    /// Refused with an error that guarantees nothing was written (see [`definitely_not_written`]).
    Failed(Error),
    /// The call succeeded inside a caller's transaction that then rolled back (deliberately, or
    /// because a later statement or the commit failed with such an error): nothing was written.
    RolledBack(String),
    /// May or may not have been written: the connection broke, the server crashed, ...
    Unknown(String),
}

impl Outcome {
    /// Classifies the result of an immu call made outside a caller's transaction (or the result
    /// of one call inside it, before its commit).
    pub fn of(result: immu_core::Result<Versioned<Account>>) -> Outcome {
        match result {
            Ok(version) => Outcome::Ok(version),
            Err(err) if definitely_not_written(&err) => Outcome::Failed(err),
            Err(err) => Outcome::Unknown(format!("{err} ({err:?})")),
        }
    }

    /// Whether it was acknowledged.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }

    /// Whether nothing can have been written ([`Outcome::Failed`] or [`Outcome::RolledBack`]).
    pub fn is_failed(&self) -> bool {
        matches!(self, Outcome::Failed(_) | Outcome::RolledBack(_))
    }

    /// Whether it is [`Outcome::Unknown`].
    pub fn is_unknown(&self) -> bool {
        matches!(self, Outcome::Unknown(_))
    }

    /// The acknowledged version, if any.
    pub fn version(&self) -> Option<&Versioned<Account>> {
        match self {
            Outcome::Ok(v) => Some(v),
            _ => None,
        }
    }

    /// The typed error of a failed call, if any.
    pub fn error(&self) -> Option<&Error> {
        match self {
            Outcome::Failed(err) => Some(err),
            _ => None,
        }
    }
}

/// Whether an error from an immu write guarantees that the write wrote nothing.
///
/// - Every typed variant (`NotFound`, `Deleted`, `NotDeleted`, `VersionConflict`, `LockTimeout`,
///   `Canceled`, `InvalidValue`, `InvalidHistory`, `AppendOnly`, `UnknownReference`,
///   `MissingTable`, ...): immu raises them before or instead of its commit, and rolls back.
/// - `Database` with a server error of severity `ERROR` (serialization failure, deadlock, a
///   failed `COMMIT`): the transaction did not commit.
/// - `Database(PoolTimedOut | PoolClosed)`: no connection was ever used.
/// - Anything else (`FATAL`/`PANIC` errors such as an administrator's or a crash's termination,
///   I/O and protocol errors): the commit may have happened before the connection broke, so the
///   outcome is unknown.
pub fn definitely_not_written(err: &Error) -> bool {
    match err {
        Error::Database(sqlx::Error::Database(db)) => {
            db.try_downcast_ref::<PgDatabaseError>().is_some_and(|pg| pg.severity() == PgSeverity::Error)
        }
        Error::Database(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) => true,
        Error::Database(_) => false,
        // immu could not tell whether the write committed.
        Error::OutcomeUnknown { .. } => false,
        _ => true,
    }
}

/// One recorded operation.
#[derive(Debug)]
pub struct Op {
    /// The entity written (`None` for an insert that was not acknowledged: its id is unknown).
    pub entity: Option<Uuid>,
    /// What it tried to do.
    pub kind: Kind,
    /// Its unique tag, stored as the row's `owner` by every kind that writes data.
    pub tag: String,
    /// The caller's transaction it ran in: all of a transaction's versions commit or none do.
    pub group: Option<u64>,
    /// What the client learned.
    pub outcome: Outcome,
}

/// Runs `Account::insert` with `owner = tag` and records the result.
pub async fn insert<'c, A>(db: A, tag: impl Into<String>, balance: i64) -> Op
where
    A: Acquire<'c, Database = Postgres> + Send + 'c,
{
    let tag = tag.into();
    let audit = Audit::actor(ACTOR).with_reason(tag.clone());
    let outcome = Outcome::of(audit.scope(Account::insert(db, Account::new(&tag, balance))).await);
    let entity = outcome.version().map(|v| v.entity_id);
    Op { entity, kind: Kind::Insert { balance }, tag, group: None, outcome }
}

/// Runs one write of `kind` on `entity` (every kind but `Insert` and `Raw`) and records it.
///
/// Writes that store data set `owner` to `tag`; `modify` adds its delta to the current balance.
pub async fn write<'c, A>(db: A, entity: Uuid, kind: Kind, tag: impl Into<String>) -> Op
where
    A: Acquire<'c, Database = Postgres> + Send + 'c,
{
    let tag = tag.into();
    let audit = Audit::actor(ACTOR).with_reason(tag.clone());
    let result = audit
        .scope(async {
            match kind {
                Kind::Update { balance } => {
                    Account::update(db, entity, Account::new(&tag, balance)).await.map(Versioned::from)
                }
                Kind::Modify { delta } => {
                    let owner = tag.clone();
                    Account::modify(db, entity, move |a| {
                        a.owner = owner;
                        a.balance += delta;
                    })
                    .await
                    .map(Versioned::from)
                }
                Kind::Patch { delta } => {
                    use immu_core::sea_query::{Expr, ExprTrait};
                    Account::patch(db, entity)
                        .set(Account::OWNER, tag.as_str())
                        .set(Account::BALANCE, Expr::col(Account::BALANCE).add(delta))
                        .await
                        .map(Versioned::from)
                }
                Kind::UpdateIfVersion { expected, balance } => {
                    Account::update_if_version(db, entity, expected, Account::new(&tag, balance))
                        .await
                        .map(Versioned::from)
                }
                Kind::Delete => Account::delete(db, entity).await,
                Kind::Undelete => Account::undelete(db, entity).await,
                Kind::Insert { .. } | Kind::Raw { .. } => {
                    panic!("write() records existing-entity writes only")
                }
            }
        })
        .await;
    Op { entity: Some(entity), kind, tag, group: None, outcome: Outcome::of(result) }
}

/// How a caller's transaction ended, for [`History::settle`].
#[derive(Debug)]
pub enum TxEnd {
    /// `COMMIT` succeeded.
    Committed,
    /// Rolled back (deliberately, or after an error that guarantees it): nothing was written.
    RolledBack(String),
    /// The commit's outcome is unknown (the connection broke during it).
    Unknown(String),
}

impl TxEnd {
    /// Classifies the result of `tx.commit()`.
    pub fn of_commit(result: sqlx::Result<()>) -> TxEnd {
        match result {
            Ok(()) => TxEnd::Committed,
            Err(err) => {
                let err = Error::from(err);
                if definitely_not_written(&err) {
                    TxEnd::RolledBack(format!("commit failed: {err}"))
                } else {
                    TxEnd::Unknown(format!("commit failed: {err} ({err:?})"))
                }
            }
        }
    }
}

/// The record of every operation of a scenario.
#[derive(Debug, Default)]
pub struct History {
    /// The operations, in the order they were recorded.
    pub ops: Vec<Op>,
    next_group: u64,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an operation and returns its acknowledged version, if any.
    pub fn push(&mut self, op: Op) -> Option<Versioned<Account>> {
        let version = op.outcome.version().cloned();
        self.ops.push(op);
        version
    }

    /// Records many operations (for example one concurrent writer's).
    pub fn extend(&mut self, ops: impl IntoIterator<Item = Op>) {
        self.ops.extend(ops);
    }

    /// A fresh transaction group id.
    pub fn group(&mut self) -> u64 {
        self.next_group += 1;
        self.next_group
    }

    /// Records the operations of one caller's transaction, given how it ended: calls that failed
    /// on their own keep their outcome; calls that succeeded are acknowledged if the transaction
    /// committed, rolled back or unknown otherwise, and tagged with the transaction's `group`.
    pub fn settle(&mut self, group: u64, ops: Vec<Op>, end: &TxEnd) {
        for mut op in ops {
            if op.outcome.is_ok() {
                op.group = Some(group);
                match end {
                    TxEnd::Committed => {}
                    TxEnd::RolledBack(reason) => op.outcome = Outcome::RolledBack(reason.clone()),
                    TxEnd::Unknown(reason) => op.outcome = Outcome::Unknown(reason.clone()),
                }
            }
            self.ops.push(op);
        }
    }

    /// How many operations were acknowledged.
    pub fn acknowledged(&self) -> usize {
        self.ops.iter().filter(|op| op.outcome.is_ok()).count()
    }

    /// How many operations failed (nothing written).
    pub fn failed(&self) -> usize {
        self.ops.iter().filter(|op| op.outcome.is_failed()).count()
    }

    /// How many operations have an unknown outcome.
    pub fn unknown(&self) -> usize {
        self.ops.iter().filter(|op| op.outcome.is_unknown()).count()
    }

    /// Failed operations per error variant (`VersionConflict`, `Deleted`, ...), for reports.
    pub fn failures_by_kind(&self) -> Vec<(String, usize)> {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for op in &self.ops {
            let name = match &op.outcome {
                Outcome::Failed(err) => error_name(err),
                Outcome::RolledBack(_) => "RolledBack".to_owned(),
                _ => continue,
            };
            *counts.entry(name).or_default() += 1;
        }
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        counts
    }
}

/// The variant name of an error (`Database(...)` with its SQLSTATE or sqlx variant).
pub fn error_name(err: &Error) -> String {
    let first_word = |debug: String| debug.split([' ', '(', '{']).next().unwrap_or_default().to_owned();
    match err {
        Error::Database(sqlx::Error::Database(db)) => {
            format!("Database({})", db.code().as_deref().unwrap_or("?"))
        }
        Error::Database(other) => format!("Database({})", first_word(format!("{other:?}"))),
        _ => first_word(format!("{err:?}")),
    }
}

/// One stored row of `accounts`, as read with raw SQL.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Row {
    /// Version row id.
    pub id: Uuid,
    /// Entity.
    pub entity_id: Uuid,
    /// Version number.
    pub version: i64,
    /// Valid from.
    pub valid_from: DateTime<Utc>,
    /// Set on tombstones.
    pub deleted_at: Option<DateTime<Utc>>,
    /// The tag of the op that wrote the data.
    pub owner: String,
    /// The balance.
    pub balance: i64,
    /// Who wrote it ([`ACTOR`] for every write of a scenario).
    pub immu_actor: Option<String>,
    /// Why ([`insert`] and [`write()`] give the op's tag).
    pub immu_reason: Option<String>,
    /// The database user the database stamped.
    pub immu_db_user: Option<String>,
}

/// The actor of every write [`insert`] and [`write()`] make: the checker verifies it, the op's tag
/// as the reason, and a database user, on every acknowledged version.
pub const ACTOR: &str = "reliability-checker";

impl Row {
    fn same_data(&self, other: &Row) -> bool {
        self.owner == other.owner && self.balance == other.balance
    }

    fn matches(&self, v: &Versioned<Account>) -> bool {
        self.id == v.id
            && self.entity_id == v.entity_id
            && self.version == v.version
            && self.valid_from == v.valid_from
            && self.deleted_at == v.deleted_at
            && self.owner == v.owner
            && self.balance == v.balance
            && self.immu_actor == v.provenance.actor
            && self.immu_reason == v.provenance.reason
            && self.immu_db_user == v.provenance.db_user
    }

    /// Whether the row records who wrote it and why as `op` gave it: the op's actor and tag (for
    /// the ops [`insert`] and [`write()`] make), and always a database user.
    fn provenance_of(&self, op: &Op) -> bool {
        let given = match op.kind {
            Kind::Raw { .. } => true,
            _ => {
                self.immu_actor.as_deref() == Some(ACTOR)
                    && self.immu_reason.as_deref() == Some(op.tag.as_str())
            }
        };
        given && self.immu_db_user.as_deref().is_some_and(|u| !u.is_empty())
    }
}

/// Every stored row of `accounts`, ordered by entity and version.
pub async fn stored_rows(pool: &PgPool) -> sqlx::Result<Vec<Row>> {
    sqlx::query_as(
        "SELECT id, entity_id, version, valid_from, deleted_at, owner, balance, immu_actor, immu_reason, immu_db_user FROM accounts \
         ORDER BY entity_id, version, id",
    )
    .fetch_all(pool)
    .await
}

/// Every row of the projection `accounts_current` (one per entity: its latest version), by entity.
pub async fn projected_rows(pool: &PgPool) -> sqlx::Result<Vec<Row>> {
    sqlx::query_as(
        "SELECT id, entity_id, version, valid_from, deleted_at, owner, balance, immu_actor, immu_reason, immu_db_user FROM accounts_current \
         ORDER BY entity_id",
    )
    .fetch_all(pool)
    .await
}

/// What [`check`] found. Every counter but `entities`, `rows`, `acknowledged`, `failed` and
/// `unknown` must be zero.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Entities stored.
    pub entities: usize,
    /// Rows stored.
    pub rows: usize,
    /// Operations acknowledged.
    pub acknowledged: usize,
    /// Operations failed or rolled back (nothing may be written).
    pub failed: usize,
    /// Operations with an unknown outcome.
    pub unknown: usize,
    /// Acknowledged operations not stored at their version with exactly their data.
    pub lost: usize,
    /// Stored rows repeating an entity's version number, or two acknowledgements of one version.
    pub duplicate_versions: usize,
    /// Version numbers missing from an entity's 1..n.
    pub gaps: usize,
    /// Rows that no acknowledged or unknown operation explains.
    pub phantom: usize,
    /// Rows carrying the tag of an operation that failed or rolled back.
    pub written_by_failed: usize,
    /// Tags stored in more than one data row (an operation applied twice).
    pub duplicate_writes: usize,
    /// Rows whose data does not follow from their operation (wrong balance, wrong base version).
    pub mismatched: usize,
    /// Broken state machine: version 1 not live, tombstone after tombstone, a live version after
    /// a tombstone that is not a copy of it, a tombstone not copying its predecessor,
    /// `deleted_at` different from `valid_from`.
    pub state_violations: usize,
    /// `valid_from` lower than the previous version's.
    pub time_reversals: usize,
    /// Caller transactions of which some but not all versions are stored.
    pub torn_transactions: usize,
    /// Entities whose row in the projection `accounts_current` is not exactly their highest
    /// stored version, and projection rows without versions.
    pub projection_mismatches: usize,
    /// Acknowledged versions stored without the provenance their write gave (actor, reason) or
    /// without the database user the database stamps.
    pub wrong_provenance: usize,
    /// Alarms of tamper evidence on an honest history (none may be raised): entities whose hash
    /// chain does not verify, and digests taken during the run that no longer match.
    pub tamper_alarms: usize,
    /// The first problems found, described.
    pub problems: Vec<String>,
}

const MAX_PROBLEMS: usize = 20;

impl Report {
    /// Whether no violation was found.
    pub fn is_clean(&self) -> bool {
        self.violations() == 0
    }

    /// The sum of all violation counters.
    pub fn violations(&self) -> usize {
        self.lost
            + self.duplicate_versions
            + self.gaps
            + self.phantom
            + self.written_by_failed
            + self.duplicate_writes
            + self.mismatched
            + self.state_violations
            + self.time_reversals
            + self.torn_transactions
            + self.projection_mismatches
            + self.wrong_provenance
            + self.tamper_alarms
    }

    /// Adds `other`'s counters to this report (for a summary over scenarios).
    pub fn add(&mut self, other: &Report) {
        self.entities += other.entities;
        self.rows += other.rows;
        self.acknowledged += other.acknowledged;
        self.failed += other.failed;
        self.unknown += other.unknown;
        self.lost += other.lost;
        self.duplicate_versions += other.duplicate_versions;
        self.gaps += other.gaps;
        self.phantom += other.phantom;
        self.written_by_failed += other.written_by_failed;
        self.duplicate_writes += other.duplicate_writes;
        self.mismatched += other.mismatched;
        self.state_violations += other.state_violations;
        self.time_reversals += other.time_reversals;
        self.torn_transactions += other.torn_transactions;
        self.projection_mismatches += other.projection_mismatches;
        self.wrong_provenance += other.wrong_provenance;
        self.tamper_alarms += other.tamper_alarms;
        for problem in &other.problems {
            if self.problems.len() < MAX_PROBLEMS {
                self.problems.push(problem.clone());
            }
        }
    }

    fn problem(&mut self, text: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(text);
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ack, {} failed, {} unknown; {} rows of {} entities; {} lost, {} duplicate versions, {} gaps, \
             {} phantom",
            self.acknowledged,
            self.failed,
            self.unknown,
            self.rows,
            self.entities,
            self.lost,
            self.duplicate_versions,
            self.gaps,
            self.phantom
        )?;
        let others = [
            ("written by failed ops", self.written_by_failed),
            ("duplicate writes", self.duplicate_writes),
            ("mismatched", self.mismatched),
            ("state violations", self.state_violations),
            ("time reversals", self.time_reversals),
            ("torn transactions", self.torn_transactions),
            ("projection mismatches", self.projection_mismatches),
            ("wrong provenance", self.wrong_provenance),
            ("tamper alarms", self.tamper_alarms),
        ];
        for (name, count) in others {
            if count > 0 {
                write!(f, ", {count} {name}")?;
            }
        }
        Ok(())
    }
}

/// Reads every stored row of `accounts` (and its projection `accounts_current`) with raw SQL and checks it
/// against `history`; see [`Report`] for what is counted.
///
/// The rules:
/// 1. each entity's versions are exactly 1..n, `valid_from` never decreases, `deleted_at` is NULL
///    or equal to `valid_from`;
/// 2. every acknowledged operation is stored at its version with exactly the acknowledged row;
/// 3. no stored row carries the tag of a failed or rolled-back operation;
/// 4. every stored row is explained: a data row by the acknowledged or unknown op whose tag it
///    carries (and its data follows from that op: the balance written, or the previous balance
///    plus the delta, at the expected version + 1), a tombstone or undelete by an acknowledged
///    delete/undelete at that version or by an unknown one on that entity;
/// 5. version 1 is live, a tombstone follows a live version and copies it, a live version after a
///    tombstone copies it (an undelete, never an update);
/// 6. a caller's transaction is stored entirely or not at all;
/// 7. the projection holds, for each entity, exactly its highest stored version, and nothing else;
/// 8. (in [`check_rows`]) the provenance of every acknowledged version;
/// 9. every entity's hash chain verifies (immu_core::ledger): an honest history raises no alarm.
pub async fn check(pool: &PgPool, history: &History) -> sqlx::Result<Report> {
    // One snapshot for both tables.
    let mut tx = pool.begin().await?;
    sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, entity_id, version, valid_from, deleted_at, owner, balance, immu_actor, immu_reason, immu_db_user FROM accounts \
         ORDER BY entity_id, version, id",
    )
    .fetch_all(&mut *tx)
    .await?;
    let projected: Vec<Row> = sqlx::query_as(
        "SELECT id, entity_id, version, valid_from, deleted_at, owner, balance, immu_actor, immu_reason, immu_db_user FROM accounts_current \
         ORDER BY entity_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.rollback().await?;
    let mut report = check_rows(&rows, &projected, history);
    let chains = immu_core::ledger::verify_table(pool, "accounts")
        .await
        .map_err(|e| sqlx::Error::Protocol(format!("verification failed: {e}")))?;
    report.tamper_alarms += chains.broken_entities as usize;
    for b in &chains.breaks {
        report.problem(format!("tamper alarm on an honest history: {b}"));
    }
    Ok(report)
}

/// Checks digests taken during a run against the table now: each must match (an honest history
/// raises no alarm, whatever was committing when the digest was taken). Counted in `report`.
pub async fn check_digests(
    pool: &PgPool,
    digests: &[immu_core::ledger::Digest],
    report: &mut Report,
) -> sqlx::Result<()> {
    for digest in digests {
        let verified = immu_core::ledger::verify_table(pool, "accounts")
            .against(digest)
            .await
            .map_err(|e| sqlx::Error::Protocol(format!("verification failed: {e}")))?;
        if !verified.is_intact() {
            report.tamper_alarms += 1;
            report.problem(format!("a digest taken during the run does not verify: {verified}"));
        }
    }
    Ok(())
}

/// [`check`] on rows already read: the history's rows, and the projection's.
pub fn check_rows(rows: &[Row], projected: &[Row], history: &History) -> Report {
    let mut report = Report {
        rows: rows.len(),
        acknowledged: history.acknowledged(),
        failed: history.failed(),
        unknown: history.unknown(),
        ..Report::default()
    };

    // Index the history.
    let mut by_tag: HashMap<&str, &Op> = HashMap::new();
    let mut acked_at: HashMap<(Uuid, i64), &Op> = HashMap::new();
    let mut unknown_copies: HashMap<(Uuid, bool), usize> = HashMap::new();
    for op in &history.ops {
        if op.kind.writes_tag() && by_tag.insert(op.tag.as_str(), op).is_some() {
            panic!("test bug: tag {:?} used by two operations", op.tag);
        }
        if let Outcome::Ok(v) = &op.outcome
            && acked_at.insert((v.entity_id, v.version), op).is_some()
        {
            report.duplicate_versions += 1;
            report.problem(format!("version {} of {} acknowledged twice", v.version, v.entity_id));
        }
        if let (Outcome::Unknown(_), Some(entity), Kind::Delete | Kind::Undelete) =
            (&op.outcome, op.entity, op.kind)
        {
            *unknown_copies.entry((entity, op.kind == Kind::Delete)).or_default() += 1;
        }
    }

    // Walk every entity's stored history.
    let mut by_key: HashMap<(Uuid, i64), &Row> = HashMap::new();
    let mut stored_tags: HashSet<&str> = HashSet::new();
    let mut entities: Vec<Uuid> = Vec::new();
    let mut start = 0;
    while start < rows.len() {
        let entity = rows[start].entity_id;
        let end = rows[start..].iter().position(|r| r.entity_id != entity).map_or(rows.len(), |n| start + n);
        entities.push(entity);
        check_entity(&rows[start..end], &by_tag, &acked_at, &unknown_copies, &mut stored_tags, &mut report);
        for row in &rows[start..end] {
            by_key.entry((row.entity_id, row.version)).or_insert(row);
        }
        start = end;
    }
    report.entities = entities.len();

    // Rule 2: every acknowledged write is stored as acknowledged.
    for op in &history.ops {
        if let Outcome::Ok(v) = &op.outcome {
            match by_key.get(&(v.entity_id, v.version)) {
                Some(row) if row.matches(v) && row.provenance_of(op) => {}
                Some(row) if row.matches(v) => {
                    report.wrong_provenance += 1;
                    report.problem(format!(
                        "provenance: {} {:?} version {} of {} stored by {:?} ({:?}) as {:?}",
                        op.kind.name(),
                        op.tag,
                        v.version,
                        v.entity_id,
                        row.immu_actor,
                        row.immu_reason,
                        row.immu_db_user
                    ));
                }
                Some(row) => {
                    report.lost += 1;
                    report.problem(format!(
                        "lost: {} {:?} acknowledged version {} of {} as ({}, {}, {:?}), stored ({}, {}, {:?})",
                        op.kind.name(),
                        op.tag,
                        v.version,
                        v.entity_id,
                        short(&v.owner),
                        v.balance,
                        v.deleted_at,
                        short(&row.owner),
                        row.balance,
                        row.deleted_at
                    ));
                }
                None => {
                    report.lost += 1;
                    report.problem(format!(
                        "lost: {} {:?} acknowledged version {} of {}, not stored",
                        op.kind.name(),
                        op.tag,
                        v.version,
                        v.entity_id
                    ));
                }
            }
        }
    }

    // Rule 6: caller transactions are atomic.
    let mut groups: HashMap<u64, (usize, usize)> = HashMap::new();
    for op in &history.ops {
        if let Some(group) = op.group {
            let entry = groups.entry(group).or_default();
            entry.0 += 1;
            if stored_tags.contains(op.tag.as_str()) {
                entry.1 += 1;
            }
        }
    }
    let mut torn: Vec<_> =
        groups.into_iter().filter(|(_, (all, stored))| *stored != 0 && stored != all).collect();
    torn.sort_unstable();
    for (group, (all, stored)) in torn {
        report.torn_transactions += 1;
        report.problem(format!("torn transaction {group}: {stored} of its {all} versions stored"));
    }

    // The projection: each entity's highest version, exactly; nothing else.
    let mut highest: HashMap<Uuid, &Row> = HashMap::new();
    for row in rows {
        let slot = highest.entry(row.entity_id).or_insert(row);
        if row.version > slot.version {
            *slot = row;
        }
    }
    let mut seen: HashSet<Uuid> = HashSet::new();
    for row in projected {
        seen.insert(row.entity_id);
        match highest.get(&row.entity_id) {
            Some(latest) if *latest == row => {}
            Some(latest) => {
                report.projection_mismatches += 1;
                report.problem(format!(
                    "projection of {} is version {} ({}), the highest stored is version {} ({})",
                    row.entity_id, row.version, row.owner, latest.version, latest.owner
                ));
            }
            None => {
                report.projection_mismatches += 1;
                report.problem(format!("projection row of {} has no versions", row.entity_id));
            }
        }
    }
    for missing in highest.keys().filter(|e| !seen.contains(*e)) {
        report.projection_mismatches += 1;
        report.problem(format!("entity {missing} has versions but no projection row"));
    }
    report
}

fn short(text: &str) -> String {
    if text.len() <= 40 {
        return text.to_owned();
    }
    let cut = (0..=40).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}...({} bytes)", &text[..cut], text.len())
}

fn check_entity<'a>(
    rows: &'a [Row],
    by_tag: &HashMap<&str, &Op>,
    acked_at: &HashMap<(Uuid, i64), &Op>,
    unknown_copies: &HashMap<(Uuid, bool), usize>,
    stored_tags: &mut HashSet<&'a str>,
    report: &mut Report,
) {
    let entity = rows[0].entity_id;
    // Rule 1: versions 1..n, time, deleted_at.
    let mut distinct = 0i64;
    for (i, row) in rows.iter().enumerate() {
        if i > 0 && row.version == rows[i - 1].version {
            report.duplicate_versions += 1;
            report.problem(format!("version {} of {entity} stored twice", row.version));
        } else {
            distinct += 1;
        }
        if i > 0 && row.valid_from < rows[i - 1].valid_from {
            report.time_reversals += 1;
            report.problem(format!(
                "version {} of {entity} is valid from {}, before version {} ({})",
                row.version,
                row.valid_from,
                rows[i - 1].version,
                rows[i - 1].valid_from
            ));
        }
        if row.deleted_at.is_some_and(|d| d != row.valid_from) {
            report.state_violations += 1;
            report
                .problem(format!("version {} of {entity}: deleted_at differs from valid_from", row.version));
        }
    }
    let max = rows.last().map_or(0, |r| r.version);
    let missing = usize::try_from(max - distinct).unwrap_or(0);
    if missing > 0 || rows[0].version != 1 {
        report.gaps += missing.max(1);
        let versions: Vec<i64> = rows.iter().map(|r| r.version).take(30).collect();
        report.problem(format!("{entity}: versions {versions:?} are not 1..{max}"));
    }

    // Rules 3-5: every row explained, state machine.
    let (mut unexplained_tombstones, mut unexplained_undeletes) = (0usize, 0usize);
    for (i, row) in rows.iter().enumerate() {
        let prev = i.checked_sub(1).map(|p| &rows[p]);
        let acked = acked_at.get(&(entity, row.version)).map(|op| op.kind);
        match (prev, row.deleted_at.is_some(), prev.is_some_and(|p| p.deleted_at.is_some())) {
            // A tombstone.
            (prev, true, prev_deleted) => {
                match prev {
                    None => {
                        report.state_violations += 1;
                        report
                            .problem(format!("{entity}: version {} (the first) is a tombstone", row.version));
                    }
                    Some(_) if prev_deleted => {
                        report.state_violations += 1;
                        report.problem(format!("{entity}: tombstone {} follows a tombstone", row.version));
                    }
                    Some(prev) if !row.same_data(prev) => {
                        report.state_violations += 1;
                        report.problem(format!(
                            "{entity}: tombstone {} does not copy its predecessor",
                            row.version
                        ));
                    }
                    Some(_) => {}
                }
                if acked != Some(Kind::Delete) {
                    unexplained_tombstones += 1;
                }
            }
            // A live version after a tombstone: must be an undelete (a copy).
            (Some(prev), false, true) => {
                if !row.same_data(prev) {
                    report.state_violations += 1;
                    report.problem(format!(
                        "{entity}: live version {} after tombstone {} is not a copy of it ({:?} after {:?})",
                        row.version,
                        prev.version,
                        short(&row.owner),
                        short(&prev.owner)
                    ));
                    explain_data_row(row, Some(prev), by_tag, stored_tags, report);
                } else if acked != Some(Kind::Undelete) {
                    unexplained_undeletes += 1;
                }
            }
            // A data write: version 1 or a live version after a live one.
            (prev, false, _) => {
                if prev.is_none() && row.version != 1 {
                    report.state_violations += 1;
                    report.problem(format!("{entity}: first stored version is {}", row.version));
                }
                explain_data_row(row, prev, by_tag, stored_tags, report);
            }
        }
    }
    for (unexplained, delete, what) in
        [(unexplained_tombstones, true, "tombstones"), (unexplained_undeletes, false, "undeletes")]
    {
        let allowed = unknown_copies.get(&(entity, delete)).copied().unwrap_or(0);
        if unexplained > allowed {
            report.phantom += unexplained - allowed;
            report.problem(format!(
                "{entity}: {unexplained} {what} not acknowledged, only {allowed} with unknown outcome"
            ));
        }
    }
}

fn explain_data_row<'a>(
    row: &'a Row,
    prev: Option<&Row>,
    by_tag: &HashMap<&str, &Op>,
    stored_tags: &mut HashSet<&'a str>,
    report: &mut Report,
) {
    let entity = row.entity_id;
    let Some(op) = by_tag.get(row.owner.as_str()) else {
        report.phantom += 1;
        report.problem(format!(
            "phantom: version {} of {entity} carries tag {:?} of no operation",
            row.version,
            short(&row.owner)
        ));
        return;
    };
    if !stored_tags.insert(row.owner.as_str()) {
        report.duplicate_writes += 1;
        report.problem(format!(
            "tag {:?} stored twice (version {} of {entity})",
            short(&row.owner),
            row.version
        ));
    }
    if op.outcome.is_failed() {
        report.written_by_failed += 1;
        let why = match &op.outcome {
            Outcome::Failed(err) => format!("{err}"),
            Outcome::RolledBack(reason) => reason.clone(),
            _ => String::new(),
        };
        report.problem(format!(
            "failed {} {:?} was written as version {} of {entity} (it failed with: {why})",
            op.kind.name(),
            short(&op.tag),
            row.version
        ));
    }
    if op.entity.is_some_and(|e| e != entity) {
        report.mismatched += 1;
        report.problem(format!("tag {:?} of an op on {:?} stored on {entity}", short(&op.tag), op.entity));
        return;
    }
    let expected_balance = match (op.kind, prev) {
        (Kind::Insert { balance }, None) => Some(balance),
        (Kind::Update { balance }, Some(_)) => Some(balance),
        (Kind::Modify { delta } | Kind::Patch { delta }, Some(prev)) => Some(prev.balance + delta),
        (Kind::UpdateIfVersion { expected, balance }, Some(prev)) => {
            if prev.version != expected {
                report.mismatched += 1;
                report.problem(format!(
                    "update_if_version {:?} expected version {expected} but follows version {} of {entity}",
                    short(&op.tag),
                    prev.version
                ));
            }
            Some(balance)
        }
        (Kind::Raw { .. }, _) => None,
        (kind, _) => {
            report.mismatched += 1;
            report.problem(format!(
                "{} {:?} stored as version {} of {entity}",
                kind.name(),
                short(&op.tag),
                row.version
            ));
            None
        }
    };
    if let Some(expected) = expected_balance
        && expected != row.balance
    {
        report.mismatched += 1;
        report.problem(format!(
            "{} {:?}: version {} of {entity} has balance {}, expected {expected}",
            op.kind.name(),
            short(&op.tag),
            row.version,
            row.balance
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(micros: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_micros(1_700_000_000_000_000 + micros).expect("instant")
    }

    fn row(entity: Uuid, version: i64, owner: &str, balance: i64, deleted: bool) -> Row {
        let valid_from = at(version * 10);
        Row {
            id: Uuid::from_u128(entity.as_u128() ^ version as u128),
            entity_id: entity,
            version,
            valid_from,
            deleted_at: deleted.then_some(valid_from),
            owner: owner.to_owned(),
            balance,
            immu_actor: Some(ACTOR.to_owned()),
            // Set to the acknowledging op's tag by `report`.
            immu_reason: None,
            immu_db_user: Some("app".to_owned()),
        }
    }

    fn acked(kind: Kind, row: &Row) -> Op {
        let tag = if kind.writes_tag() { row.owner.clone() } else { format!("copy-{}", row.version) };
        let version = Versioned {
            id: row.id,
            entity_id: row.entity_id,
            version: row.version,
            valid_from: row.valid_from,
            deleted_at: row.deleted_at,
            provenance: immu_core::Provenance {
                actor: row.immu_actor.clone(),
                reason: Some(tag.clone()),
                db_user: row.immu_db_user.clone(),
                ..Default::default()
            },
            data: Account::new(&row.owner, row.balance),
        };
        Op { entity: Some(row.entity_id), kind, tag, group: None, outcome: Outcome::Ok(version) }
    }

    fn failed(entity: Uuid, kind: Kind, tag: &str) -> Op {
        let outcome =
            Outcome::Failed(Error::NotFound { table: "accounts", entity_id: entity, version: None });
        Op { entity: Some(entity), kind, tag: tag.to_owned(), group: None, outcome }
    }

    fn unknown(entity: Uuid, kind: Kind, tag: &str) -> Op {
        Op {
            entity: Some(entity),
            kind,
            tag: tag.to_owned(),
            group: None,
            outcome: Outcome::Unknown("io".into()),
        }
    }

    /// An entity with insert, modify(+5), delete, undelete, update: all acknowledged.
    fn clean() -> (Vec<Row>, History) {
        let e = Uuid::from_u128(1);
        let rows = vec![
            row(e, 1, "a", 10, false),
            row(e, 2, "b", 15, false),
            row(e, 3, "b", 15, true),
            row(e, 4, "b", 15, false),
            row(e, 5, "c", 7, false),
        ];
        let mut history = History::new();
        history.push(acked(Kind::Insert { balance: 10 }, &rows[0]));
        history.push(acked(Kind::Modify { delta: 5 }, &rows[1]));
        history.push(acked(Kind::Delete, &rows[2]));
        history.push(acked(Kind::Undelete, &rows[3]));
        history.push(acked(Kind::UpdateIfVersion { expected: 4, balance: 7 }, &rows[4]));
        (rows, history)
    }

    fn report(rows: &[Row], history: &History) -> Report {
        // Each row records the reason its acknowledging op gave (its tag), as a write would.
        let mut rows = rows.to_vec();
        for op in &history.ops {
            if let Outcome::Ok(v) = &op.outcome {
                for row in rows.iter_mut().filter(|r| (r.entity_id, r.version) == (v.entity_id, v.version)) {
                    row.immu_reason.get_or_insert_with(|| op.tag.clone());
                }
            }
        }
        let rows = &rows[..];
        // The projection as the trigger keeps it: each entity's highest version.
        let mut projected: Vec<Row> = Vec::new();
        for row in rows {
            match projected.iter_mut().find(|p| p.entity_id == row.entity_id) {
                Some(p) if p.version < row.version => *p = row.clone(),
                Some(_) => {}
                None => projected.push(row.clone()),
            }
        }
        check_rows(rows, &projected, history)
    }

    #[test]
    fn a_stale_projection_is_reported() {
        let (rows, history) = clean();
        let stale = vec![rows[3].clone()];
        let report = check_rows(&rows, &stale, &history);
        assert_eq!(report.projection_mismatches, 1, "{:?}", report.problems);
        let report = check_rows(&rows, &[], &history);
        assert_eq!(report.projection_mismatches, 1, "{:?}", report.problems);
    }

    #[test]
    fn a_clean_history_passes() {
        let (rows, history) = clean();
        let report = report(&rows, &history);
        assert!(report.is_clean(), "{report}: {:?}", report.problems);
        assert_eq!((report.acknowledged, report.rows, report.entities), (5, 5, 1));
    }

    #[test]
    fn a_missing_or_different_acknowledged_row_is_lost() {
        let (mut rows, history) = clean();
        rows[4].balance = 8;
        let r = report(&rows, &history);
        assert_eq!((r.lost, r.mismatched), (1, 1), "{:?}", r.problems);
        let (mut rows, history) = clean();
        rows.pop();
        assert_eq!(report(&rows, &history).lost, 1);
    }

    #[test]
    fn a_version_stored_without_its_provenance_is_reported() {
        // Stored and acknowledged alike, but without the database user the trigger must stamp.
        let (mut rows, mut history) = clean();
        rows[1].immu_db_user = None;
        if let Outcome::Ok(v) = &mut history.ops[1].outcome {
            v.provenance.db_user = None;
        }
        let r = report(&rows, &history);
        assert_eq!((r.wrong_provenance, r.lost), (1, 0), "{:?}", r.problems);
        // ... or with another actor than the write gave.
        let (mut rows, mut history) = clean();
        rows[2].immu_actor = Some("someone else".into());
        if let Outcome::Ok(v) = &mut history.ops[2].outcome {
            v.provenance.actor = Some("someone else".into());
        }
        assert_eq!(report(&rows, &history).wrong_provenance, 1);
        assert!(!report(&rows, &history).is_clean());
    }

    #[test]
    fn rows_of_no_op_or_of_failed_ops_are_reported() {
        let (mut rows, mut history) = clean();
        let e = rows[0].entity_id;
        rows.push(row(e, 6, "nobody", 1, false));
        assert_eq!(report(&rows, &history).phantom, 1);
        history.push(failed(e, Kind::Update { balance: 1 }, "nobody"));
        let r = report(&rows, &history);
        assert_eq!((r.phantom, r.written_by_failed), (0, 1), "{:?}", r.problems);
    }

    #[test]
    fn unknown_ops_may_or_may_not_be_stored() {
        let (mut rows, mut history) = clean();
        let e = rows[0].entity_id;
        history.push(unknown(e, Kind::Modify { delta: 1 }, "maybe"));
        history.push(unknown(e, Kind::Update { balance: 3 }, "never"));
        history.push(unknown(e, Kind::Delete, "maybe-delete"));
        assert!(report(&rows, &history).is_clean());
        rows.push(row(e, 6, "maybe", 8, false));
        rows.push(row(e, 7, "maybe", 8, true));
        let r = report(&rows, &history);
        assert!(r.is_clean(), "{:?}", r.problems);
        // A modify stored with the wrong balance is caught even with an unknown outcome.
        rows[5].balance = 9;
        rows[6].balance = 9;
        assert_eq!(report(&rows, &history).mismatched, 1);
    }

    #[test]
    fn gaps_duplicates_and_time_reversals_are_counted() {
        let (mut rows, history) = clean();
        rows.remove(1);
        assert!(report(&rows, &history).gaps >= 1);
        let (mut rows, history) = clean();
        let extra = rows[4].clone();
        rows.push(Row { id: Uuid::from_u128(99), ..extra });
        let r = report(&rows, &history);
        assert!(r.duplicate_versions >= 1 && r.duplicate_writes == 1, "{r}: {:?}", r.problems);
        let (mut rows, history) = clean();
        rows[1].valid_from = at(0);
        let r = report(&rows, &history);
        assert_eq!(r.time_reversals, 1, "{r}");
    }

    #[test]
    fn the_state_machine_is_enforced() {
        // A live version after a tombstone that is not a copy of it (an update of a deleted entity).
        let (mut rows, history) = clean();
        rows[3].owner = "c2".into();
        let r = report(&rows, &history);
        assert!(r.state_violations >= 1, "{r}: {:?}", r.problems);
        // A tombstone after a tombstone, and a tombstone no delete explains.
        let (mut rows, history) = clean();
        rows[3].deleted_at = Some(rows[3].valid_from);
        let r = report(&rows, &history);
        assert!(r.state_violations >= 1 && r.lost >= 1, "{r}: {:?}", r.problems);
        let (mut rows, history) = clean();
        let e = rows[0].entity_id;
        rows.push(row(e, 6, "c", 7, true));
        assert_eq!(report(&rows, &history).phantom, 1);
        // deleted_at must equal valid_from.
        let (mut rows, history) = clean();
        rows[2].deleted_at = Some(at(1));
        assert!(report(&rows, &history).state_violations >= 1);
    }

    #[test]
    fn a_transaction_stored_in_part_is_torn() {
        let (e, f) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let rows = vec![row(e, 1, "a", 10, false), row(e, 2, "t-debit", 5, false), row(f, 1, "b", 0, false)];
        let mut history = History::new();
        history.push(acked(Kind::Insert { balance: 10 }, &rows[0]));
        history.push(acked(Kind::Insert { balance: 0 }, &rows[2]));
        let debit = unknown(e, Kind::Modify { delta: -5 }, "t-debit");
        let credit = unknown(f, Kind::Modify { delta: 5 }, "t-credit");
        let group = history.group();
        for mut op in [debit, credit] {
            op.group = Some(group);
            history.push(op);
        }
        let r = report(&rows, &history);
        assert_eq!(r.torn_transactions, 1, "{r}: {:?}", r.problems);
    }

    #[test]
    fn only_errors_that_guarantee_nothing_was_written_count_as_failed() {
        let id = Uuid::nil();
        assert!(definitely_not_written(&Error::VersionConflict {
            table: "accounts",
            entity_id: id,
            expected: None,
            actual: None
        }));
        assert!(definitely_not_written(&Error::Database(sqlx::Error::PoolTimedOut)));
        let io = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "eof");
        assert!(!definitely_not_written(&Error::Database(sqlx::Error::Io(io))));
        assert!(!definitely_not_written(&Error::Database(sqlx::Error::Protocol("?".into()))));
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "eof");
        assert!(!definitely_not_written(&Error::OutcomeUnknown {
            table: "accounts",
            entity_id: id,
            version_id: id,
            source: Box::new(sqlx::Error::Io(eof)),
        }));
    }
}

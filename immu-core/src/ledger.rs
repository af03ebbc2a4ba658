//! Tamper evidence: each entity's versions form a hash chain, and digests kept outside the
//! database prove later that nothing they covered changed.
//!
//! The triggers stop an application from rewriting history; they cannot stop the table's owner or
//! a superuser (`ALTER TABLE ... DISABLE TRIGGER`, a restore from an edited dump). So the database
//! also computes each version's hash when the version is inserted (the insert trigger, as the
//! table's owner; no client can supply or change it):
//!
//! ```text
//! immu_hash(v) = sha256(immu_hash(v - 1) || encoding(v))
//! ```
//!
//! where the encoding of a version covers every column of its hash layout (its data and its
//! metadata: entity, version, `valid_from`, tombstone, provenance, transaction), in order: `N`
//! for NULL, else `V<length>:<text>`, the column's text output under pinned settings (time zone
//! UTC, ISO dates, `extra_float_digits = 1`, hex `bytea`). [`Immutable::verify`](crate::Immutable::verify) recomputes every chain
//! from the stored values and reports each entity whose chain breaks, with its first bad
//! version and why ([`Problem`]).
//!
//! A chain alone cannot catch someone who rewrites a whole chain with valid hashes. A
//! [`Digest`] can: a small value you store outside the database (a log, an object store, a
//! printed report) that names precisely which versions it covers (the transactions a
//! PostgreSQL snapshot saw, see [`PgSnapshot`]) and the head hash of every entity's chain then.
//! Verified later, it proves that nothing it covered changed, disappeared, or was inserted
//! afterwards with an earlier `valid_from`:
//!
//! ```no_run
//! # use immu_core::Immutable;
//! # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
//! # async fn demo(pool: sqlx::PgPool) -> immu_core::Result<()> {
//! use immu_core::ledger;
//!
//! let digest = Account::digest(&pool).await?;
//! std::fs::write("accounts.digest", digest.to_string()).expect("stored outside the database");
//!
//! // Later, perhaps years later:
//! let digest: ledger::Digest = std::fs::read_to_string("accounts.digest").unwrap().parse()?;
//! let report = Account::verify(&pool)
//!     .against(&digest)
//!     .on_progress(|p| eprintln!("{} versions, {:.0}/s", p.versions, p.per_second()))
//!     .await?;
//! assert!(report.is_intact(), "{report}");
//! # Ok(()) }
//! ```
//!
//! Versions written before release 4 of immu's machinery carry no hash: verification counts them
//! ([`Report::unhashed`]) and their entities' chains start at their first hashed version.
//!
//! A hash is over what was written. Adding a column (nullable, or with a default) starts a new
//! hash layout for versions written after it: older versions keep verifying against theirs.
//! Renaming a column is followed. Dropping a column, or changing its type so that its text
//! changes (`timestamp` to `timestamptz`, `numeric(10,2)` to `numeric(10,3)`), rewrites what
//! older versions hold, and verification reports them as changed: that is what happened to them.
//! A type change whose text is the same (`integer` to `bigint`, `varchar` to `text`) keeps them
//! verifying.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sqlx::{Acquire, Connection, Postgres, Row};
use uuid::Uuid;

use crate::sql::quote;
use crate::{Error, PgSnapshot, Result};

/// The settings a version's encoding depends on, as immu's insert trigger pins them
/// (`immu.hash_settings()`).
const HASH_SETTINGS: &str = "SET LOCAL search_path = pg_catalog, pg_temp; SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; \
     SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 1; SET LOCAL bytea_output = 'hex'";

/// How many breaks a [`Report`] lists by default (it counts them all).
pub const DEFAULT_MAX_BREAKS: usize = 1000;

/// How often (in versions) verification reports its progress.
const PROGRESS_EVERY: u64 = 10_000;

/// A digest of a versioned table: which versions it covers (those of the transactions its
/// snapshot saw) and a root hash over every entity's chain head then. Store it outside the
/// database; verify it later with [`Verify::against`].
///
/// Its text form ([`Display`](fmt::Display) and [`FromStr`]) is one line of JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// The versioned table, as PostgreSQL names it (`regclass` text).
    pub table: String,
    /// The database clock just before the snapshot was taken: every version appended after the
    /// digest is valid from a later instant.
    pub taken_at: DateTime<Utc>,
    /// The snapshot: the digest covers exactly the versions whose transactions it saw.
    pub snapshot: PgSnapshot,
    /// A transaction id assigned after [`taken_at`](Self::taken_at): every transaction from it on
    /// started after the digest, so each of its versions is valid from a later instant. (A
    /// transaction the snapshot did not see with an id before it was in flight at the digest.)
    pub next_xid: u64,
    /// The table's newest hash layout then.
    pub layout: i32,
    /// sha256 over the table's hash layouts then (hex): a column renamed or dropped since shows.
    pub layouts: String,
    /// How many entities had a version then (tombstoned ones included).
    pub entities: u64,
    /// How many versions it covers (every entity's versions up to its head then).
    pub versions: u64,
    /// sha256 over every entity's head then, in `entity_id` order (hex).
    pub root: String,
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_json::to_string(self).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        serde_json::from_str(s.trim()).map_err(|e| Error::InvalidDigest { reason: e.to_string() })
    }
}

/// Why an entity's chain breaks at a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Problem {
    /// The version's content (data or metadata) is not what was hashed when it was written, or its
    /// stored hash was changed.
    ChangedContent,
    /// The version is missing: the entity's versions skip it.
    Missing,
    /// A second version with this number.
    Extra,
    /// The version is out of order: valid from before an earlier version, or after a later one.
    Reordered,
    /// The version carries no hash, after versions that do (a row written with immu's trigger
    /// disabled).
    Unhashed,
    /// The version names a hash layout the table does not have.
    UnknownLayout {
        /// The layout it names.
        layout: Option<i32>,
    },
    /// The version was appended after the digest (its transaction had not started then) with a
    /// `valid_from` before the digest: history inserted after the fact.
    Backdated,
    /// The version names a transaction that never committed (it was in flight at the digest, then
    /// rolled back): no version of it can exist.
    AbortedTransaction,
    /// The projection's row of the entity (its latest version, with its hash) is not the chain's
    /// last version: versions after it were removed, or the projection was changed.
    ProjectionMismatch,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::ChangedContent => f.write_str("content changed since it was written"),
            Problem::Missing => f.write_str("missing"),
            Problem::Extra => f.write_str("stored twice"),
            Problem::Reordered => f.write_str("out of order in time (valid from after a later version)"),
            Problem::Unhashed => f.write_str("no hash, after hashed versions"),
            Problem::UnknownLayout { layout } => write!(f, "unknown hash layout {layout:?}"),
            Problem::Backdated => f.write_str("appended after the digest with an earlier valid_from"),
            Problem::AbortedTransaction => f.write_str("recorded under a transaction that never committed"),
            Problem::ProjectionMismatch => {
                f.write_str("the projection holds another latest version (later versions removed?)")
            }
        }
    }
}

/// The first bad version of one entity's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Break {
    /// The entity.
    pub entity_id: Uuid,
    /// The first version that does not verify (for [`Problem::Missing`], the missing number).
    pub version: i64,
    /// Why.
    pub problem: Problem,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "entity {} version {}: {}", self.entity_id, self.version, self.problem)
    }
}

/// What verification found against a [`Digest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestCheck {
    /// Whether every version the digest covered is still there, unchanged, and nothing was
    /// inserted among them: the heads of the chains as the digest's snapshot saw them hash to
    /// its root.
    pub root_matches: bool,
    /// Entities with a version the digest's snapshot saw, as stored now (the digest says
    /// [`Digest::entities`]).
    pub entities: u64,
    /// Versions the digest's snapshot saw, as stored now (the digest says [`Digest::versions`]).
    pub versions: u64,
    /// Entities the digest covered ([`Digest::entities`]).
    pub digest_entities: u64,
    /// Versions the digest covered ([`Digest::versions`]).
    pub digest_versions: u64,
    /// Versions of transactions still running when the digest was taken, which it neither covers
    /// nor can judge (but for those whose transaction never committed).
    pub in_flight: u64,
    /// Whether the table's hash layouts (which columns each version's hash covers, by name) are
    /// those of the digest: a column renamed or dropped since changes them, and what the digest
    /// covered may then be read from other columns than it was written to.
    pub layouts_match: bool,
}

/// The result of a verification ([`Immutable::verify`](crate::Immutable::verify), [`verify_table`]): every entity whose chain breaks, with its first bad version and
/// why, and what a digest says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The table verified.
    pub table: String,
    /// Entities checked.
    pub entities: u64,
    /// Versions checked.
    pub versions: u64,
    /// Versions without a hash, written before release 4 of immu's machinery (not covered by
    /// their entity's chain).
    pub unhashed: u64,
    /// The first bad version of each entity whose chain breaks (at most
    /// [`Verify::max_breaks`]; [`broken_entities`](Self::broken_entities) counts them all).
    pub breaks: Vec<Break>,
    /// How many entities' chains break.
    pub broken_entities: u64,
    /// Against a digest: what it says.
    pub digest: Option<DigestCheck>,
    /// How long verification took.
    pub elapsed: Duration,
}

impl Report {
    /// Whether nothing was found: every chain verifies, and the digest (if any) matches.
    pub fn is_intact(&self) -> bool {
        self.broken_entities == 0 && self.digest.as_ref().is_none_or(|d| d.root_matches && d.layouts_match)
    }

    /// Versions checked per second.
    pub fn per_second(&self) -> f64 {
        self.versions as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} versions of {} entities checked in {:.2?} ({:.0} versions/s)",
            self.table,
            self.versions,
            self.entities,
            self.elapsed,
            self.per_second()
        )?;
        if self.unhashed > 0 {
            write!(f, "; {} written before hashing", self.unhashed)?;
        }
        if self.broken_entities == 0 {
            f.write_str("; every chain verifies")?;
        } else {
            write!(f, "; {} broken chains", self.broken_entities)?;
            for b in &self.breaks {
                write!(f, "\n  {b}")?;
            }
            if (self.breaks.len() as u64) < self.broken_entities {
                write!(f, "\n  ... and {} more", self.broken_entities - self.breaks.len() as u64)?;
            }
        }
        if let Some(d) = &self.digest {
            if d.root_matches && self.broken_entities == 0 {
                write!(
                    f,
                    "\n  digest: matches, nothing it covered changed ({} versions of {} entities)",
                    d.versions, d.entities
                )?;
            } else if d.root_matches {
                write!(
                    f,
                    "\n  digest: the chain heads it covered are as they were ({} versions of {} entities); \
                     the breaks above are not",
                    d.versions, d.entities
                )?;
            } else {
                write!(
                    f,
                    "\n  digest: DOES NOT MATCH: what it covered was changed, removed or added to (it covered {} \
                     versions of {} entities; its snapshot now sees {} of {})",
                    d.digest_versions, d.digest_entities, d.versions, d.entities
                )?;
            }
            if !d.layouts_match {
                f.write_str(
                    "\n  digest: the table's columns were renamed or dropped since it was taken (its hash layouts \
                     differ): check that each change in immu.hash_layouts is yours",
                )?;
            }
            if d.in_flight > 0 {
                write!(f, "; {} versions of transactions in flight at the digest not judged", d.in_flight)?;
            }
        }
        Ok(())
    }
}

/// Verification's progress, reported every 10,000 versions and at the end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Versions checked so far.
    pub versions: u64,
    /// Entities checked so far.
    pub entities: u64,
    /// The table's estimated number of versions (PostgreSQL's statistics; 0 when unknown).
    pub estimated_total: u64,
    /// Time since verification started.
    pub elapsed: Duration,
}

impl Progress {
    /// Versions checked per second so far.
    pub fn per_second(&self) -> f64 {
        self.versions as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A row of `immu.hash_layouts`: layout, encoding, columns, created_at.
type LayoutRow = (i32, i32, Vec<Option<String>>, DateTime<Utc>);

/// Finds the versioned table `table` ([`crate::schema::find_versioned`]), then pins
/// `search_path` to `pg_catalog, pg_temp` and the output settings for the rest of the
/// transaction, so that the statements and the text output of every column (`regclass` values)
/// are those of immu's insert trigger, and nothing on the caller's path can stand in for them.
async fn open_table(tx: &mut sqlx::PgConnection, table: &str) -> Result<Opened> {
    let found = crate::schema::find_versioned(&mut *tx, table, table).await?;
    sqlx::raw_sql(HASH_SETTINGS).execute(&mut *tx).await?;
    Ok(found)
}

/// A versioned table, found by name.
type Opened = crate::schema::Found;

/// Refuses a table whose versions carry transaction ids this cluster has not reached: its history
/// was restored from another cluster (`pg_dump`), and snapshots here would judge them wrongly.
async fn refuse_foreign_transactions(tx: &mut sqlx::PgConnection, opened: &Opened) -> Result<()> {
    let (newest, reached): (Option<i64>, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT max(immu_xid), pg_snapshot_xmax(pg_current_snapshot())::text::bigint FROM {}",
        opened.projection
    )))
    .fetch_one(&mut *tx)
    .await?;
    match newest {
        Some(x) if x >= reached => Err(Error::InvalidDigest {
            reason: format!(
                "{} holds versions of transaction {x}, and this cluster has only reached {reached}: its history \
                 was restored from another cluster (pg_dump), where digests were taken. Verify the chains alone \
                 (no digest), and advance this cluster's transaction id past {x} (pg_resetwal -x) before taking \
                 digests here",
                opened.table
            ),
        }),
        _ => Ok(()),
    }
}

/// The table's newest hash layout (up to `up_to`, if given), a hash over its layouts up to it
/// (hex), and when its first layout was made (hashing started then: nothing written since is
/// unhashed).
async fn layouts_of(
    tx: &mut sqlx::PgConnection,
    table: &str,
    up_to: Option<i32>,
) -> Result<(i32, String, Option<DateTime<Utc>>)> {
    let rows: Vec<LayoutRow> = sqlx::query_as(
        "SELECT layout, encoding, columns, created_at FROM immu.hash_layouts \
         WHERE table_name = $1::regclass AND ($2::int IS NULL OR layout <= $2) ORDER BY layout",
    )
    .bind(table)
    .bind(up_to)
    .fetch_all(&mut *tx)
    .await?;
    let mut h = Sha256::new();
    for (layout, encoding, columns, created_at) in &rows {
        h.update(format!("{layout}:{encoding}:{}:", created_at.timestamp_micros()));
        for c in columns {
            match c {
                Some(c) => h.update(format!("V{}:{c}", c.chars().count())),
                None => h.update("N"),
            }
        }
        h.update(";");
    }
    let newest = rows.last().map_or(0, |r| r.0);
    Ok((newest, hex::encode(h.finalize()), rows.first().map(|r| r.3)))
}

/// Takes a digest of the versioned table `table`, named as PostgreSQL reads a `regclass` (found on
/// the connection's `search_path` unless qualified, `"Quoted"` where needed, as
/// [`Digest::table`] names it; [`Immutable::digest`](crate::Immutable::digest) for an entity's): which versions exist now (exactly: those of
/// the transactions a snapshot saw) and the hash of every entity's chain head. Reads the projection
/// (one row per entity) in one `REPEATABLE READ` transaction, in flat memory.
pub async fn digest_table<'c, A>(db: A, table: impl Into<String>) -> Result<Digest>
where
    A: Acquire<'c, Database = Postgres> + Send + 'c,
{
    let table: String = table.into();
    let table = table.as_str();
    let mut conn = db.acquire().await?;
    if conn.is_in_transaction() {
        return Err(Error::InTransaction { operation: "digest" });
    }
    // The clock before the snapshot, and a transaction id assigned after it (a transaction of its
    // own, which writes nothing): every transaction from that id on starts, and writes, later. The
    // snapshot's xmax is no such bound: a transaction with a later id may have been running, and
    // writing, before the snapshot was taken.
    let taken_at: DateTime<Utc> =
        sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(&mut *conn).await?;
    let next_xid: i64 =
        sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint").fetch_one(&mut *conn).await?;
    let mut tx = conn.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await?;
    let snapshot: String =
        sqlx::query_scalar("SELECT pg_current_snapshot()::text").fetch_one(&mut *tx).await?;
    let opened = open_table(&mut tx, table).await?;
    refuse_foreign_transactions(&mut tx, &opened).await?;
    let (layout, layouts, _) = layouts_of(&mut tx, &opened.table, None).await?;
    let sql = format!("SELECT entity_id, version, immu_hash FROM {} ORDER BY entity_id", opened.projection);
    let mut root = Sha256::new();
    let (mut entities, mut versions) = (0u64, 0u64);
    {
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            let (entity_id, version, hash): (Uuid, i64, Option<Vec<u8>>) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            add_head(&mut root, entity_id, version, hash.as_deref());
            entities += 1;
            versions += version.max(0) as u64;
        }
    }
    tx.commit().await?;
    Ok(Digest {
        table: opened.table,
        taken_at,
        snapshot: snapshot.parse()?,
        next_xid: next_xid as u64,
        layout,
        layouts,
        entities,
        versions,
        root: hex::encode(root.finalize()),
    })
}

/// One entity's head in a digest's root.
fn add_head(root: &mut Sha256, entity_id: Uuid, version: i64, hash: Option<&[u8]>) {
    root.update(entity_id.as_bytes());
    root.update(version.to_be_bytes());
    match hash {
        Some(h) => {
            root.update(b"H");
            root.update(h);
        }
        None => root.update(b"N"),
    }
}

/// Verification of the versioned table `table`, named as PostgreSQL reads a `regclass` (found on
/// the connection's `search_path` unless qualified, `"Quoted"` where needed, as
/// [`Digest::table`] names it; [`Immutable::verify`](crate::Immutable::verify) for an entity's): recomputes every entity's hash chain from
/// the stored values (see the [module](self)). Configure it, then `.await` it.
pub fn verify_table<'c, A>(db: A, table: impl Into<String>) -> Verify<'c, A>
where
    A: Acquire<'c, Database = Postgres> + Send + 'c,
{
    Verify { db, table: table.into(), digest: None, progress: None, max_breaks: DEFAULT_MAX_BREAKS }
}

type ProgressFn<'c> = Box<dyn FnMut(&Progress) + Send + 'c>;

/// A verification of a table's hash chains (see [`Immutable::verify`](crate::Immutable::verify), [`verify_table`]); `.await` it for its [`Report`].
#[must_use = "a verification does nothing until it is awaited"]
pub struct Verify<'c, A> {
    db: A,
    table: String,
    digest: Option<Digest>,
    progress: Option<ProgressFn<'c>>,
    max_breaks: usize,
}

impl<'c, A> Verify<'c, A> {
    /// Also checks a digest taken earlier: what it covered must be exactly what is stored, and
    /// nothing appended since may be valid from before it.
    pub fn against(mut self, digest: &Digest) -> Self {
        self.digest = Some(digest.clone());
        self
    }

    /// Calls `f` with the progress every 10,000 versions, and at the end.
    pub fn on_progress(mut self, f: impl FnMut(&Progress) + Send + 'c) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// Lists at most `n` broken chains in the report (1,000 by default); it counts them all.
    pub fn max_breaks(mut self, n: usize) -> Self {
        self.max_breaks = n;
        self
    }
}

impl<'c, A> IntoFuture for Verify<'c, A>
where
    A: Acquire<'c, Database = Postgres> + Send + 'c,
{
    type Output = Result<Report>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<Report>> + Send + 'c>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(run_verify(self.table, self.db, self.digest, self.progress, self.max_breaks))
    }
}

/// A hash layout: the columns a version's hash covers, in order (`None`: dropped since).
struct Layout {
    layout: i32,
    columns: Vec<Option<usize>>,
}

/// The chain of the entity being read.
struct Chain {
    entity_id: Uuid,
    last_version: i64,
    last_valid_from: DateTime<Utc>,
    last_hash: Option<Vec<u8>>,
    broken: bool,
    // The head the digest's snapshot saw: version and stored hash.
    head: Option<(i64, Option<Vec<u8>>)>,
    // The last version read (in time order): version and stored hash.
    tail: (i64, Option<Vec<u8>>),
}

async fn run_verify<'c, A>(
    table: String,
    db: A,
    digest: Option<Digest>,
    mut progress: Option<ProgressFn<'c>>,
    max_breaks: usize,
) -> Result<Report>
where
    A: Acquire<'c, Database = Postgres> + Send + 'c,
{
    let started = Instant::now();
    let mut conn = db.acquire().await?;
    if conn.is_in_transaction() {
        return Err(Error::InTransaction { operation: "verify" });
    }
    let mut tx = conn.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await?;
    let opened = open_table(&mut tx, &table).await?;
    let (regclass, estimated) = (opened.table.clone(), opened.estimated);
    if let Some(d) = &digest
        && d.table != regclass
    {
        return Err(Error::InvalidDigest {
            reason: format!("the digest is of table {}, not of {regclass}", d.table),
        });
    }
    if digest.is_some() {
        refuse_foreign_transactions(&mut tx, &opened).await?;
    }
    let (_, _, hashing_since) = layouts_of(&mut tx, &regclass, None).await?;
    let layouts_then = match &digest {
        Some(d) => Some(layouts_of(&mut tx, &regclass, Some(d.layout)).await?.1),
        None => None,
    };
    let layout_rows: Vec<(i32, i32, Vec<Option<String>>)> = sqlx::query_as(
        "SELECT layout, encoding, columns FROM immu.hash_layouts WHERE table_name = $1::regclass ORDER BY layout",
    )
    .bind(&regclass)
    .fetch_all(&mut *tx)
    .await?;
    let existing: Vec<String> = sqlx::query_scalar("SELECT name FROM immu.columns_of($1::regclass)")
        .bind(&regclass)
        .fetch_all(&mut *tx)
        .await?;
    // The columns read as text: every column a layout names that still exists.
    let mut read: Vec<String> = Vec::new();
    let mut layouts: Vec<Layout> = Vec::new();
    for (layout, encoding, columns) in layout_rows {
        if encoding != 1 {
            return Err(Error::InvalidDigest {
                reason: format!(
                    "hash layout {layout} of {regclass} uses encoding {encoding}, which this immu_core does not know"
                ),
            });
        }
        let columns = columns
            .into_iter()
            .map(|c| {
                let c = c.filter(|c| existing.contains(c))?;
                Some(match read.iter().position(|r| *r == c) {
                    Some(i) => i,
                    None => {
                        read.push(c);
                        read.len() - 1
                    }
                })
            })
            .collect();
        layouts.push(Layout { layout, columns });
    }
    let select_text: String =
        read.iter().enumerate().map(|(i, c)| format!(", (h.{})::text AS immu_{i}", quote(c))).collect();
    let sql = format!(
        "SELECT h.entity_id, h.version, h.valid_from, h.immu_xid, h.immu_layout, h.immu_hash{select_text} \
         FROM ONLY {} AS h ORDER BY h.entity_id, h.valid_from, h.version",
        regclass
    );

    let mut report = Report {
        table: regclass.clone(),
        entities: 0,
        versions: 0,
        unhashed: 0,
        breaks: Vec::new(),
        broken_entities: 0,
        digest: digest.as_ref().map(|d| DigestCheck {
            root_matches: false,
            entities: 0,
            versions: 0,
            digest_entities: d.entities,
            digest_versions: d.versions,
            in_flight: 0,
            layouts_match: layouts_then.as_deref() == Some(d.layouts.as_str()),
        }),
        elapsed: Duration::ZERO,
    };
    let mut root = RootBuilder { hash: Sha256::new(), entities: 0 };
    // Every chain's last version in time order, to compare with the projection's rows.
    let mut tails = Sha256::new();
    // Versions of transactions in flight at the digest (judged at the end: a transaction that never
    // committed has no versions).
    let mut in_flight: Vec<(Uuid, i64, i64)> = Vec::new();
    let mut chain: Option<Chain> = None;
    let mut values: Vec<Option<String>> = vec![None; read.len()];
    let mut encoding = Vec::with_capacity(256);
    {
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            let entity_id: Uuid = row.try_get(0)?;
            let version: i64 = row.try_get(1)?;
            let valid_from: DateTime<Utc> = row.try_get(2)?;
            let xid: Option<i64> = row.try_get(3)?;
            let layout: Option<i32> = row.try_get(4)?;
            let hash: Option<Vec<u8>> = row.try_get(5)?;
            for (i, v) in values.iter_mut().enumerate() {
                *v = row.try_get(6 + i)?;
            }
            report.versions += 1;

            if chain.as_ref().is_none_or(|c| c.entity_id != entity_id) {
                if let Some(done) = chain.take() {
                    finish_entity(done, &mut root, &mut tails);
                }
                report.entities += 1;
                chain = Some(Chain {
                    entity_id,
                    last_version: 0,
                    last_valid_from: valid_from,
                    last_hash: None,
                    broken: false,
                    head: None,
                    tail: (0, None),
                });
            }
            let c = chain.as_mut().expect("an entity being read");
            c.tail = (version, hash.clone());

            // What the digest saw, and what was appended after it.
            if let (Some(d), Some(check)) = (&digest, report.digest.as_mut()) {
                let seen = xid.is_none_or(|x| d.snapshot.is_visible(x as u64));
                if seen {
                    check.versions += 1;
                    if c.head.as_ref().is_none_or(|(v, _)| version > *v) {
                        c.head = Some((version, hash.clone()));
                    }
                } else if let Some(x) = xid
                    && (x as u64) >= d.next_xid
                {
                    if valid_from < d.taken_at && !c.broken {
                        c.broken = true;
                        record(&mut report, max_breaks, entity_id, version, Problem::Backdated);
                    }
                } else {
                    check.in_flight += 1;
                    if let Some(x) = xid
                        && in_flight.len() < 10_000
                    {
                        in_flight.push((entity_id, version, x));
                    }
                }
            }
            if hash.is_none() {
                report.unhashed += 1;
            }
            if c.broken {
                continue;
            }

            // The chain: versions 1, 2, 3, ... in time order, each hash over the previous one.
            let problem = if version == c.last_version {
                Some((version, Problem::Extra))
            } else if version < c.last_version {
                Some((version, Problem::Reordered))
            } else if version > c.last_version + 1 {
                // Missing, or stored later in time order (reordered): told apart at the end.
                Some((c.last_version + 1, Problem::Missing))
            } else if c.last_version > 0 && valid_from < c.last_valid_from {
                Some((version, Problem::Reordered))
            } else {
                match (&hash, layout) {
                    // Unhashed after hashed versions, or written since the table's hashing started
                    // (its first layout), or by a transaction immu's trigger stamped.
                    (None, _)
                        if c.last_hash.is_some()
                            || xid.is_some()
                            || hashing_since.is_some_and(|t| valid_from >= t) =>
                    {
                        Some((version, Problem::Unhashed))
                    }
                    (None, _) => None,
                    (Some(stored), layout) => match layouts.iter().find(|l| Some(l.layout) == layout) {
                        None => Some((version, Problem::UnknownLayout { layout })),
                        Some(l) => {
                            encoding.clear();
                            for column in &l.columns {
                                match column.and_then(|i| values[i].as_deref()) {
                                    None => encoding.push(b'N'),
                                    Some(text) => {
                                        encoding.push(b'V');
                                        encoding
                                            .extend_from_slice(text.chars().count().to_string().as_bytes());
                                        encoding.push(b':');
                                        encoding.extend_from_slice(text.as_bytes());
                                    }
                                }
                            }
                            let mut h = Sha256::new();
                            if let Some(prev) = &c.last_hash {
                                h.update(prev);
                            }
                            h.update(&encoding);
                            if h.finalize()[..] == stored[..] {
                                None
                            } else {
                                Some((version, Problem::ChangedContent))
                            }
                        }
                    },
                }
            };
            if let Some((at, problem)) = problem {
                c.broken = true;
                record(&mut report, max_breaks, entity_id, at, problem);
                continue;
            }
            c.last_version = version;
            c.last_valid_from = valid_from;
            c.last_hash = hash;

            if report.versions.is_multiple_of(PROGRESS_EVERY)
                && let Some(f) = progress.as_mut()
            {
                f(&Progress {
                    versions: report.versions,
                    entities: report.entities,
                    estimated_total: estimated.max(0.0) as u64,
                    elapsed: started.elapsed(),
                });
            }
        }
    }
    if let Some(done) = chain.take() {
        finish_entity(done, &mut root, &mut tails);
    }
    // The projection holds every chain's head: versions removed after it show there.
    let mut heads = Sha256::new();
    {
        let sql =
            format!("SELECT entity_id, version, immu_hash FROM {} ORDER BY entity_id", opened.projection);
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            let (entity_id, version, hash): (Uuid, i64, Option<Vec<u8>>) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            add_head(&mut heads, entity_id, version, hash.as_deref());
        }
    }
    if heads.finalize() != tails.finalize() {
        let sql = format!(
            "SELECT p.entity_id, p.version FROM {projection} AS p \
             LEFT JOIN LATERAL (SELECT h.version, h.immu_hash FROM ONLY {table} AS h WHERE h.entity_id = p.entity_id \
                                ORDER BY h.valid_from DESC, h.version DESC LIMIT 1) AS h ON true \
             WHERE h.version IS DISTINCT FROM p.version OR h.immu_hash IS DISTINCT FROM p.immu_hash \
             UNION ALL \
             SELECT DISTINCT h.entity_id, NULL::bigint FROM ONLY {table} AS h \
             WHERE NOT EXISTS (SELECT FROM {projection} AS p WHERE p.entity_id = h.entity_id)",
            projection = opened.projection,
            table = regclass
        );
        let differing: Vec<(Uuid, Option<i64>)> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *tx).await?;
        for (entity_id, version) in differing {
            if !report.breaks.iter().any(|b| b.entity_id == entity_id) {
                record(&mut report, max_breaks, entity_id, version.unwrap_or(0), Problem::ProjectionMismatch);
            }
        }
    }
    // Versions of transactions that were in flight at the digest and never committed.
    if !in_flight.is_empty() {
        let mut xids: Vec<i64> = in_flight.iter().map(|v| v.2).collect();
        xids.sort_unstable();
        xids.dedup();
        let aborted: Vec<i64> = sqlx::query_scalar(
            "SELECT x FROM unnest($1::bigint[]) AS x WHERE pg_xact_status(x::text::xid8) = 'aborted'",
        )
        .bind(&xids)
        .fetch_all(&mut *tx)
        .await?;
        for (entity_id, version, x) in in_flight {
            if aborted.contains(&x) && !report.breaks.iter().any(|b| b.entity_id == entity_id) {
                record(&mut report, max_breaks, entity_id, version, Problem::AbortedTransaction);
            }
        }
    }
    // A break read in time order is told apart once the whole table was read: a version the chain
    // skipped that is stored elsewhere in the entity's history was reordered (it is valid from a
    // later instant than a later version), one stored twice is extra.
    let resolve =
        format!("SELECT count(*) FROM ONLY {regclass} AS h WHERE h.entity_id = $1 AND h.version = $2");
    for b in &mut report.breaks {
        if matches!(b.problem, Problem::Missing | Problem::Reordered) {
            let copies: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(resolve.clone()))
                .bind(b.entity_id)
                .bind(b.version)
                .fetch_one(&mut *tx)
                .await?;
            b.problem = match (&b.problem, copies) {
                (Problem::Missing, 0) => Problem::Missing,
                (Problem::Missing, _) => Problem::Reordered,
                (_, 2..) => Problem::Extra,
                (other, _) => other.clone(),
            };
        }
    }
    tx.commit().await?;
    if let (Some(d), Some(check)) = (&digest, report.digest.as_mut()) {
        let (entities, root) = (root.entities, hex::encode(root.hash.finalize()));
        check.entities = entities;
        check.root_matches = root == d.root && check.versions == d.versions && entities == d.entities;
    }
    report.elapsed = started.elapsed();
    if let Some(f) = progress.as_mut() {
        f(&Progress {
            versions: report.versions,
            entities: report.entities,
            estimated_total: estimated.max(0.0) as u64,
            elapsed: report.elapsed,
        });
    }
    Ok(report)
}

/// Records an entity's first bad version.
fn record(report: &mut Report, max_breaks: usize, entity_id: Uuid, version: i64, problem: Problem) {
    report.broken_entities += 1;
    if report.breaks.len() < max_breaks {
        report.breaks.push(Break { entity_id, version, problem });
    }
}

/// Adds an entity's head as the digest's snapshot saw it to the root being recomputed, and its
/// chain's last version to the tails.
fn finish_entity(chain: Chain, root: &mut RootBuilder, tails: &mut Sha256) {
    if let Some((version, hash)) = chain.head {
        add_head(&mut root.hash, chain.entity_id, version, hash.as_deref());
        root.entities += 1;
    }
    add_head(tails, chain.entity_id, chain.tail.0, chain.tail.1.as_deref());
}

/// The root of the heads a digest's snapshot saw, being recomputed.
struct RootBuilder {
    hash: Sha256,
    entities: u64,
}

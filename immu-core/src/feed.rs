//! The change feed: every version appended to an entity's table, delivered once, in commit order,
//! from a cursor the consumer stores.
//!
//! ```no_run
//! use immu_core::{Cursor, Immutable};
//!
//! #[derive(Debug, Immutable)]
//! #[immu(table = "accounts")]
//! struct Account { owner: String, balance: i64 }
//!
//! # async fn demo(pool: sqlx::PgPool) -> immu_core::Result<()> {
//! // The cursor the consumer stored with its last effects (here: from the beginning).
//! let stored: Option<String> = None;
//! let from = match stored { Some(text) => text.parse()?, None => Cursor::beginning() };
//! let mut feed = Account::feed(&pool).from(from);
//! loop {
//!     let batch = feed.next_batch().await?; // waits until something was committed
//!     let mut tx = pool.begin().await?;
//!     for change in &batch {
//!         println!("{:?} {} v{}: {}", change.kind, change.entity_id, change.version, change.balance);
//!         // ... the consumer's effects, in `tx` ...
//!     }
//!     // The cursor, stored with the effects in one transaction: exactly-once.
//!     sqlx::query("UPDATE consumer_state SET cursor = $1").bind(batch.cursor.to_string()).execute(&mut *tx).await?;
//!     tx.commit().await?;
//! }
//! # }
//! ```
//!
//! # Why a cursor on snapshots, not on `valid_from`
//!
//! A version's `valid_from` is stamped when it is inserted, but other sessions see it only when
//! its transaction commits. A transaction that writes first and commits last has the earliest
//! `valid_from` and becomes visible last: a consumer that has already read "up to" a later
//! `valid_from` never reads it. Any instant or sequence stamped during the transaction has the
//! same flaw. What orders visibility is PostgreSQL's own snapshots.
//!
//! Every version records the top-level transaction id that inserted it (`immu_xid`, an `xid8`
//! value stamped by the insert trigger: epoch-extended, it never wraps, and a writer cannot choose
//! it; a version inserted in a savepoint records the top-level transaction's id, whose commit is
//! what makes it visible). A snapshot `S = (xmin, xmax, xip)` (`pg_current_snapshot()`) says
//! exactly which transactions had committed when it was taken:
//!
//! > transaction `x` is visible in `S`  ⇔  `x < S.xmin`, or `x < S.xmax` and `x ∉ S.xip`.
//!
//! On one server, a snapshot taken later sees a superset of what an earlier one saw.
//!
//! # The batches, and the proof
//!
//! Each read of the feed is one statement, and one statement reads with one snapshot, `S_k`, which
//! `pg_current_snapshot()` in the same statement returns (the read records it). (The lead's design
//! used a `REPEATABLE READ, READ ONLY` transaction whose first statement takes the snapshot: the
//! same snapshot semantics, in five round trips instead of one.) With the cursor at `S_{k-1}`,
//! snapshot interval `k` is every version visible in `S_k` and not in `S_{k-1}`:
//!
//! ```sql
//! immu_xid >= S_{k-1}.xmin AND (immu_xid >= S_{k-1}.xmax OR immu_xid = ANY (S_{k-1}.xip))  -- not visible in S_{k-1}
//! AND immu_xid < S_k.xmax AND immu_xid <> ALL (S_k.xip)                                 -- visible in S_k
//! ```
//!
//! (the second line holds for every row a statement with snapshot `S_k` sees; it is written out
//! when a partly read interval is resumed later, by another statement with a later snapshot,
//! which sees all of `S_k`). Then, for any sequence of snapshots
//! `S_0 ⊆ S_1 ⊆ S_2 ⊆ ...` (each interval's snapshot is the next one's start):
//!
//! * **No gap.** A committed version `v` of transaction `x` is visible in every snapshot taken
//!   after `x` committed. Let `k` be the first interval whose snapshot sees it (`x` is visible in
//!   `S_k`, not in `S_{k-1}`): `v` is in interval `k`. It is there as soon as a snapshot was taken
//!   after its commit, whenever its `valid_from` is.
//! * **No duplicate.** The intervals are disjoint: `v` is in interval `k` only, since it is visible
//!   in `S_k` and every later snapshot (so not in a later interval) and in no snapshot up to
//!   `S_{k-1}` (so not in an earlier one). Inside an interval, pages walk the history's primary key
//!   `(entity_id, valid_from, version)` (keyset, unique), so each row of the interval is read once.
//! * **Commit order, between intervals.** Everything in interval `k` had committed when `S_k` was
//!   taken; nothing in interval `k + 1` had. So every version of interval `k` committed before
//!   every version of interval `k + 1`. Inside an interval, transactions committed between two
//!   snapshots have no order a reader can observe; there the order is the primary key's.
//! * **Each entity's versions in version order, always.** Version `n + 1` of an entity is written
//!   under the entity's lock after version `n` committed (a writer that bypasses the lock still
//!   waits for the projection row version `n` holds until its commit), so `n` never lands in a
//!   later interval than `n + 1`; in the same interval, the primary key orders them by version.
//!   (Ordering by transaction id instead would not do: a transaction can get its id before
//!   waiting for an entity's lock and append after a transaction with a higher id.)
//!
//! A [`Batch`] is one page of one interval (at most [`batch_size`](Feed::batch_size) changes).
//! The [`Cursor`] after a change names the interval's start `S_{k-1}` and, while the interval is
//! only partly delivered, its end `S_k` and the primary key of the change; after the interval's
//! last change it is `S_k`. Resuming from any cursor re-reads nothing it covers and skips nothing
//! it does not.
//!
//! What the proof assumes, and what the feed checks:
//!
//! * Snapshots of one server's history. After a crash and restart, transaction ids go on from
//!   where they were (a transaction that was running is aborted, and never appears), so a cursor
//!   stays valid. A database restored from a dump into another cluster, or a standby that is
//!   behind, hands out lower ids: a read whose snapshot is older than the cursor's fails with
//!   [`FeedError::CursorAhead`] instead of silently skipping. (`pg_upgrade` keeps the ids.)
//! * Reads from the primary. A hot standby's snapshots do not list running transactions the same
//!   way: the feed refuses to read from one ([`FeedError::Standby`]).
//! * Prepared transactions (two-phase commit) count as running until `COMMIT PREPARED`, and are
//!   delivered in the interval in which that commit becomes visible. They cannot notify
//!   (PostgreSQL refuses to prepare a transaction that did: they write with
//!   `SET LOCAL immu.notify = 'off'`), so a live feed finds them at its next poll.
//! * Versions written before machinery release 4 have no `immu_xid`; they count as committed
//!   before every snapshot: [`Cursor::beginning`] delivers them (first, in its first interval),
//!   any other cursor has seen them.
//!
//! # Live
//!
//! After catching up, the feed waits: on a table configured with
//! `immu.configure_versioning(t, notify => true)` the insert trigger notifies channel
//! `immu_feed_<table oid>` at commit, and the feed listens on it (on a connection of its own, made
//! with the pool's options, held while the feed follows). Notifications are lost while the
//! listening connection is down, so after every (re)connection the feed reads again, and it reads
//! at least every [`poll_interval`](Feed::poll_interval) in any case (the only wake-up of a table
//! that does not notify: notifying is off by default, as PostgreSQL serializes the commits of all
//! notifying transactions of a database). A notification only wakes the feed; what it reads is
//! decided by the snapshots alone.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_core::Stream;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sqlx::postgres::{PgArguments, PgListener, PgRow};
use sqlx::{Arguments, Executor, PgPool, Postgres, Row};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::sql::{DELETED_AT, ENTITY_ID, REVERT_OF, VALID_FROM, VERSION, all_columns, quote};
use crate::{Error, Immutable, PgSnapshot, Result, TableDef, Versioned};

/// The column recording the top-level transaction that inserted a version (machinery release 4).
const XID: &str = "immu_xid";

/// The default [`Feed::batch_size`].
pub const DEFAULT_BATCH_SIZE: usize = 1000;

/// The default [`Feed::poll_interval`].
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The largest batch a feed reads at once ([`Feed::batch_size`] is capped to it).
pub const MAX_BATCH_SIZE: usize = 1_000_000;

/// The version of the cursor's text form.
const FORMAT: &str = "v1";

/// What can go wrong with a change feed, beyond the database errors every call can meet
/// ([`Error::Feed`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// The text is not a cursor this version of immu wrote ([`Cursor`]'s `FromStr`).
    #[error("invalid feed cursor {text:?}: {reason}")]
    InvalidCursor {
        /// The text given (at most 200 characters of it).
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The server's current snapshot is older than the cursor's: the cursor comes from another
    /// server (a database restored from a dump into another cluster, a standby that was behind
    /// when it was promoted), whose transaction ids this server has not reached. Reading on would
    /// skip versions, so the feed refuses. Start again from [`Cursor::beginning`] (or
    /// [`Cursor::now`]) and rebuild what the consumer derived.
    #[error(
        "the feed cursor is ahead of this server (cursor up to transaction {cursor}, server at {server}): it comes from another server or an earlier copy of this one"
    )]
    CursorAhead {
        /// The cursor's highest transaction id bound (`xmax`).
        cursor: i64,
        /// The server's (`pg_current_snapshot()`'s `xmax`).
        server: i64,
    },

    /// The table holds versions of transaction ids this server has not reached: its history was
    /// restored from another cluster (`pg_dump`) whose transaction counter was ahead. Snapshots
    /// here cannot place those versions (every read would find them again), so the feed refuses.
    /// Advance this cluster's transaction id past `version` (`pg_resetwal -x`), then start again.
    #[error(
        "the table holds versions of transaction {version}, and this server has only reached {server}: its history was restored from another cluster; advance the transaction id (pg_resetwal -x) before following it"
    )]
    ForeignTransactions {
        /// The transaction id a version records.
        version: i64,
        /// The server's (`pg_current_snapshot()`'s `xmax`).
        server: i64,
    },

    /// [`Cursor::now`] in a transaction that has written: PostgreSQL leaves a transaction's own
    /// id out of its snapshot, so whether its versions count as seen would depend on other
    /// transactions' timing. Take the cursor before writing, or in another transaction.
    #[error("Cursor::now in a transaction that has written: take the cursor before its first write")]
    WritingTransaction,

    /// The feed's connection is to a hot standby, whose snapshots do not say which transactions
    /// were running the way the feed needs: read the feed from the primary.
    #[error("the change feed reads from the primary: this server is a standby (pg_is_in_recovery())")]
    Standby,
}

/// Whether `later` can have been taken no earlier than `earlier`.
fn not_before(later: &PgSnapshot, earlier: &PgSnapshot) -> bool {
    later.xmin() >= earlier.xmin() && later.xmax() >= earlier.xmax()
}

/// A snapshot as the feed binds it: `bigint` like `immu_xid` (`xid8` values fit: the epoch is far
/// below 2^31).
fn as_bigint(x: u64) -> i64 {
    i64::try_from(x).unwrap_or(i64::MAX)
}

/// Parses a snapshot's text for the feed (a cursor's, or the server's).
fn snapshot(text: &str, whole: &str) -> Result<PgSnapshot> {
    text.parse().map_err(|_| invalid(whole, "a snapshot is xmin:xmax:xip1,xip2,... with xmin <= xip < xmax"))
}

/// Where an interval was left: its end and the primary key of the last change delivered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Within {
    upto: PgSnapshot,
    entity_id: Uuid,
    valid_from: DateTime<Utc>,
    version: i64,
}

/// A position in a change feed: what a consumer has processed. Store it with the consumer's
/// effects, in the same transaction, and resume from it ([`Feed::from`]) for exactly-once
/// processing.
///
/// It is independent of the table: a snapshot of the database, plus, while a large interval is
/// only partly delivered, where in it. Its text form (`Display` / `FromStr`, and serde as a
/// string) is short and stable:
///
/// ```
/// use immu_core::Cursor;
///
/// let start = Cursor::beginning();
/// assert_eq!(start.to_string(), "v1/beginning");
/// let cursor: Cursor = "v1/1200:1205:1201,1203".parse()?;
/// assert_eq!(cursor.to_string().parse::<Cursor>()?, cursor);
/// assert!("v1/1205:1200:".parse::<Cursor>().is_err()); // xmin after xmax
/// # Ok::<(), immu_core::Error>(())
/// ```
///
/// Mid-interval: `v1/<start>/<end>/<entity_id>/<valid_from, µs since 1970>/<version>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// The snapshot everything before has been delivered up to; `None`: the beginning.
    after: Option<PgSnapshot>,
    /// Within the interval that ends at `within.upto`, what has been delivered.
    within: Option<Within>,
}

impl Cursor {
    /// Before every version: a feed from here delivers the whole history first (versions written
    /// before machinery release 4 included), then what comes.
    pub fn beginning() -> Cursor {
        Cursor { after: None, within: None }
    }

    /// After everything committed now: a feed from here delivers only versions whose transactions
    /// commit later.
    ///
    /// Run inside a `REPEATABLE READ` transaction, it is that transaction's snapshot: read the
    /// current state and take the cursor in one such transaction, and the feed from it continues
    /// exactly where the state stops (nothing missed, nothing twice).
    ///
    /// ```no_run
    /// # use immu_core::{Cursor, Immutable};
    /// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
    /// # async fn demo(pool: sqlx::PgPool) -> immu_core::Result<()> {
    /// let mut tx = pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ").await?;
    /// let accounts = Account::query().fetch_all(&mut *tx).await?; // the state...
    /// let cursor = Cursor::now(&mut *tx).await?;                   // ...and where it stops
    /// tx.commit().await?;
    /// let feed = Account::feed(&pool).from(cursor);
    /// # Ok(()) }
    /// ```
    // Spelled out (not `async fn`) to promise `Send` in the signature.
    #[allow(clippy::manual_async_fn)]
    pub fn now<'e, E>(db: E) -> impl Future<Output = Result<Cursor>> + Send + 'e
    where
        E: Executor<'e, Database = Postgres> + 'e,
    {
        async move {
            let (text, standby, writing): (String, bool, bool) = sqlx::query_as(
                "SELECT pg_catalog.pg_current_snapshot()::text, pg_catalog.pg_is_in_recovery(), \
                 pg_catalog.pg_current_xact_id_if_assigned() IS NOT NULL",
            )
            .fetch_one(db)
            .await?;
            if standby {
                return Err(FeedError::Standby.into());
            }
            if writing {
                return Err(FeedError::WritingTransaction.into());
            }
            Ok(Cursor { after: Some(snapshot(&text, &text)?), within: None })
        }
    }

    /// Whether this is [`Cursor::beginning`].
    pub fn is_beginning(&self) -> bool {
        self.after.is_none() && self.within.is_none()
    }

    /// The interval a read from this cursor reads: its start (`None`: the beginning) and its end
    /// when it is fixed already (a partly delivered interval), with the key to continue after.
    fn complete(upto: PgSnapshot) -> Cursor {
        Cursor { after: Some(upto), within: None }
    }
}

impl Default for Cursor {
    /// [`Cursor::beginning`].
    fn default() -> Self {
        Cursor::beginning()
    }
}

fn invalid(text: &str, reason: &'static str) -> Error {
    Error::Feed(FeedError::InvalidCursor { text: text.chars().take(200).collect(), reason })
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(FORMAT)?;
        match &self.after {
            Some(s) => write!(f, "/{s}")?,
            None => f.write_str("/beginning")?,
        }
        if let Some(w) = &self.within {
            write!(f, "/{}/{}/{}/{}", w.upto, w.entity_id, w.valid_from.timestamp_micros(), w.version)?;
        }
        Ok(())
    }
}

impl FromStr for Cursor {
    type Err = Error;

    /// Parses the text form; [`FeedError::InvalidCursor`] (in [`Error::Feed`]) says what is wrong.
    fn from_str(text: &str) -> Result<Cursor> {
        let fail = |reason| invalid(text, reason);
        let parts: Vec<&str> = text.trim().split('/').collect();
        if parts.first() != Some(&FORMAT) {
            return Err(fail("not a feed cursor (it starts with v1/)"));
        }
        let after = match parts.get(1) {
            Some(&"beginning") => None,
            Some(s) => Some(snapshot(s, text)?),
            None => return Err(fail("the cursor's snapshot is missing")),
        };
        let within = match &parts[2..] {
            [] => None,
            [upto, entity_id, valid_from, version] => {
                let upto = snapshot(upto, text)?;
                if after.as_ref().is_some_and(|after| !not_before(&upto, after)) {
                    return Err(fail("an interval ends at a snapshot no earlier than its start"));
                }
                let entity_id = entity_id.parse().map_err(|_| fail("the entity id is a UUID"))?;
                let valid_from = valid_from
                    .parse::<i64>()
                    .ok()
                    .and_then(DateTime::<Utc>::from_timestamp_micros)
                    .ok_or_else(|| fail("valid_from is microseconds since 1970"))?;
                let version = version
                    .parse()
                    .ok()
                    .filter(|v| *v >= 1)
                    .ok_or_else(|| fail("the version is a positive number"))?;
                Some(Within { upto, entity_id, valid_from, version })
            }
            _ => return Err(fail("a cursor has 2 or 6 parts separated by /")),
        };
        Ok(Cursor { after, within })
    }
}

impl Serialize for Cursor {
    /// As its text form.
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cursor {
    /// From its text form.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What a version did to its entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChangeKind {
    /// Version 1: the entity was created.
    Inserted,
    /// A new version with data (an update, a modify, a patch).
    Updated,
    /// A tombstone: the entity was deleted.
    Deleted,
    /// A live version after a tombstone: the entity was undeleted.
    Undeleted,
    /// A live copy of an earlier version's data ([`Immutable::revert`]).
    Reverted,
}

/// One delivered version: the version, what it did, and the cursor after it. Derefs to the
/// version (`change.entity_id`, `change.balance`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change<T> {
    /// What the version did to its entity.
    pub kind: ChangeKind,
    /// The cursor after this change: resuming from it delivers what follows it.
    pub cursor: Cursor,
    /// The version appended (also reachable through `Deref`: `change.version` is its number).
    pub versioned: Versioned<T>,
}

impl<T> Deref for Change<T> {
    type Target = Versioned<T>;
    fn deref(&self) -> &Versioned<T> {
        &self.versioned
    }
}

/// Changes delivered by one read of a [`Feed`]: a page of one snapshot interval (see the
/// [module docs](self)), in the history's primary key order (each entity's versions in version
/// order), and the cursor after them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch<T> {
    /// The changes, at most [`Feed::batch_size`].
    pub changes: Vec<Change<T>>,
    /// The cursor after the last change (after an empty read: the snapshot read).
    pub cursor: Cursor,
}

impl<T> Batch<T> {
    /// How many changes it holds.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The changes, in delivery order.
    pub fn iter(&self) -> std::slice::Iter<'_, Change<T>> {
        self.changes.iter()
    }
}

impl<T> IntoIterator for Batch<T> {
    type Item = Change<T>;
    type IntoIter = std::vec::IntoIter<Change<T>>;
    fn into_iter(self) -> Self::IntoIter {
        self.changes.into_iter()
    }
}

impl<'a, T> IntoIterator for &'a Batch<T> {
    type Item = &'a Change<T>;
    type IntoIter = std::slice::Iter<'a, Change<T>>;
    fn into_iter(self) -> Self::IntoIter {
        self.changes.iter()
    }
}

/// A change feed of entity `T`'s table ([`Immutable::feed`]): every appended version, once, in
/// commit order, from a [`Cursor`]. See the [module docs](self) for the guarantees and their
/// proof.
///
/// [`next_batch`](Feed::next_batch) waits until there is something to deliver;
/// [`read_batch`](Feed::read_batch) reads once; [`into_stream`](Feed::into_stream) yields the
/// changes one by one. The feed reads through its pool; while it waits for new versions it holds
/// one more of the pool's connections to listen for the table's notifications.
///
/// ```no_run
/// # use immu_core::{Cursor, Immutable};
/// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
/// # async fn demo(pool: sqlx::PgPool) -> immu_core::Result<()> {
/// use futures_util::TryStreamExt;
///
/// let mut changes = std::pin::pin!(Account::feed(&pool).from(Cursor::now(&pool).await?).into_stream());
/// while let Some(change) = changes.try_next().await? {
///     println!("{:?}: {} is now {}", change.kind, change.entity_id, change.balance);
/// }
/// # Ok(()) }
/// ```
pub struct Feed<T> {
    pool: PgPool,
    cursor: Cursor,
    batch_size: usize,
    poll_interval: Duration,
    /// The table's notification channel, once known (`immu_feed_<oid>`).
    channel: Option<String>,
    /// The history, schema-qualified and quoted, once found (a versioned table, found on the
    /// caller's `search_path` at the first read; read by that name from then on).
    source: Option<String>,
    listening: Option<Listening>,
    entity: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Feed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("cursor", &self.cursor)
            .field("batch_size", &self.batch_size)
            .field("poll_interval", &self.poll_interval)
            .field("channel", &self.channel)
            .field("listening", &self.listening.is_some())
            .finish()
    }
}

/// The task that listens on the table's channel and wakes the feed.
struct Listening {
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T: Immutable> Feed<T> {
    /// A feed of `T`'s table through `pool`, from [`Cursor::beginning`] unless
    /// [`from`](Feed::from) says otherwise.
    pub(crate) fn new(pool: &PgPool) -> Feed<T> {
        Feed {
            pool: pool.clone(),
            cursor: Cursor::beginning(),
            batch_size: DEFAULT_BATCH_SIZE,
            poll_interval: DEFAULT_POLL_INTERVAL,
            channel: None,
            source: None,
            listening: None,
            entity: PhantomData,
        }
    }

    /// The history's schema-qualified name: the versioned table `T`'s name finds on the caller's
    /// `search_path`, found once; a table of that name that is not versioned (a table of another
    /// schema earlier on the path) is refused, never read instead.
    async fn source(&mut self) -> Result<String> {
        if let Some(source) = &self.source {
            return Ok(source.clone());
        }
        let found = crate::schema::find_versioned(&self.pool, &quote(T::TABLE.name), T::TABLE.name)
            .await
            .map_err(|e| machinery_error::<T>(e))?;
        self.source = Some(found.table.clone());
        Ok(found.table)
    }

    /// Starts (or resumes) after `cursor`: the cursor a consumer stored with its effects, or
    /// [`Cursor::beginning`], or [`Cursor::now`].
    pub fn from(mut self, cursor: Cursor) -> Self {
        self.cursor = cursor;
        self
    }

    /// At most `n` changes per batch (1 to [`MAX_BATCH_SIZE`]; default [`DEFAULT_BATCH_SIZE`]). A larger
    /// interval (a catch-up over the whole history) is delivered in pages of `n`, walking the
    /// history's primary key.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.clamp(1, MAX_BATCH_SIZE);
        self
    }

    /// The longest the feed waits for a notification before it reads again anyway (default
    /// [`DEFAULT_POLL_INTERVAL`]): the bound on delivery delay should a notification be lost.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The cursor after everything delivered so far.
    pub fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    /// The next batch: waits until at least one version after the cursor has committed, then
    /// returns up to [`batch_size`](Feed::batch_size) of them, and moves the feed's cursor after
    /// them. An error leaves the feed where it was: call again to retry (after a dropped
    /// connection or a server restart, the pool reconnects).
    pub async fn next_batch(&mut self) -> Result<Batch<T>> {
        loop {
            let batch = self.read_batch().await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            self.wait().await;
        }
    }

    /// One read, without waiting: up to [`batch_size`](Feed::batch_size) changes committed after
    /// the cursor, possibly none. Moves the feed's cursor after them (after an empty read, to the
    /// snapshot it read, so that later reads scan less).
    pub async fn read_batch(&mut self) -> Result<Batch<T>> {
        let batch = self.read().await.map_err(|e| machinery_error::<T>(e))?;
        self.cursor = batch.cursor.clone();
        Ok(batch)
    }

    /// The changes one by one, each with the cursor after it, waiting for new ones when caught
    /// up; it never ends by itself. An error is yielded as an item and the stream goes on (with
    /// `TryStreamExt::try_next`, the first error ends the loop).
    pub fn into_stream(self) -> impl Stream<Item = Result<Change<T>>> + Send + 'static {
        futures_util::stream::unfold((self, VecDeque::new()), |(mut feed, mut pending)| async move {
            loop {
                if let Some(change) = pending.pop_front() {
                    return Some((Ok(change), (feed, pending)));
                }
                match feed.next_batch().await {
                    Ok(batch) => pending.extend(batch.changes),
                    Err(err) => return Some((Err(err), (feed, pending))),
                }
            }
        })
    }

    /// Waits for a notification on the table's channel, or the poll interval. Starts listening
    /// first if needed; the listener wakes the feed once it listens, so that the next read
    /// happens after `LISTEN`.
    async fn wait(&mut self) {
        if self.listening.is_none()
            && let Some(channel) = &self.channel
        {
            let wake = Arc::new(Notify::new());
            let task = tokio::spawn(listen(self.pool.clone(), channel.clone(), Arc::clone(&wake)));
            self.listening = Some(Listening { wake, task });
        }
        match &self.listening {
            Some(listening) => {
                let _ = tokio::time::timeout(self.poll_interval, listening.wake.notified()).await;
            }
            None => tokio::time::sleep(self.poll_interval).await,
        }
    }

    /// The plan of the next read (`EXPLAIN`, with `ANALYZE` if `analyze`: the read runs, and
    /// delivers nothing): a walk of the history's primary key for a catch-up, a range scan of the
    /// BRIN index on `immu_xid` for a short live interval. The feed does not move.
    ///
    /// ```no_run
    /// # use immu_core::{Cursor, Immutable};
    /// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
    /// # async fn demo(pool: sqlx::PgPool) -> immu_core::Result<()> {
    /// println!("{}", Account::feed(&pool).from(Cursor::beginning()).explain(true).await?);
    /// # Ok(()) }
    /// ```
    pub async fn explain(&mut self, analyze: bool) -> Result<String> {
        let source = self.source().await?;
        let (sql, args) = self.statement(&source)?;
        let options = if analyze { "(ANALYZE, TIMING OFF) " } else { "" };
        let lines: Vec<String> =
            sqlx::query_scalar_with(sqlx::AssertSqlSafe(format!("EXPLAIN {options}{sql}")), args)
                .persistent(false)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| machinery_error::<T>(e.into()))?;
        Ok(lines.join("\n"))
    }

    /// The statement of the next read (see [`read_statement`]).
    fn statement(&self, source: &str) -> Result<(String, PgArguments)> {
        let within = self.cursor.within.as_ref();
        read_statement(
            &T::TABLE,
            source,
            self.cursor.after.as_ref(),
            within.map(|w| &w.upto),
            within.map(|w| (w.entity_id, w.valid_from, w.version)),
            self.batch_size.saturating_add(1),
        )
    }

    /// One read: one statement, whose snapshot is the end of the interval it reads (or, for an
    /// interval partly delivered, bounded by that interval's end).
    async fn read(&mut self) -> Result<Batch<T>> {
        let table = T::TABLE.name;
        let source = self.source().await?;
        let (sql, args) = self.statement(&source)?;
        // An unnamed statement: planned for the values at hand (a range scan of the BRIN index on
        // immu_xid for a short live interval, a walk of the primary key for a catch-up).
        let rows =
            sqlx::query_with(sqlx::AssertSqlSafe(sql), args).persistent(false).fetch_all(&self.pool).await?;
        let first = rows.first().ok_or(Error::Database(sqlx::Error::RowNotFound))?;
        let (text, standby, oid): (String, bool, Option<i64>) =
            (first.try_get(0)?, first.try_get(1)?, first.try_get(2)?);
        if standby {
            return Err(FeedError::Standby.into());
        }
        let Some(oid) = oid else {
            return Err(Error::MissingTable { table: table.to_owned() });
        };
        self.channel.get_or_insert_with(|| format!("immu_feed_{oid}"));
        let now = snapshot(&text, &text)?;
        let now_xmax = now.xmax();
        let cursor = &self.cursor;
        let latest = cursor.within.as_ref().map(|w| &w.upto).or(cursor.after.as_ref());
        if let Some(latest) = latest
            && now.xmax() < latest.xmax()
        {
            return Err(FeedError::CursorAhead {
                cursor: as_bigint(latest.xmax()),
                server: as_bigint(now.xmax()),
            }
            .into());
        }
        let upto = cursor.within.as_ref().map_or(now, |w| w.upto.clone());
        // The left join's row when the interval holds nothing (more) has no version.
        let mut versions: Vec<&PgRow> = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.try_get::<Option<Uuid>, _>(FIRST_COLUMN)?.is_some() {
                versions.push(row);
            }
        }
        let rows = versions;
        let more = rows.len() > self.batch_size;
        let count = rows.len().min(self.batch_size);
        let mut changes = Vec::with_capacity(count);
        for (i, row) in rows.iter().take(count).enumerate() {
            // A version the statement sees whose transaction its snapshot has not reached comes
            // from another cluster's history: it would be found again by every read.
            let tx: Option<i64> = row.try_get(FIRST_COLUMN - 2)?;
            if let Some(tx) = tx
                && tx >= as_bigint(now_xmax)
            {
                return Err(
                    FeedError::ForeignTransactions { version: tx, server: as_bigint(now_xmax) }.into()
                );
            }
            let undeleted: Option<bool> = row.try_get(FIRST_COLUMN - 1)?;
            let version: Versioned<T> = Versioned::decode_at(row, FIRST_COLUMN)?;
            let kind = if version.version == 1 {
                ChangeKind::Inserted
            } else if version.deleted_at.is_some() {
                ChangeKind::Deleted
            } else if version.provenance.revert_of.is_some() {
                ChangeKind::Reverted
            } else if undeleted == Some(true) {
                ChangeKind::Undeleted
            } else {
                ChangeKind::Updated
            };
            let cursor = if i + 1 == count && !more {
                Cursor::complete(upto.clone())
            } else {
                Cursor {
                    after: cursor.after.clone(),
                    within: Some(Within {
                        upto: upto.clone(),
                        entity_id: version.entity_id,
                        valid_from: version.valid_from,
                        version: version.version,
                    }),
                }
            };
            changes.push(Change { kind, cursor, versioned: version });
        }
        let cursor = match changes.last() {
            Some(last) => last.cursor.clone(),
            None => Cursor::complete(upto),
        };
        Ok(Batch { changes, cursor })
    }
}

/// Where a read's row holds the version's first column (`id`): after the snapshot, whether the
/// server is a standby, the table's oid, the version's transaction and whether it undeletes its
/// entity.
const FIRST_COLUMN: usize = 5;

/// The statement of one read, and its arguments: the statement's snapshot
/// (`pg_current_snapshot()`: in one statement, the one it reads with), whether the server is a
/// standby and the table's oid; left-joined with one page of the interval from `after` (`None`:
/// the beginning) to `upto` (`None`: the statement's own snapshot, which every row it reads is
/// visible in), after `key` if given, in primary key order. A page's columns: whether the version
/// undeletes its entity (for live versions after the first that are not reverts; NULL otherwise),
/// then every column reads select. No version: one row whose version columns are NULL.
fn read_statement(
    table: &TableDef,
    source: &str,
    after: Option<&PgSnapshot>,
    upto: Option<&PgSnapshot>,
    key: Option<(Uuid, DateTime<Utc>, i64)>,
    limit: usize,
) -> Result<(String, PgArguments)> {
    let h = |c: &str| format!("\"immu_h\".{}", quote(c));
    let (xid, entity, valid_from, version, deleted_at) =
        (h(XID), h(ENTITY_ID), h(VALID_FROM), h(VERSION), h(DELETED_AT));
    let mut args = PgArguments::default();
    let mut n = 0;
    let mut bind =
        |args: &mut PgArguments,
         add: &dyn Fn(&mut PgArguments) -> std::result::Result<(), sqlx::error::BoxDynError>| {
            n += 1;
            add(args).map(|()| format!("${n}")).map_err(|e| Error::Database(sqlx::Error::Encode(e)))
        };
    let regclass = bind(&mut args, &|a| a.add(source.to_owned()))?;
    let mut conditions = Vec::new();
    let visible_in_upto = match upto {
        Some(upto) => {
            let xmax = bind(&mut args, &|a| a.add(as_bigint(upto.xmax())))?;
            let xip = bind(&mut args, &|a| {
                a.add(upto.in_progress().iter().copied().map(as_bigint).collect::<Vec<i64>>())
            })?;
            Some(format!("({xid} < {xmax} AND {xid} <> ALL ({xip}))"))
        }
        None => None,
    };
    match (after, visible_in_upto) {
        // Versions written before release 4 (no immu_xid) count as committed before every snapshot.
        (None, Some(visible)) => conditions.push(format!("({xid} IS NULL OR {visible})")),
        (None, None) => {}
        (Some(after), visible) => {
            let xmin = bind(&mut args, &|a| a.add(as_bigint(after.xmin())))?;
            let xmax = bind(&mut args, &|a| a.add(as_bigint(after.xmax())))?;
            let xip = bind(&mut args, &|a| {
                a.add(after.in_progress().iter().copied().map(as_bigint).collect::<Vec<i64>>())
            })?;
            conditions.push(format!("{xid} >= {xmin} AND ({xid} >= {xmax} OR {xid} = ANY ({xip}))"));
            conditions.extend(visible);
        }
    }
    if let Some((e, vf, v)) = key {
        let e = bind(&mut args, &|a| a.add(e))?;
        let vf = bind(&mut args, &|a| a.add(vf))?;
        let v = bind(&mut args, &|a| a.add(v))?;
        conditions.push(format!("({entity}, {valid_from}, {version}) > ({e}, {vf}, {v})"));
    }
    let limit = bind(&mut args, &|a| a.add(i64::try_from(limit).unwrap_or(i64::MAX)))?;
    let p = |c: &str| format!("\"immu_p\".{}", quote(c));
    let undeleted = format!(
        "CASE WHEN {version} > 1 AND {deleted_at} IS NULL AND {revert_of} IS NULL THEN \
         (SELECT {p_deleted} IS NOT NULL FROM {t} AS \"immu_p\" WHERE {p_entity} = {entity} \
         AND ({p_entity}, {p_valid_from}, {p_version}) < ({entity}, {valid_from}, {version}) \
         ORDER BY {p_entity} DESC, {p_valid_from} DESC, {p_version} DESC LIMIT 1) END",
        revert_of = h(REVERT_OF),
        p_deleted = p(DELETED_AT),
        p_entity = p(ENTITY_ID),
        p_valid_from = p(VALID_FROM),
        p_version = p(VERSION),
        t = source,
    );
    let page = format!(
        "SELECT {xid} AS \"immu_tx\", {undeleted} AS \"immu_undeleted\", {columns} FROM {t} AS \"immu_h\"{conditions} \
         ORDER BY {entity}, {valid_from}, {version} LIMIT {limit}",
        columns = all_columns(table).map(h).collect::<Vec<_>>().join(", "),
        t = source,
        conditions = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        },
    );
    let r = |c: &str| format!("\"immu_r\".{}", quote(c));
    let sql = format!(
        "SELECT \"immu_s\".*, \"immu_r\".* FROM (SELECT pg_catalog.pg_current_snapshot()::text, \
         pg_catalog.pg_is_in_recovery(), pg_catalog.to_regclass({regclass})::oid::bigint) AS \"immu_s\" \
         LEFT JOIN LATERAL ({page}) AS \"immu_r\" ON true ORDER BY {}, {}, {}",
        r(ENTITY_ID),
        r(VALID_FROM),
        r(VERSION),
    );
    Ok((sql, args))
}

/// A read of a table whose machinery predates the feed (no `immu_xid` column) reports the
/// machinery, not a bare database error.
fn machinery_error<T: Immutable>(err: Error) -> Error {
    match err {
        Error::Database(sqlx::Error::Database(db))
            if db.code().as_deref() == Some("42703") && db.message().contains(XID) =>
        {
            Error::MachineryMismatch {
                table: T::TABLE.name,
                message: format!(
                    "{} (the change feed needs machinery release 4: run immu's migrations)",
                    db.message()
                ),
            }
        }
        other => other.missing_projection_of(T::TABLE.name),
    }
}

/// Listens on `channel` and wakes the feed on each notification, and after each (re)connection
/// (notifications sent while it was not listening are lost). Ends when the pool closes.
async fn listen(pool: PgPool, channel: String, wake: Arc<Notify>) {
    let retry = Duration::from_millis(250);
    // A connection of its own, outside the feed's pool (a listener holds its connection while it
    // waits: on the pool, it would starve the reads it wakes).
    let own = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .connect_lazy_with((*pool.connect_options()).clone());
    loop {
        if pool.is_closed() {
            own.close().await;
            return;
        }
        let mut listener = match PgListener::connect_with(&own).await {
            Ok(listener) => listener,
            Err(sqlx::Error::PoolClosed) => return,
            Err(_) => {
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        if listener.listen(&channel).await.is_err() {
            tokio::time::sleep(retry).await;
            continue;
        }
        // Listening now: a read from here on misses no notification.
        wake.notify_one();
        loop {
            match listener.try_recv().await {
                // A notification, or a lost connection that the listener re-established (and
                // listens again): either way, read.
                Ok(_) => wake.notify_one(),
                Err(sqlx::Error::PoolClosed) => return,
                Err(_) => break,
            }
        }
        drop(listener);
        tokio::time::sleep(retry).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let start = "10:20:12,15".parse::<PgSnapshot>().unwrap();
        let end = "15:30:15".parse::<PgSnapshot>().unwrap();
        let within = Within {
            upto: end.clone(),
            entity_id: Uuid::now_v7(),
            valid_from: DateTime::<Utc>::from_timestamp_micros(1_764_633_600_123_456).unwrap(),
            version: 7,
        };
        for cursor in [
            Cursor::beginning(),
            Cursor::complete(start.clone()),
            Cursor { after: None, within: Some(within.clone()) },
            Cursor { after: Some(start), within: Some(within) },
        ] {
            let text = cursor.to_string();
            assert_eq!(text.parse::<Cursor>().unwrap(), cursor, "{text}");
            let json = serde_json::to_string(&cursor).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<Cursor>(&json).unwrap(), cursor);
        }
        assert_eq!(Cursor::complete(end).to_string(), "v1/15:30:15");
    }

    const SNAPSHOT: &str = "a snapshot is xmin:xmax:xip1,xip2,... with xmin <= xip < xmax";

    #[test]
    fn bad_cursors_are_refused_with_a_reason() {
        for (text, reason) in [
            ("", "not a feed cursor (it starts with v1/)"),
            ("v2/beginning", "not a feed cursor (it starts with v1/)"),
            ("v1", "the cursor's snapshot is missing"),
            ("v1/10:20", SNAPSHOT),
            ("v1/x:20:", SNAPSHOT),
            ("v1/-1:20:", SNAPSHOT),
            ("v1/30:20:", SNAPSHOT),
            ("v1/10:20:25", SNAPSHOT),
            ("v1/10:20:/x", "a cursor has 2 or 6 parts separated by /"),
            (
                "v1/10:20:/5:8:/0190f0b8-0000-7000-8000-000000000000/0/1",
                "an interval ends at a snapshot no earlier than its start",
            ),
            ("v1/10:20:/10:30:/nope/0/1", "the entity id is a UUID"),
            (
                "v1/10:20:/10:30:/0190f0b8-0000-7000-8000-000000000000/x/1",
                "valid_from is microseconds since 1970",
            ),
            ("v1/10:20:/10:30:/0190f0b8-0000-7000-8000-000000000000/0/0", "the version is a positive number"),
        ] {
            match text.parse::<Cursor>() {
                Err(Error::Feed(FeedError::InvalidCursor { text: t, reason: r })) => {
                    assert_eq!((t.as_str(), r), (text, reason));
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    const ACCOUNTS: TableDef =
        TableDef { name: "accounts", rust_name: "Account", shape: 1, upcast: None, columns: &[] };

    #[test]
    fn a_read_is_one_statement_over_the_interval_by_primary_key() {
        let after = "10:20:12".parse::<PgSnapshot>().unwrap();
        let upto = "20:30:".parse::<PgSnapshot>().unwrap();
        let key = Some((Uuid::nil(), DateTime::<Utc>::MIN_UTC, 1));
        // A partly delivered interval: both snapshots bound it, the key continues it.
        let (sql, _) =
            read_statement(&ACCOUNTS, "public.accounts", Some(&after), Some(&upto), key, 10).unwrap();
        assert!(sql.starts_with(r#"SELECT "immu_s".*, "immu_r".* FROM (SELECT pg_catalog.pg_current_snapshot()::text, pg_catalog.pg_is_in_recovery(), pg_catalog.to_regclass($1)::oid::bigint) AS "immu_s" LEFT JOIN LATERAL ("#), "{sql}");
        assert!(sql.contains(r#"WHERE "immu_h"."immu_xid" >= $4 AND ("immu_h"."immu_xid" >= $5 OR "immu_h"."immu_xid" = ANY ($6)) AND ("immu_h"."immu_xid" < $2 AND "immu_h"."immu_xid" <> ALL ($3)) AND ("immu_h"."entity_id", "immu_h"."valid_from", "immu_h"."version") > ($7, $8, $9) ORDER BY "immu_h"."entity_id", "immu_h"."valid_from", "immu_h"."version" LIMIT $10) AS "immu_r" ON true"#), "{sql}");
        // A new interval from a snapshot: up to the statement's own.
        let (sql, _) = read_statement(&ACCOUNTS, "public.accounts", Some(&after), None, None, 10).unwrap();
        assert!(sql.contains(r#"WHERE "immu_h"."immu_xid" >= $2 AND ("immu_h"."immu_xid" >= $3 OR "immu_h"."immu_xid" = ANY ($4)) ORDER BY"#), "{sql}");
        // From the beginning: everything the statement sees; continued, versions without immu_xid too.
        let (sql, _) = read_statement(&ACCOUNTS, "public.accounts", None, None, None, 10).unwrap();
        assert!(sql.contains(r#"FROM public.accounts AS "immu_h" ORDER BY"#), "{sql}");
        let (sql, _) = read_statement(&ACCOUNTS, "public.accounts", None, Some(&upto), key, 10).unwrap();
        assert!(sql.contains(r#"WHERE ("immu_h"."immu_xid" IS NULL OR ("immu_h"."immu_xid" < $2 AND "immu_h"."immu_xid" <> ALL ($3))) AND"#), "{sql}");
    }
}

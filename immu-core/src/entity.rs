//! The entity: what `#[derive(Immutable)]` implements, and the static description of a versioned table.

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Acquire, Executor, Postgres};
use uuid::Uuid;

use crate::sql::{
    ACTOR, APPLICATION, CONTEXT, DB_USER, DELETED_AT, ENTITY_ID, ID, REASON, REVERT_OF, VALID_FROM, VERSION,
};
use crate::{Query, Result, Versioned, Written, read, write};

/// The columns immu adds to every versioned table that reads return before the entity's own: the
/// version's identity and time, then its [`Provenance`](crate::Provenance). (`immu_shape`, also
/// immu's, is read only by entities that upcast.)
///
/// A struct field may not use one of these names as its column name (nor any name starting with
/// `immu_`); the derive refuses it.
pub const RESERVED_COLUMNS: [&str; 11] =
    [ID, ENTITY_ID, VERSION, VALID_FROM, DELETED_AT, ACTOR, REASON, CONTEXT, DB_USER, APPLICATION, REVERT_OF];

/// Static description of a versioned table: its name and the entity's own columns.
///
/// Produced by `#[derive(Immutable)]` as [`Immutable::TABLE`]. The reserved columns
/// ([`RESERVED_COLUMNS`]) are not listed in [`columns`](Self::columns); every versioned table has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableDef {
    /// The table's name in PostgreSQL (unquoted; immu always quotes it).
    pub name: &'static str,
    /// The name of the Rust type the table stores.
    pub rust_name: &'static str,
    /// The entity's own columns, in struct field order.
    pub columns: &'static [ColumnDef],
    /// The shape of the entity the type writes (`#[immu(shape = N)]`, 1 by default): recorded
    /// with every version it writes, in the `immu_shape` column.
    pub shape: i32,
    /// The entity of the same table that reads versions written by older shapes
    /// (`#[immu(upcast = Type)]`): reads also select its columns, and decode such a version as
    /// that type, then convert it (`From`).
    pub upcast: Option<&'static TableDef>,
}

/// One of the entity's own columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnDef {
    /// Column name in PostgreSQL (unquoted).
    pub name: &'static str,
    /// Name of the Rust field it maps to.
    pub field: &'static str,
    /// PostgreSQL type used by the generated DDL (for example `bigint`, `text`, `jsonb`).
    pub sql_type: &'static str,
    /// Whether the column accepts SQL `NULL` (the field is an `Option`).
    pub nullable: bool,
    /// Whether the field is stored as JSON through serde (`#[immu(json)]`).
    pub json: bool,
    /// The table of the entity this column refers to (`#[immu(references = Customer)]`): the
    /// column holds that entity's `entity_id`, and the DDL adds a foreign key to its projection
    /// table (`<table>_current`, one row per entity).
    pub references: Option<&'static str>,
}

/// Where an entity's own columns are in a row, for the code the derive generates. Not a public API.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum RowLayout {
    /// At consecutive indices from the given one, in [`TableDef::columns`] order (then the rest
    /// of the table's data columns: `immu_shape` and older shapes' columns, for an upcasting entity).
    At(usize),
    /// By name: the row names every column of the table.
    Named,
    /// The data columns of the given (newer) entity start at the given index: an older shape's
    /// columns, read in a row laid out for a newer one.
    Within(usize, &'static TableDef),
}

impl RowLayout {
    /// The index in `row` of own column `i`, named `name`.
    pub fn index(self, row: &PgRow, i: usize, name: &str) -> std::result::Result<usize, sqlx::Error> {
        use sqlx::{Column, Row};
        match self {
            RowLayout::At(first) => Ok(first + i),
            RowLayout::Named => row.try_column(name).map(|c| c.ordinal()),
            RowLayout::Within(first, table) => crate::sql::data_columns(table)
                .position(|c| c == name)
                .map(|at| first + at)
                .ok_or_else(|| sqlx::Error::ColumnNotFound(name.to_owned())),
        }
    }
}

/// For the code the derive generates for `#[immu(upcast = S)]` on `T`: the version in `row` as
/// `S`, when an older shape than `T`'s wrote it; `None` when `T` reads it itself (its own shape or
/// a later one, or none recorded: a raw insert). Not a public API.
#[doc(hidden)]
pub fn upcast<T: Immutable, S: Immutable>(
    row: &PgRow,
    layout: RowLayout,
) -> std::result::Result<Option<S>, sqlx::Error> {
    use sqlx::Row;
    let (shape_at, older) = match layout {
        // The shape follows T's own columns.
        RowLayout::At(first) => (first + T::TABLE.columns.len(), RowLayout::Within(first, &T::TABLE)),
        RowLayout::Within(..) | RowLayout::Named => {
            (layout.index(row, usize::MAX, crate::sql::SHAPE)?, layout)
        }
    };
    let shape: Option<i32> = row.try_get(shape_at)?;
    match shape {
        Some(shape) if shape < T::TABLE.shape => Ok(Some(S::__decode(row, older)?)),
        _ => Ok(None),
    }
}

impl TableDef {
    /// Looks up one of the entity's own columns by its SQL name.
    pub fn column(&self, name: &str) -> Option<&'static ColumnDef> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// A versioned entity: a plain struct whose every change is stored as a new, immutable row.
///
/// Implement it with `#[derive(Immutable)]` (see the [crate docs](crate) for the attributes);
/// the methods below are provided. Writes accept anything sqlx can begin a transaction on
/// (`&PgPool`, `&mut PgConnection`, `&mut Transaction`); inside a caller's transaction they
/// run in a savepoint, so a failed write leaves the caller's transaction usable and loses
/// nothing else. Reads accept any executor (`&PgPool`, `&mut *conn`, `&mut *tx`).
///
/// Every write to an existing entity first takes a transaction-scoped advisory lock keyed on
/// the table and the entity ([`lock_key`](crate::lock_key)), then reads the latest version in a
/// new statement, then appends. Concurrent writers to one entity therefore queue up, never lose
/// an update, and versions stay 1, 2, 3, ... without gaps.
///
/// Bound a write with `lock_timeout` / `statement_timeout` (it fails with
/// [`Error::LockTimeout`](crate::Error::LockTimeout) and writes nothing) rather than by dropping
/// its future: sqlx sends nothing when a future is dropped, so a write dropped while waiting for
/// the lock still takes it on the server once the holder commits, and its transaction is rolled
/// back only when the connection is next used (a pooled connection: when it returns to the pool;
/// your own `PgConnection`: at its next query, so until then the entity stays locked).
///
/// ```no_run
/// use immu_core::{Immutable, Versioned};
///
/// #[derive(Debug, Clone, Immutable)]
/// #[immu(table = "accounts")]
/// struct Account {
///     owner: String,
///     balance: i64,
/// }
///
/// # async fn demo(pool: sqlx::PgPool) -> immu_core::Result<()> {
/// let v1 = Account::insert(&pool, Account { owner: "ada".into(), balance: 10 }).await?;
/// let v2 = Account::modify(&pool, v1.entity_id, |a| a.balance += 5).await?;
/// assert_eq!((v2.version, v2.balance), (2, 15));
/// let then = Account::find_as_of(&pool, v1.entity_id, v1.valid_from).await?;
/// assert_eq!(then.balance, 10);
/// # Ok(()) }
/// ```
pub trait Immutable: Sized + Send + Sync + Unpin + 'static {
    /// The table this entity is stored in.
    const TABLE: TableDef;

    #[doc(hidden)]
    /// `TABLE.name`, on its own: two entities that reference each other read each other's table
    /// name while their `TABLE`s are being defined.
    const __TABLE_NAME: &'static str;

    #[doc(hidden)]
    /// The entity's cached SQL statements (built once per type).
    fn __sql() -> &'static crate::sql::Sql;

    #[doc(hidden)]
    /// Decodes the entity's own columns from `row`, found where `columns` says.
    fn __decode(row: &PgRow, columns: crate::RowLayout) -> std::result::Result<Self, sqlx::Error>;

    #[doc(hidden)]
    /// Encodes the entity's own columns, in [`TableDef::columns`] order, as bind arguments.
    fn __encode(&self, args: &mut PgArguments) -> std::result::Result<(), BoxDynError>;

    /// Inserts a new entity at version 1 with a fresh `entity_id` (a UUIDv7).
    fn insert<'c, A>(db: A, value: Self) -> impl Future<Output = Result<Versioned<Self>>> + Send + 'c
    where
        A: Acquire<'c, Database = Postgres> + Send + 'c,
    {
        write::insert(db, value)
    }

    /// Appends `value` as the entity's next version; appends nothing if `value` equals the current
    /// version's data ([`Written::Unchanged`](crate::Written::Unchanged)).
    ///
    /// Fails with [`Error::NotFound`](crate::Error::NotFound) if the entity never existed and
    /// [`Error::Deleted`](crate::Error::Deleted) if it is deleted (undelete it first; see
    /// [Answers](crate#answers)).
    fn update<'c, A>(
        db: A,
        entity_id: Uuid,
        value: Self,
    ) -> impl Future<Output = Result<Written<Self>>> + Send + 'c
    where
        A: Acquire<'c, Database = Postgres> + Send + 'c,
    {
        write::update(db, entity_id, None, value)
    }

    /// Appends `value` only if the entity's current version is still `expected_version`
    /// (optimistic concurrency); otherwise fails with
    /// [`Error::VersionConflict`](crate::Error::VersionConflict) and writes nothing.
    fn update_if_version<'c, A>(
        db: A,
        entity_id: Uuid,
        expected_version: i64,
        value: Self,
    ) -> impl Future<Output = Result<Written<Self>>> + Send + 'c
    where
        A: Acquire<'c, Database = Postgres> + Send + 'c,
    {
        write::update(db, entity_id, Some(expected_version), value)
    }

    /// Read-modify-write: runs `f` on the current version while the entity's lock is held and
    /// appends the result (nothing if `f` changed nothing). Concurrent `modify` calls on one
    /// entity never lose an update. For a change the database can compute itself, in one round
    /// trip, see [`patch`](Self::patch).
    ///
    /// Fails like [`update`](Self::update) for an entity that never existed or is deleted.
    fn modify<'c, A, F>(
        db: A,
        entity_id: Uuid,
        f: F,
    ) -> impl Future<Output = Result<Written<Self>>> + Send + 'c
    where
        A: Acquire<'c, Database = Postgres> + Send + 'c,
        F: FnOnce(&mut Self) + Send + 'c,
    {
        write::modify(db, entity_id, move |value: &mut Self| {
            f(value);
            Ok::<(), crate::Error>(())
        })
    }

    /// Like [`modify`](Self::modify), but `f` may refuse the change by returning an error, in
    /// which case nothing is written and the error is returned. Your error type must be
    /// convertible from [`immu_core::Error`](crate::Error).
    fn try_modify<'c, A, F, E>(
        db: A,
        entity_id: Uuid,
        f: F,
    ) -> impl Future<Output = std::result::Result<Written<Self>, E>> + Send + 'c
    where
        A: Acquire<'c, Database = Postgres> + Send + 'c,
        F: FnOnce(&mut Self) -> std::result::Result<(), E> + Send + 'c,
        E: From<crate::Error> + Send + 'c,
    {
        write::modify(db, entity_id, f)
    }

    /// A partial update: set only the named columns, to values or to expressions over the current
    /// version (`balance = balance + 30`), computed by the database under the entity's lock in one
    /// round trip. Await the [`Patch`](crate::Patch) to run it.
    ///
    /// ```no_run
    /// # use immu_core::{Immutable, sea_query::{Expr, ExprTrait}};
    /// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
    /// # async fn demo(pool: sqlx::PgPool, id: uuid::Uuid) -> immu_core::Result<()> {
    /// Account::patch(&pool, id).set(Account::BALANCE, Expr::col(Account::BALANCE).add(30)).await?;
    /// # Ok(()) }
    /// ```
    fn patch<'c, A>(db: A, entity_id: Uuid) -> crate::Patch<'c, Self, A>
    where
        A: Acquire<'c, Database = Postgres> + Send + 'c,
    {
        crate::Patch::new(db, entity_id)
    }

    /// Reverts the entity to version `version`: appends a live version carrying that version's
    /// data (a tombstone's data is that of the version it deleted), recorded as a revert of it
    /// ([`Provenance::revert_of`](crate::Provenance::revert_of)). Appends nothing if the current
    /// data already equals it.
    ///
    /// Fails with [`Error::NotFound`](crate::Error::NotFound) (with the version) if the entity has
    /// no such version, and with [`Error::Deleted`](crate::Error::Deleted) if the entity is
    /// deleted: a revert does not undelete; [`undelete`](Self::undelete) first, then revert.
    fn revert<'c, A>(
        db: A,
        entity_id: Uuid,
        version: i64,
    ) -> impl Future<Output = Result<Written<Self>>> + Send + 'c
    where
        A: Acquire<'c, Database = Postgres> + Send + 'c,
    {
        write::revert(db, entity_id, Some(version), None)
    }

    /// Reverts the entity to its data as of instant `at`: [`revert`](Self::revert) to the version
    /// current then. Fails with [`Error::NotFound`](crate::Error::NotFound) if the entity did not
    /// exist yet at `at`, and with [`Error::Deleted`](crate::Error::Deleted) if it is deleted now.
    fn revert_as_of<'c, A>(
        db: A,
        entity_id: Uuid,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Written<Self>>> + Send + 'c
    where
        A: Acquire<'c, Database = Postgres> + Send + 'c,
    {
        write::revert(db, entity_id, None, Some(at))
    }

    /// Deletes the entity by appending a tombstone: a copy of the last data with `deleted_at`
    /// set. Returns the tombstone. History stays; [`undelete`](Self::undelete) revives it.
    ///
    /// Fails with [`Error::NotFound`](crate::Error::NotFound) if the entity never existed and
    /// [`Error::Deleted`](crate::Error::Deleted) if it is already deleted.
    fn delete<'c, A>(db: A, entity_id: Uuid) -> impl Future<Output = Result<Versioned<Self>>> + Send + 'c
    where
        A: Acquire<'c, Database = Postgres> + Send + 'c,
    {
        write::delete::<Self, A>(db, entity_id)
    }

    /// Revives a deleted entity by appending a live copy of its last data.
    ///
    /// Fails with [`Error::NotDeleted`](crate::Error::NotDeleted) if the entity is live.
    fn undelete<'c, A>(db: A, entity_id: Uuid) -> impl Future<Output = Result<Versioned<Self>>> + Send + 'c
    where
        A: Acquire<'c, Database = Postgres> + Send + 'c,
    {
        write::undelete::<Self, A>(db, entity_id)
    }

    /// The current version of the entity.
    ///
    /// Fails with [`Error::NotFound`](crate::Error::NotFound) if it never existed and
    /// [`Error::Deleted`](crate::Error::Deleted) if its latest version is a tombstone (see
    /// [Answers](crate#answers)). Use [`OptionalExt::optional`](crate::OptionalExt::optional)
    /// for an `Option`.
    fn find<'c, E>(db: E, entity_id: Uuid) -> impl Future<Output = Result<Versioned<Self>>> + Send + 'c
    where
        E: Executor<'c, Database = Postgres> + 'c,
    {
        read::current(db, entity_id)
    }

    /// The version that was current at instant `at`.
    ///
    /// Fails with [`Error::NotFound`](crate::Error::NotFound) if the entity did not exist yet
    /// (or never existed) and [`Error::Deleted`](crate::Error::Deleted) if it was deleted at `at`
    /// (see [Answers](crate#answers)).
    fn find_as_of<'c, E>(
        db: E,
        entity_id: Uuid,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Versioned<Self>>> + Send + 'c
    where
        E: Executor<'c, Database = Postgres> + 'c,
    {
        read::as_of(db, entity_id, at)
    }

    /// One exact version (a tombstone is returned as is, with `deleted_at` set).
    ///
    /// Fails with [`Error::NotFound`](crate::Error::NotFound) if there is no such version (see
    /// [Answers](crate#answers)).
    fn find_version<'c, E>(
        db: E,
        entity_id: Uuid,
        version: i64,
    ) -> impl Future<Output = Result<Versioned<Self>>> + Send + 'c
    where
        E: Executor<'c, Database = Postgres> + 'c,
    {
        read::version(db, entity_id, version)
    }

    /// A change feed of this entity's table: every version appended, once, in commit order, from
    /// a [`Cursor`](crate::Cursor) the consumer stores with its effects (see [`feed`](crate::feed)).
    /// Starts at [`Cursor::beginning`](crate::Cursor::beginning) unless
    /// [`from`](crate::Feed::from) says otherwise.
    ///
    /// ```no_run
    /// # use immu_core::{Cursor, Immutable};
    /// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
    /// # async fn demo(pool: sqlx::PgPool, stored: String) -> immu_core::Result<()> {
    /// let mut feed = Account::feed(&pool).from(stored.parse::<Cursor>()?);
    /// let batch = feed.next_batch().await?;
    /// # Ok(()) }
    /// ```
    fn feed(pool: &sqlx::PgPool) -> crate::Feed<Self> {
        crate::Feed::new(pool)
    }

    /// A list query over this entity: current versions unless told otherwise (see [`Query`]).
    ///
    /// ```no_run
    /// # use immu_core::{Immutable, sea_query::{ExprTrait, Order}};
    /// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
    /// # async fn demo(pool: sqlx::PgPool) -> immu_core::Result<()> {
    /// let top = Account::query()
    ///     .filter(Account::BALANCE.gt(100))
    ///     .order_by(Account::BALANCE, Order::Desc)
    ///     .limit(10)
    ///     .fetch_all(&pool)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    fn query() -> Query<Self> {
        Query::new()
    }

    /// The referenced entities, each as of its own instant, in one query: for a batch of
    /// referrers, `(referenced id, referrer's instant)` pairs, e.g. each order's customer as it
    /// was when the order was placed. The result is aligned with the input, and each element is
    /// what [`find_as_of`](Self::find_as_of)`(..)`[`.optional()`](crate::OptionalExt::optional)
    /// answers for its pair: the version, or `None` where the entity did not exist at that
    /// instant or was deleted at it (see [Answers](crate#answers); for the tombstone itself, use
    /// [`find_version`](Self::find_version) or [`history`](Self::history)).
    ///
    /// For many entities at one instant (or current), use
    /// [`query().ids(..)`](Query::ids) (with [`as_of`](Query::as_of)).
    ///
    /// ```no_run
    /// # use immu_core::Immutable;
    /// # #[derive(Immutable)] #[immu(table = "customers")] struct Customer { name: String }
    /// # #[derive(Immutable)] #[immu(table = "orders")] struct Order { #[immu(references = Customer)] customer_id: uuid::Uuid }
    /// # async fn demo(pool: sqlx::PgPool) -> immu_core::Result<()> {
    /// let orders = Order::query().fetch_all(&pool).await?;
    /// // Each order's customer as it was when that order version was written: one query.
    /// let customers = Customer::find_each_as_of(&pool, orders.iter().map(|o| (o.customer_id, o.valid_from))).await?;
    /// for (order, customer) in orders.iter().zip(&customers) {
    ///     let name = customer.as_ref().map_or("(unknown)", |c| c.name.as_str());
    ///     println!("order {} by {name}", order.entity_id);
    /// }
    /// # Ok(()) }
    /// ```
    fn find_each_as_of<'c, E, I>(
        db: E,
        refs: I,
    ) -> impl Future<Output = Result<Vec<Option<Versioned<Self>>>>> + Send + 'c
    where
        E: Executor<'c, Database = Postgres> + 'c,
        I: IntoIterator<Item = (Uuid, DateTime<Utc>)>,
    {
        read::each_as_of(db, refs.into_iter().unzip())
    }

    /// The version a write stored, by the id of its version row, or `None` if no version with that
    /// id was stored (a yes-or-no answer, see [Answers](crate#answers); a delete's version is its
    /// tombstone). For a write whose outcome is unknown: [`Error::OutcomeUnknown`](crate::Error::OutcomeUnknown)
    /// carries the entity and the version row id.
    ///
    /// ```no_run
    /// # use immu_core::{Error, Immutable};
    /// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
    /// # async fn demo(pool: sqlx::PgPool, id: uuid::Uuid) -> immu_core::Result<()> {
    /// match Account::update(&pool, id, Account { owner: "ada".into(), balance: 5 }).await {
    ///     Err(Error::OutcomeUnknown { entity_id, version_id, .. }) => {
    ///         // Later, once the broken connection's session has ended:
    ///         let stored = Account::find_write(&pool, entity_id, version_id).await?;
    ///         println!("stored: {}", stored.is_some());
    ///     }
    ///     other => { other?; }
    /// }
    /// # Ok(()) }
    /// ```
    fn find_write<'c, E>(
        db: E,
        entity_id: Uuid,
        version_id: Uuid,
    ) -> impl Future<Output = Result<Option<Versioned<Self>>>> + Send + 'c
    where
        E: Executor<'c, Database = Postgres> + 'c,
    {
        read::by_id(db, entity_id, version_id)
    }

    /// Every version of the entity, tombstones included, in version order.
    ///
    /// Fails with [`Error::NotFound`](crate::Error::NotFound) if the entity never existed: it
    /// names one entity, like [`find`](Self::find), while a list such as
    /// [`query().ids(..)`](Query::ids) answers an unknown entity by leaving it out (see
    /// [Answers](crate#answers)).
    fn history<'c, E>(
        db: E,
        entity_id: Uuid,
    ) -> impl Future<Output = Result<Vec<Versioned<Self>>>> + Send + 'c
    where
        E: Executor<'c, Database = Postgres> + 'c,
    {
        read::history(db, entity_id)
    }

    /// Every version of the entity, each with its [`Diff`](crate::Diff) from the version before
    /// (for version 1, from nothing): who changed which fields, from what, to what. One query.
    ///
    /// Fails with [`Error::NotFound`](crate::Error::NotFound) if the entity never existed.
    fn history_with_diffs<'c, E>(
        db: E,
        entity_id: Uuid,
    ) -> impl Future<Output = Result<Vec<(Versioned<Self>, crate::Diff)>>> + Send + 'c
    where
        E: Executor<'c, Database = Postgres> + 'c,
    {
        crate::diff::history_with_diffs(db, entity_id)
    }

    /// The field-level difference between versions `from` and `to` of the entity (any two, in
    /// either order). Fails with [`Error::NotFound`](crate::Error::NotFound) (with the version) if
    /// either does not exist.
    fn diff<'c, E>(
        db: E,
        entity_id: Uuid,
        from: i64,
        to: i64,
    ) -> impl Future<Output = Result<crate::Diff>> + Send + 'c
    where
        E: Executor<'c, Database = Postgres> + 'c,
    {
        crate::diff::between::<Self, E>(db, entity_id, from, to)
    }
    /// A [digest](crate::ledger::Digest) of the table: which versions exist now, exactly, and the
    /// hash of every entity's chain head. Store it outside the database; verify it later with
    /// [`verify`](Self::verify)`.against(&digest)`. See [`ledger`](crate::ledger).
    fn digest<'c, A>(db: A) -> impl Future<Output = Result<crate::ledger::Digest>> + Send + 'c
    where
        A: Acquire<'c, Database = Postgres> + Send + 'c,
    {
        crate::ledger::digest_table(db, crate::sql::quote(Self::TABLE.name))
    }

    /// Verification of the table's hash chains (and, with
    /// [`against`](crate::ledger::Verify::against), of a digest taken earlier): `.await` it for a
    /// [`Report`](crate::ledger::Report) of every entity whose chain breaks. See
    /// [`ledger`](crate::ledger).
    fn verify<'c, A>(db: A) -> crate::ledger::Verify<'c, A>
    where
        A: Acquire<'c, Database = Postgres> + Send + 'c,
    {
        crate::ledger::verify_table(db, crate::sql::quote(Self::TABLE.name))
    }
}

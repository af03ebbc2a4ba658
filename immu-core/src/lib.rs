//! # immu: append-only, versioned PostgreSQL tables for sqlx
//!
//! Mark a plain struct with `#[derive(Immutable)]` and every change to one of its entities
//! becomes a new immutable row instead of an `UPDATE`. History is never lost: you can read the
//! current version, the version as of any past instant, any version by number, or the whole
//! history, and the database itself refuses `UPDATE`, `DELETE` and `TRUNCATE` of the table.
//!
//! ```no_run
//! use immu_core::{Immutable, Versioned};
//!
//! #[derive(Debug, Clone, Immutable)]
//! #[immu(table = "accounts")]
//! struct Account {
//!     owner: String,
//!     balance: i64,
//! }
//!
//! # async fn demo(your_migrations: &sqlx::migrate::Migrator) -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
//! immu_core::MIGRATOR.run(&pool).await?; // immu's own objects (schema `immu`)
//! your_migrations.run(&pool).await?;     // sqlx::migrate!(): CREATE TABLE accounts (...); SELECT immu.add_versioning('accounts');
//! immu_core::schema::check::<Account>(&pool).await?; // the struct, the table and its machinery agree
//!
//! let v1: Versioned<Account> = Account::insert(&pool, Account { owner: "ada".into(), balance: 100 }).await?;
//! let v2 = Account::modify(&pool, v1.entity_id, |a| a.balance -= 30).await?;
//! assert_eq!((v2.version, v2.balance), (2, 70));
//!
//! let then = Account::find_as_of(&pool, v1.entity_id, v1.valid_from).await?;
//! assert_eq!(then.balance, 100);
//!
//! Account::delete(&pool, v1.entity_id).await?;
//! assert!(Account::find(&pool, v1.entity_id).await.unwrap_err().is_deleted());
//! Account::undelete(&pool, v1.entity_id).await?;
//! assert_eq!(Account::history(&pool, v1.entity_id).await?.len(), 4);
//! # Ok(()) }
//! ```
//!
//! ## The stored model
//!
//! Every version is one row of the entity's table:
//!
//! | column       | type          | meaning                                                        |
//! |--------------|---------------|----------------------------------------------------------------|
//! | `id`         | `uuid`        | this version row (UUIDv7)                                      |
//! | `entity_id`  | `uuid`        | the entity, stable across versions (UUIDv7)                    |
//! | `version`    | `bigint`      | 1, 2, 3, ... without gaps, never repeated                      |
//! | `valid_from` | `timestamptz` | when this version became current (database clock)              |
//! | `deleted_at` | `timestamptz` | set only on a tombstone, the version a delete appends          |
//! | `immu_shape` | `integer`     | the shape of the struct that wrote it (`#[immu(shape)]`)       |
//! | your fields  | mapped        | see [`ColumnType`], `#[immu(json)]`, `#[immu(sql_type)]`        |
//!
//! Reads return [`Versioned<T>`]: the metadata plus your struct, which it derefs to. The table
//! `<table>_current` (the projection) holds each entity's latest version, kept in step by the
//! database, so that current reads cost what a plain table's do.
//!
//! ## Tables and their machinery
//!
//! A versioned table comes from a migration of yours: your columns and constraints, then
//! `SELECT immu.add_versioning('accounts');`, which adds immu's columns, the projection and the
//! *machinery*: the insert trigger that checks every version, the refusals of `UPDATE`,
//! `DELETE` and `TRUNCATE`, and the routines the write path calls, all generated inside
//! PostgreSQL from the table's columns. [`schema::create_table`] prints that migration for a
//! struct. After a migration changes the table's columns, `SELECT immu.sync_versioning('accounts');`
//! in the same migration regenerates the machinery; immu's own migrations upgrade it between
//! releases. Until then, writes fail with [`Error::SchemaDrift`] instead of writing anything, and
//! [`schema::check`] lists every difference with the SQL that fixes it.
//!
//! ## The derive
//!
//! | attribute                             | on     | effect                                           |
//! |---------------------------------------|--------|--------------------------------------------------|
//! | `#[immu(table = "accounts")]`         | struct | table name (default: the struct name in snake_case) |
//! | `#[immu(crate = "path")]`             | struct | path to `immu_core` if you renamed or re-exported it |
//! | `#[immu(shape = 2)]`                  | struct | the shape this struct writes, recorded in every version (`immu_shape`); default 1 |
//! | `#[immu(upcast = Older)]`             | struct | versions of older shapes are read as `Older` (same table) and converted with `From`; with `shape` |
//! | `#[immu(rename = "col")]`             | field  | column name (default: the field name)            |
//! | `#[immu(json)]`                       | field  | stored as `jsonb` through serde                   |
//! | `#[immu(sql_type = "numeric(12,2)")]` | field  | column type in the generated DDL (with `json`: instead of `jsonb`) |
//! | `#[immu(references = Customer)]`      | field  | the `entity_id` of another entity (`Uuid`, or `Option<Uuid>` for an optional one; `Self` for a tree); a foreign key, and the column of [`Query::join`] / [`Query::join_referencing`] |
//!
//! It also generates one [`Column`] constant per field and per reserved column
//! (`Account::BALANCE`, `Account::ENTITY_ID`, ...), for filters, orders and joins.
//!
//! It refuses, at compile time: enums, tuple and unit structs, generics, unknown attribute keys,
//! invalid identifiers, fields whose column would collide with a reserved column or use the
//! reserved prefix `immu_`, and an `upcast` from a type of another table.
//!
//! ## Writes, locking and time
//!
//! Writes to an existing entity take `pg_advisory_xact_lock(`[`lock_key`]`(table, entity))`,
//! then read the latest version, then append, in one call of the table's write routine; see
//! [`Immutable`] for the methods and their errors. The database stamps `valid_from` with its
//! clock when the version is inserted, never before the previous version's, so versions never go
//! back in time. Writes accept a pool, a connection or your own transaction (they use a savepoint
//! in it). A write whose outcome cannot be known (a connection lost while it committed) is looked
//! up by its version row id and reported as written, or as [`Error::OutcomeUnknown`]; a retry
//! with the same id never stores it twice.
//!
//! An update, [`modify`](Immutable::modify), [`patch`](Immutable::patch) (a partial update the
//! database computes: `balance = balance + 30`) or [`revert`](Immutable::revert) whose data
//! equals the latest version's appends nothing and says so: [`Written::Unchanged`].
//!
//! ## Who and why
//!
//! Every version records who wrote it and why ([`Provenance`]): the actor, reason and context an
//! [`Audit`] gave for the task ([`Audit::scope`]) or the database transaction
//! ([`Audit::set_local`]), and the database user and application name the database stamps.
//! [`Immutable::history_with_diffs`] and [`Immutable::diff`] say what changed, field by field
//! ([`Diff`]); [`Query::by_actor`] lists what an actor changed.
//!
//! ```no_run
//! # use immu_core::{Audit, Immutable, sea_query::{Expr, ExprTrait}};
//! # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
//! # async fn demo(pool: sqlx::PgPool, id: uuid::Uuid) -> immu_core::Result<()> {
//! let written = Audit::actor("ada")
//!     .with_reason("deposit")
//!     .scope(Account::patch(&pool, id).set(Account::BALANCE, Expr::col(Account::BALANCE).add(30)))
//!     .await?;
//! assert_eq!(written.provenance.actor.as_deref(), Some("ada"));
//! # Ok(()) }
//! ```
//!
//! ## Proving history
//!
//! Each entity's versions form a hash chain the database computes on insert. [`Immutable::verify`]
//! recomputes every chain and reports each break ([`ledger::Report`]); [`Immutable::digest`]
//! takes a [`ledger::Digest`] to keep outside the database, which a later verification checks
//! (`.against(&digest)`): nothing it covered changed, disappeared or was back-dated, even by a
//! superuser. See [`ledger`].
//!
//! ## Following changes
//!
//! [`Immutable::feed`] delivers every version appended to an entity's table, once, in commit
//! order, from a [`Cursor`] the consumer stores with its effects (exactly-once): a catch-up from
//! history, then live, woken by `LISTEN`. The cursor is a PostgreSQL snapshot, so a transaction
//! that writes first and commits last is delivered too. See [`feed`].
//!
//! ## Answers
//!
//! A missing or deleted entity gets one answer per kind of call, whatever the call:
//!
//! * **A call that names one entity** answers about it, and an entity that is not there is an
//!   error: [`NotFound`](Error::NotFound) when it never existed (or did not exist yet at the
//!   instant asked for, or has no such version), [`Deleted`](Error::Deleted) when its version at
//!   the instant asked for is a tombstone. [`find`](Immutable::find),
//!   [`find_as_of`](Immutable::find_as_of), [`Snapshot::find`] and the writes answer so
//!   ([`update`](Immutable::update), [`modify`](Immutable::modify),
//!   [`delete`](Immutable::delete); [`undelete`](Immutable::undelete) answers
//!   [`NotDeleted`](Error::NotDeleted) for a live entity).
//!   [`find_version`](Immutable::find_version) and [`history`](Immutable::history) ask for
//!   stored versions rather than the entity at an instant: they answer `NotFound` for an
//!   unknown entity (or version), and return tombstones as the versions they are
//!   ([`Versioned::is_deleted`]). [`OptionalExt::optional`] turns `NotFound` and `Deleted` into
//!   `Ok(None)`.
//! * **A call that lists** answers with what it finds and never fails for an entity that is not
//!   there: [`Query`] (`fetch*`, `count`, `exists`, [`ids`](Query::ids)), [`Join`] and
//!   [`LeftJoin`] leave out an entity that does not exist at the instant and one deleted at it,
//!   unless [`with_deleted`](Query::with_deleted) (then its tombstone, `is_deleted()`);
//!   [`all_versions`](Query::all_versions) lists stored versions, tombstones included. An empty
//!   list is the answer, not an error.
//! * **A batch of single reads**, [`find_each_as_of`](Immutable::find_each_as_of), answers for
//!   each pair what `find_as_of(..).optional()` answers: the version, or `None` for an entity
//!   that does not exist or is deleted at that instant.
//! * [`find_write`](Immutable::find_write) answers a yes-or-no question ("was this write
//!   stored?"): `Ok(None)` is no.
//!
//! ## Errors
//!
//! Every failure is an [`Error`] variant, and a failed call wrote nothing, except
//! [`OutcomeUnknown`](Error::OutcomeUnknown), which says it cannot know:
//!
//! * what the entity's state refuses (see [Answers](#answers)): [`NotFound`](Error::NotFound),
//!   [`Deleted`](Error::Deleted), [`NotDeleted`](Error::NotDeleted),
//!   [`VersionConflict`](Error::VersionConflict) (another writer moved the entity first);
//! * what the database refuses: [`AppendOnly`](Error::AppendOnly) (an in-place change),
//!   [`InvalidHistory`](Error::InvalidHistory) (a raw insert breaking the rules),
//!   [`InvalidValue`](Error::InvalidValue), [`UnknownReference`](Error::UnknownReference),
//!   [`PermissionDenied`](Error::PermissionDenied), [`ActorRequired`](Error::ActorRequired) (a
//!   table that requires an actor, and a write without one);
//! * what a partial update refuses: [`OlderShape`](Error::OlderShape) (the latest version is of an
//!   older shape the entity upcasts);
//! * what the setup refuses: [`MissingTable`](Error::MissingTable),
//!   [`UnknownColumn`](Error::UnknownColumn), [`SchemaDrift`](Error::SchemaDrift),
//!   [`UnsafeSetup`](Error::UnsafeSetup), [`MachineryMismatch`](Error::MachineryMismatch),
//!   [`InvalidIdentifier`](Error::InvalidIdentifier);
//! * what tamper evidence refuses: [`InvalidDigest`](Error::InvalidDigest) (a digest that cannot
//!   be checked), [`InvalidSnapshot`](Error::InvalidSnapshot) (text that is no snapshot),
//!   [`InTransaction`](Error::InTransaction) (a verification given a connection inside a
//!   transaction);
//! * what interrupted it: [`LockTimeout`](Error::LockTimeout), [`Canceled`](Error::Canceled),
//!   [`SerializationFailure`](Error::SerializationFailure) (every SQLSTATE 40001 and 40P01, on
//!   reads and writes alike), [`OutcomeUnknown`](Error::OutcomeUnknown);
//! * what a change feed refuses: [`Feed`](Error::Feed) (a cursor that does not parse, or comes
//!   from another server; see [`feed`]);
//! * anything else: [`Database`](Error::Database) (sqlx's error: the pool, the connection, the
//!   driver, or a database error immu has no variant for).
//!
//! Whether to try again is one question for any error, [`Error::is_retryable`]: `true` for
//! `VersionConflict`, `LockTimeout`, `Canceled`, `SerializationFailure` and a pool timeout, each
//! a guarantee that nothing was written; its docs say which retry (the call, or your whole
//! transaction). `OutcomeUnknown` is not retryable: look the write up first.
#![forbid(unsafe_code)]

mod audit;
mod column;
mod diff;
mod entity;
mod error;
pub mod feed;
pub mod ledger;
mod lock;
mod pg_snapshot;
mod query;
mod read;
mod resolve;
pub mod schema;
mod snapshot;
mod sql;
mod versioned;
mod write;

pub use audit::{Audit, Provenance, Scoped};
pub use column::Column;
pub use diff::{Change, Diff, FieldChange};
#[doc(hidden)]
pub use entity::RowLayout;
pub use entity::{ColumnDef, Immutable, RESERVED_COLUMNS, TableDef};
pub use error::{
    ACTOR_REQUIRED_SQLSTATE, APPEND_ONLY_SQLSTATE, Error, INVALID_HISTORY_SQLSTATE, OptionalExt, Result,
    SCHEMA_DRIFT_SQLSTATE, UNSAFE_SETUP_SQLSTATE,
};
pub use feed::{Cursor, Feed};
pub use lock::lock_key;
pub use pg_snapshot::PgSnapshot;
pub use query::{Join, LeftJoin, Query, Resolution};
pub use schema::ColumnType;
pub use snapshot::Snapshot;
pub use versioned::{Versioned, Written};
pub use write::Patch;

/// sea-query, the query builder immu's filters and orders are written in (`ExprTrait`, `Order`,
/// `Expr`, `Condition`), re-exported so your version always matches immu's.
pub use sea_query;

#[cfg(feature = "derive")]
pub use immu_derive::Immutable;

/// immu's own migrations (`migrations/` at the repository root): the `immu` schema, its catalog
/// of versioned tables and the functions that generate, check and upgrade each table's machinery.
/// Each release's last migration upgrades the machinery of every versioned table to it.
///
/// Run it before the migrations that create your versioned tables. It records what it applied in
/// `immu._migrations`, apart from your application's `_sqlx_migrations`, so the two migrators
/// never see each other's entries.
///
/// With the sqlx CLI instead: `sqlx migrate run --config <immu>/immu-core/sqlx.toml --source
/// <immu>/migrations` (the configuration names immu's table), then `sqlx migrate run` for yours.
///
/// ```no_run
/// /// At startup: immu's objects first, then your migrations (for example `sqlx::migrate!()`).
/// async fn migrate(pool: &sqlx::PgPool, app: &sqlx::migrate::Migrator) -> Result<(), sqlx::migrate::MigrateError> {
///     immu_core::MIGRATOR.run(pool).await?;
///     app.run(pool).await
/// }
/// ```
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Items used by the code that `#[derive(Immutable)]` generates. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::RowLayout;
    pub use crate::entity::upcast;

    /// Whether two strings are equal, in a constant: the derive's check that an upcast source
    /// is an entity of the same table.
    pub const fn same_str(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }
    pub use crate::sql::Sql;
    pub use sqlx;
    pub use sqlx::error::BoxDynError;
    pub use sqlx::postgres::{PgArguments, PgRow};
    pub use sqlx::types::Json;
    pub use sqlx::{Arguments, Row};
    pub use std::sync::OnceLock;
}

/// The README's Rust examples, compiled by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

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
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
//! immu_core::MIGRATOR.run(&pool).await?; // immu's own objects (schema `immu`)
//! // ... and your migration with the DDL of immu_core::schema::create_table::<Account>()
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
//! | your fields  | mapped        | see [`ColumnType`], `#[immu(json)]`, `#[immu(sql_type)]`        |
//!
//! Reads return [`Versioned<T>`]: the metadata plus your struct, which it derefs to.
//!
//! ## The derive
//!
//! | attribute                             | on     | effect                                           |
//! |---------------------------------------|--------|--------------------------------------------------|
//! | `#[immu(table = "accounts")]`         | struct | table name (default: the struct name in snake_case) |
//! | `#[immu(crate = "path")]`             | struct | path to `immu_core` if you renamed it             |
//! | `#[immu(rename = "col")]`             | field  | column name (default: the field name)            |
//! | `#[immu(json)]`                       | field  | stored as `jsonb` through serde                   |
//! | `#[immu(sql_type = "numeric(12,2)")]` | field  | column type in the generated DDL                 |
//!
//! It refuses, at compile time: enums, tuple and unit structs, generics, unknown attribute keys,
//! invalid identifiers and fields whose column would collide with a reserved column.
//!
//! ## Writes, locking and time
//!
//! Writes to an existing entity take `pg_advisory_xact_lock(`[`lock_key`]`(table, entity))`,
//! then read the latest version in a new statement, then append; see [`Immutable`] for the
//! methods and their errors. `valid_from` comes from the database clock after the lock:
//! `GREATEST(clock_timestamp(), previous.valid_from)`, so versions never go back in time.
//! Writes accept a pool, a connection or your own transaction (they use a savepoint in it).
//!
//! ## Errors
//!
//! Every failure is an [`Error`] variant: [`NotFound`](Error::NotFound),
//! [`Deleted`](Error::Deleted), [`NotDeleted`](Error::NotDeleted),
//! [`VersionConflict`](Error::VersionConflict), [`AppendOnly`](Error::AppendOnly) (the
//! database refused an in-place change), [`InvalidIdentifier`](Error::InvalidIdentifier),
//! [`MissingTable`](Error::MissingTable) and [`Database`](Error::Database). A failed call writes
//! nothing.
#![forbid(unsafe_code)]

mod column;
mod entity;
mod error;
mod lock;
mod query;
mod read;
mod resolve;
pub mod schema;
mod snapshot;
mod sql;
mod versioned;
mod write;

pub use column::Column;
#[doc(hidden)]
pub use entity::RowLayout;
pub use entity::{ColumnDef, Immutable, RESERVED_COLUMNS, TableDef};
pub use error::{
    APPEND_ONLY_SQLSTATE, Error, INVALID_HISTORY_SQLSTATE, OptionalExt, Result, SCHEMA_DRIFT_SQLSTATE,
    UNSAFE_SETUP_SQLSTATE,
};
pub use lock::lock_key;
pub use query::{Join, Query, Resolution};
pub use schema::ColumnType;
pub use snapshot::Snapshot;
pub use versioned::Versioned;

/// sea-query, the query builder immu's filters and orders are written in (`ExprTrait`, `Order`,
/// `Expr`, `Condition`), re-exported so your version always matches immu's.
pub use sea_query;

#[cfg(feature = "derive")]
pub use immu_derive::Immutable;

/// immu's own migrations (`migrations/` at the repository root): the `immu` schema and the
/// trigger function that makes versioned tables append-only.
///
/// Run it before the migrations that create your versioned tables. It records what it applied in
/// `immu._migrations`, apart from your application's `_sqlx_migrations`, so the two migrators
/// never see each other's entries.
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

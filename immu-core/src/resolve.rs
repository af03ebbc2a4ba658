//! Version resolution: the SQL that picks which stored version of an entity a read sees.
//!
//! This module is the one place that knows how "current" and "as of an instant" are resolved.
//! Single-entity reads and the write path's "latest version" lookup both use
//! [`latest`]:
//!
//! ```sql
//! -- current: the highest version (served by the primary key (entity_id, version))
//! SELECT ... FROM "accounts" WHERE "entity_id" = $1 ORDER BY "version" DESC LIMIT 1
//! -- as of T: the last version that became valid at or before T
//! -- (served by the index (entity_id, valid_from, version); valid_from never decreases
//! -- along versions, so this is the highest version with valid_from <= T)
//! SELECT ... FROM "accounts" WHERE "entity_id" = $1 AND "valid_from" <= $2
//!   ORDER BY "valid_from" DESC, "version" DESC LIMIT 1
//! ```
//!
//! Whether the resolved version is a tombstone is decided by the caller: reads report
//! [`Error::Deleted`](crate::Error::Deleted), writes refuse to build on it.

use sea_query::{Expr, ExprTrait, Order, Query, SelectStatement};

use crate::TableDef;
use crate::sql::{DELETED_AT, ENTITY_ID, VALID_FROM, VERSION};

/// Which version of an entity to resolve.
#[derive(Debug, Clone, Copy)]
pub(crate) enum At {
    /// The highest version.
    Current,
    /// The version that was current at the instant bound to this placeholder.
    Instant(usize),
}

/// `SELECT <columns> FROM <table> WHERE entity_id = $<entity> ... LIMIT 1`: the single version of
/// one entity that `at` resolves to, tombstones included.
pub(crate) fn latest<I>(table: &TableDef, columns: I, entity: usize, at: At) -> SelectStatement
where
    I: IntoIterator<Item = &'static str>,
{
    let mut select = Query::select();
    select.columns(columns).from(table.name).and_where(Expr::col(ENTITY_ID).eq(crate::sql::param(entity)));
    match at {
        At::Current => {
            select.order_by(VERSION, Order::Desc);
        }
        At::Instant(instant) => {
            select
                .and_where(Expr::col(VALID_FROM).lte(crate::sql::param(instant)))
                .order_by(VALID_FROM, Order::Desc)
                .order_by(VERSION, Order::Desc);
        }
    }
    select.limit(1);
    select
}

/// The reserved columns a write needs from the latest version to build the next one.
pub(crate) const LATEST_META: [&str; 4] = [ENTITY_ID, VERSION, VALID_FROM, DELETED_AT];

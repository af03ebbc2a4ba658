//! Version resolution: the SQL that picks which stored version of an entity a read sees.
//!
//! This module is the one place that knows how "current" and "as of an instant" are resolved.
//! The canonical definition reads the history alone:
//!
//! ```sql
//! -- current: the highest version
//! ... WHERE "version" = (SELECT MAX("version") FROM "accounts" WHERE "entity_id" = <entity>)
//! -- as of T: the highest version that became valid at or before T, found with one probe of the
//! -- primary key (entity_id, valid_from, version): valid_from never decreases along versions, so
//! -- the latest valid_from <= T is that version, however long the history is (a MAX(version)
//! -- ... WHERE valid_from <= T would scan every earlier version)
//! SELECT ... FROM "accounts" WHERE "entity_id" = <entity> AND "valid_from" <= T
//!   ORDER BY "valid_from" DESC, "version" DESC LIMIT 1
//! ```
//!
//! Reads use a projection of it: the table's `<table>_current` holds, for each entity, the row of
//! its highest version, kept in step by the history's insert trigger within the inserting
//! statement (see [`schema`](crate::schema)). So:
//!
//! * a current read is a primary-key lookup of `<table>_current` ([`current`]);
//! * a current list scans `<table>_current`, which is as large as a plain table holding the same
//!   entities, instead of every version ([`source`]);
//! * an as-of read probes the history ([`latest`]);
//! * an as-of list takes the current row of each entity that has not changed since T, and probes
//!   the history for the others ([`source`]);
//! * [`Query::from_history`](crate::Query::from_history) resolves from the history alone, with the
//!   canonical shapes ([`resolved`]); the test suite checks that both give the same rows.
//!
//! User filters always apply to the resolved rows, never to older versions. Whether the resolved
//! version is a tombstone is decided by the caller: reads report
//! [`Error::Deleted`](crate::Error::Deleted) or hide it, writes refuse to build on it.

use sea_query::{
    Alias, Condition, Expr, ExprTrait, IntoIden, JoinType, Order, Query, SelectStatement, UnionType,
};

use crate::TableDef;
use crate::sql::{DELETED_AT, ENTITY_ID, VALID_FROM, VERSION, all_columns, current_table_name};

/// Which version of an entity to resolve.
#[derive(Debug, Clone)]
pub(crate) enum At {
    /// The highest version.
    Current,
    /// The version that was current at the instant this expression evaluates to: a value, the
    /// same for every row.
    Instant(Expr),
    /// The version that was current at an instant that differs per row (a column of the other
    /// table of a join in history mode).
    RowInstant(Expr),
}

/// `SELECT <columns> FROM "<table>_current" WHERE entity_id = <entity>`: the entity's latest
/// version, tombstone included, by primary key.
pub(crate) fn current<I>(table: &TableDef, columns: I, entity: Expr) -> SelectStatement
where
    I: IntoIterator<Item = &'static str>,
{
    let mut select = Query::select();
    select
        .columns(columns)
        .from(Alias::new(current_table_name(table.name)))
        .and_where(Expr::col(ENTITY_ID).eq(entity));
    select
}

/// Where a list reads a table's resolved rows: a table or a subquery, which the list names by the
/// table's own name (so that filters on `"accounts"."balance"` apply to the resolved rows), and
/// the condition that keeps the resolved rows.
pub(crate) struct Source {
    /// What the list selects from.
    pub(crate) from: Relation,
    /// Keeps the resolved versions (and hides tombstones unless asked for).
    pub(crate) condition: Condition,
}

/// The relation of a [`Source`].
pub(crate) enum Relation {
    /// A table of the database.
    Table(String),
    /// A subquery.
    Subquery(Box<SelectStatement>),
}

/// The rows of `table` resolved `at`, tombstones included only if `deleted`; with `from_history`,
/// through the canonical shapes over the history ([`resolved`]).
///
/// ```sql
/// -- current: the projection
/// FROM "accounts_current" AS "accounts" WHERE "accounts"."deleted_at" IS NULL
/// -- as of T: entities unchanged since T are their current row; the others are probed
/// FROM (SELECT <columns> FROM "accounts_current" AS "immu_c" WHERE "immu_c"."valid_from" <= T
///       UNION ALL
///       SELECT "immu_h".<columns>
///       FROM (SELECT "entity_id" FROM "accounts_current" WHERE "valid_from" > T ORDER BY "entity_id") AS "immu_c"
///       INNER JOIN LATERAL (<the as-of probe of "immu_c"."entity_id">) AS "immu_h" ON TRUE) AS "accounts"
/// WHERE "accounts"."deleted_at" IS NULL
/// ```
///
/// The first branch is right because an entity whose latest version became valid at or before
/// T has had no version since, and the second because one whose latest version is later than T
/// needs the history; entities created after T find nothing there. PostgreSQL pushes the list's
/// filters into both branches.
pub(crate) fn source(table: &TableDef, at: At, deleted: bool, from_history: bool) -> Source {
    let hide = |condition: Condition| {
        if deleted { condition } else { condition.add(Expr::col((table.name, DELETED_AT)).is_null()) }
    };
    match at {
        At::RowInstant(_) => history(table, at, deleted),
        _ if from_history => history(table, at, deleted),
        At::Current => Source {
            from: Relation::Table(current_table_name(table.name)),
            condition: hide(Condition::all()),
        },
        At::Instant(instant) => {
            let current = current_table_name(table.name);
            let (c, h) = ("immu_c", "immu_h");
            let mut unchanged = Query::select();
            unchanged
                .exprs(all_columns(table).map(|col| Expr::col((c, col))))
                .from_as(Alias::new(current.clone()), c)
                .and_where(Expr::col((c, VALID_FROM)).lte(instant.clone()));
            let probe = latest(
                table,
                Some(inner_alias(table)),
                Some(all_columns(table)),
                Expr::col((c, ENTITY_ID)),
                At::Instant(instant.clone()),
            );
            // In key order, so that consecutive probes walk the history's primary key left to
            // right (measured 35% faster than in the projection's order at 50k probes).
            let mut ids = Query::select();
            ids.column(ENTITY_ID)
                .from(Alias::new(current))
                .and_where(Expr::col(VALID_FROM).gt(instant))
                .order_by(ENTITY_ID, Order::Asc);
            let mut changed = Query::select();
            changed
                .exprs(all_columns(table).map(|col| Expr::col((h, col))))
                .from_subquery(ids, c)
                .join_lateral(JoinType::InnerJoin, probe, h, Condition::all());
            unchanged.union(UnionType::All, changed);
            Source { from: Relation::Subquery(Box::new(unchanged)), condition: hide(Condition::all()) }
        }
    }
}

/// [`Source`] of the history table with the canonical condition.
fn history(table: &TableDef, at: At, deleted: bool) -> Source {
    Source { from: Relation::Table(table.name.to_owned()), condition: resolved(table, at, deleted) }
}

/// `SELECT <columns> FROM <table> [AS alias] WHERE entity_id = <entity> ... LIMIT 1`: the single
/// version of one entity that `at` resolves to, tombstones included.
///
/// `columns: None` selects `*`: every column of the table, in the table's order.
pub(crate) fn latest<I>(
    table: &TableDef,
    alias: Option<&'static str>,
    columns: Option<I>,
    entity: Expr,
    at: At,
) -> SelectStatement
where
    I: IntoIterator<Item = &'static str>,
{
    // Columns are qualified only when the scan is aliased (inside a list's subquery).
    let col = |name: &'static str| match alias {
        Some(alias) => Expr::col((alias, name)),
        None => Expr::col(name),
    };
    let mut select = Query::select();
    match columns {
        Some(columns) => select.exprs(columns.into_iter().map(col)),
        None => select.column(sea_query::Asterisk),
    };
    match alias {
        Some(alias) => select.from_as(table.name, alias.into_iden()),
        None => select.from(table.name),
    };
    select.and_where(col(ENTITY_ID).eq(entity));
    match at {
        At::Current => {}
        At::Instant(instant) | At::RowInstant(instant) => {
            select.and_where(col(VALID_FROM).lte(instant));
        }
    }
    // The primary key's order (entity_id, valid_from, version), backwards.
    select.order_by_expr(col(VALID_FROM), Order::Desc).order_by_expr(col(VERSION), Order::Desc).limit(1);
    select
}

/// The condition on the rows of `table` (referenced by its own name) that keeps the version of
/// each entity that `at` resolves to, tombstones included only if `deleted`:
///
/// ```sql
/// -- current: MAX(version), which reads the entity's versions in the primary key
/// "accounts"."version" = (SELECT MAX("immu_v"."version") FROM "accounts" AS "immu_v"
///     WHERE "immu_v"."entity_id" = "accounts"."entity_id")
/// AND "accounts"."deleted_at" IS NULL
/// -- as of T: the `latest` shape, one probe of the primary key however long the history
/// "accounts"."valid_from" <= $1 AND "accounts"."version" = (SELECT "immu_v"."version"
///     FROM "accounts" AS "immu_v" WHERE "immu_v"."entity_id" = "accounts"."entity_id"
///     AND "immu_v"."valid_from" <= $2 ORDER BY "immu_v"."valid_from" DESC, "immu_v"."version" DESC LIMIT 1)
/// AND "accounts"."deleted_at" IS NULL
/// ```
///
/// Every row of the table is checked, so lists read this way take time in proportion to the
/// whole history; [`source`] reads the projection instead. Measured on PostgreSQL 15 (100k
/// entities x 10 versions, a filter matching 1%), the correlated MAX beat a join to
/// `GROUP BY entity_id` (120-160 ms against 330-390 ms); for as-of, MAX(version) with
/// `valid_from <= T` must read every earlier version of the entity, so the LIMIT 1 form is used.
pub(crate) fn resolved(table: &TableDef, at: At, deleted: bool) -> Condition {
    let alias = inner_alias(table);
    let outer = |name: &'static str| Expr::col((table.name, name));
    let mut condition = Condition::all();
    let subquery = match at {
        At::Current => {
            let mut max = Query::select();
            max.expr(Expr::col((alias, VERSION)).max())
                .from_as(table.name, alias.into_iden())
                .and_where(Expr::col((alias, ENTITY_ID)).eq(outer(ENTITY_ID)));
            max
        }
        At::Instant(instant) | At::RowInstant(instant) => {
            // Implied by the subquery; lets the planner discard later versions before probing.
            condition = condition.add(outer(VALID_FROM).lte(instant.clone()));
            latest(table, Some(alias), Some([VERSION]), outer(ENTITY_ID), At::Instant(instant))
        }
    };
    condition = condition.add(outer(VERSION).eq(Expr::SubQuery(None, Box::new(subquery.into()))));
    if !deleted {
        condition = condition.add(outer(DELETED_AT).is_null());
    }
    condition
}

/// The alias of the inner scan in [`resolved`]: distinct from the outer table's name.
fn inner_alias(table: &TableDef) -> &'static str {
    if table.name == "immu_v" { "immu_w" } else { "immu_v" }
}

//! The SQL text of every statement immu runs for one entity type, rendered once with sea-query
//! and cached for the life of the process (see [`Immutable::__sql`](crate::Immutable)).
//!
//! Placeholders are numbered explicitly (`$1`, `$2`, ...) so that the read and write paths bind
//! values in a fixed, documented order with sqlx's own encoders: any type sqlx can encode (your
//! `#[derive(sqlx::Type)]` enums included) can be a column.

use sea_query::{Expr, ExprTrait, Keyword, Order, PostgresQueryBuilder, Query, SelectStatement};

use crate::TableDef;
use crate::entity::RESERVED_COLUMNS;
use crate::resolve::{self, At};

pub(crate) const ID: &str = "id";
pub(crate) const ENTITY_ID: &str = "entity_id";
pub(crate) const VERSION: &str = "version";
pub(crate) const VALID_FROM: &str = "valid_from";
pub(crate) const DELETED_AT: &str = "deleted_at";
/// The column recording which shape of the entity wrote a version.
pub(crate) const SHAPE: &str = "immu_shape";
pub(crate) const ACTOR: &str = "immu_actor";
pub(crate) const REASON: &str = "immu_reason";
pub(crate) const CONTEXT: &str = "immu_context";
pub(crate) const DB_USER: &str = "immu_db_user";
pub(crate) const APPLICATION: &str = "immu_application";
pub(crate) const REVERT_OF: &str = "immu_revert_of";

/// `at`, moved into PostgreSQL's timestamp range: an instant before its earliest timestamp
/// (4714-11-24 BC) reads like that earliest one, when no version can exist yet. (chrono's latest
/// instant is within PostgreSQL's range.)
pub(crate) fn pg_instant(at: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    let earliest = chrono::NaiveDate::from_ymd_opt(-4713, 11, 24)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    std::cmp::max(at, earliest)
}

/// A positional bind placeholder.
pub(crate) fn param(n: usize) -> Expr {
    Expr::Keyword(Keyword::Custom(format!("${n}").into()))
}

/// Cached SQL statements of one versioned table. Built by [`Sql::new`] on first use.
#[doc(hidden)]
#[derive(Debug)]
pub struct Sql {
    /// Current version of `$1`. Columns: reserved then own.
    pub(crate) current: String,
    /// Version of `$1` as of instant `$2`.
    pub(crate) as_of: String,
    /// Version `$2` of `$1`.
    pub(crate) version: String,
    /// All versions of `$1` in version order.
    pub(crate) history: String,
    /// The version of entity `$1` whose version row id is `$2`, if stored.
    pub(crate) by_id: String,
    /// Takes the write lock of entity `$1` (key `$2`) and returns its latest version, read after the
    /// lock (the table's `<table>_immu_latest` function). Every column of the projection, by name.
    pub(crate) lock_latest: String,
    /// Entities `$1` (uuid[]) each as of its instant in `$2` (timestamptz[]). Columns: the
    /// 1-based position in the arrays, then all columns.
    pub(crate) each_as_of: String,
    /// The write statements, by [`WriteKind`]: see [`Write`].
    pub(crate) writes: [Write; 5],
    /// The `CALL` of a partial update (see [`patch`]): `$1` the entity, `$2` its lock key, `$3` the
    /// new version row's id, `$4` the columns set, `$5`-`$7` the provenance, `$8` the statement,
    /// `$9` the entity's shape.
    pub(crate) patch_call: String,
    /// Every column of entity `$1`'s versions, then each version's row as JSON (`immu_row`), in
    /// version order: history with diffs.
    pub(crate) history_rows: String,
    /// Versions `$2` (bigint[]) of entity `$1`: the version number, and the row as JSON.
    pub(crate) version_rows: String,
}

/// What a write does: the `immu_kind` argument of the table's write routines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteKind {
    /// A new entity at version 1.
    Insert = 0,
    /// The next version, with new data.
    Update = 1,
    /// A tombstone carrying the latest data.
    Delete = 2,
    /// A live copy of a tombstone's data.
    Undelete = 3,
    /// A live copy of an earlier version's data.
    Revert = 4,
}

impl WriteKind {
    /// The name the write routines know it by.
    pub(crate) fn name(self) -> &'static str {
        match self {
            WriteKind::Insert => "insert",
            WriteKind::Update => "update",
            WriteKind::Delete => "delete",
            WriteKind::Undelete => "undelete",
            WriteKind::Revert => "revert",
        }
    }

    /// Whether the write carries the entity's own data (insert and update do, the copies don't).
    pub(crate) fn carries_data(self) -> bool {
        matches!(self, WriteKind::Insert | WriteKind::Update)
    }
}

/// One write, as the two statements that run it. Both return every column of the table, by name
/// (not a list of the struct's columns, which a change of the table could break before the
/// routine's own check says what changed). Both bind the same parameters: `$1` the new
/// version row's id, `$2` the entity, `$3` the expected current version (NULL: any), `$4` the
/// entity's lock key, `$5` the names of the columns the entity sets (text[]), `$6` the entity's
/// shape, `$7` the actor, `$8` the reason, `$9` the context (jsonb); then, for inserts and updates,
/// the entity's own columns in [`TableDef::columns`] order, passed by name; for a revert, `$10` the
/// version to revert to and `$11` the instant whose version to revert to.
///
/// Each returns the stored version; or the entity's latest version when an update or revert would
/// append the data it already has; or a row whose `id` is NULL and whose reserved columns are the
/// entity's latest version when that version refuses the write (deleted, not deleted, not the
/// expected version, nothing to revert to); or nothing (all NULL, for the procedure) when the
/// entity does not exist.
#[derive(Debug)]
pub(crate) struct Write {
    /// `SELECT * FROM "<table>_immu_write"(...)`: inside a caller's transaction.
    pub(crate) statement: String,
    /// `CALL "<table>_immu_commit"(...)`: writes and commits, outside any transaction.
    pub(crate) call: String,
}

impl Sql {
    /// Renders every statement of `table`.
    pub fn new(table: &TableDef) -> Sql {
        let all = || all_columns(table);
        let render = |s: &SelectStatement| s.to_string(PostgresQueryBuilder);

        let mut version = Query::select();
        version
            .columns(all())
            .from(table.name)
            .and_where(Expr::col(ENTITY_ID).eq(param(1)))
            .and_where(Expr::col(VERSION).eq(param(2)));
        let mut history = Query::select();
        history
            .columns(all())
            .from(table.name)
            .and_where(Expr::col(ENTITY_ID).eq(param(1)))
            // The primary key's order, which is the version order (valid_from never decreases).
            .order_by(VALID_FROM, Order::Asc)
            .order_by(VERSION, Order::Asc);

        let lock_latest = format!("SELECT * FROM {}($1, $2)", quote(&routine_name(table.name, "latest")));
        let by_id = format!(
            "SELECT {} FROM {} WHERE {} = $1 AND {} = $2",
            all().map(quote).collect::<Vec<_>>().join(", "),
            quote(table.name),
            quote(ENTITY_ID),
            quote(ID)
        );

        let each_as_of = {
            let entity = Expr::col(("immu_ref", ENTITY_ID));
            let at = resolve::At::Instant(Expr::col(("immu_ref", "at")));
            let latest = resolve::latest(table, Some("immu_v"), Some(all()), entity, at)
                .to_string(PostgresQueryBuilder);
            format!(
                "SELECT \"immu_ref\".\"ord\", \"immu_found\".* \
                 FROM unnest($1::uuid[], $2::timestamptz[]) WITH ORDINALITY AS \"immu_ref\" (\"entity_id\", \"at\", \"ord\") \
                 CROSS JOIN LATERAL ({latest}) AS \"immu_found\""
            )
        };

        Sql {
            current: render(&resolve::current(table, all(), param(1))),
            as_of: render(&resolve::latest(table, None, Some(all()), param(1), At::Instant(param(2)))),
            version: render(&version),
            history: render(&history),
            by_id,
            lock_latest,
            each_as_of,
            writes: [
                WriteKind::Insert,
                WriteKind::Update,
                WriteKind::Delete,
                WriteKind::Undelete,
                WriteKind::Revert,
            ]
            .map(|kind| write(table, kind)),
            patch_call: format!(
                "CALL {}(immu_kind => 'update', entity_id => $1, immu_lock => $2, id => $3, immu_columns => $4, \
                 immu_actor => $5, immu_reason => $6, immu_context => $7, immu_patch => $8, immu_shape => $9)",
                quote(&routine_name(table.name, "commit"))
            ),
            history_rows: format!(
                "SELECT {}, pg_catalog.to_jsonb(\"immu_h\")::text AS \"immu_row\" FROM {} AS \"immu_h\" WHERE {} = $1 ORDER BY {}, {}",
                all().map(|c| format!("\"immu_h\".{}", quote(c))).collect::<Vec<_>>().join(", "),
                quote(table.name),
                quote(ENTITY_ID),
                quote(VALID_FROM),
                quote(VERSION)
            ),
            version_rows: format!(
                "SELECT \"immu_h\".{}, pg_catalog.to_jsonb(\"immu_h\")::text FROM {} AS \"immu_h\" WHERE \"immu_h\".{} = $1 AND \"immu_h\".{} = ANY ($2)",
                quote(VERSION),
                quote(table.name),
                quote(ENTITY_ID),
                quote(VERSION)
            ),
        }
    }

    /// The statements of a write of `kind`.
    pub(crate) fn write(&self, kind: WriteKind) -> &Write {
        &self.writes[kind as usize]
    }
}

/// The statements of a write of `kind` (see [`Write`]).
fn write(table: &TableDef, kind: WriteKind) -> Write {
    let data: Vec<String> = if kind.carries_data() {
        table.columns.iter().enumerate().map(|(i, c)| format!("{} => ${}", quote(c.name), i + 10)).collect()
    } else if kind == WriteKind::Revert {
        vec!["immu_revert_to => $10".to_owned(), "immu_revert_at => $11".to_owned()]
    } else {
        Vec::new()
    };
    let arguments = |reserved: [&str; 9]| {
        let mut arguments = vec![format!("immu_kind => '{}'", kind.name())];
        arguments.extend(reserved.iter().enumerate().map(|(i, name)| format!("{name} => ${}", i + 1)));
        arguments.extend(data.iter().cloned());
        arguments.join(", ")
    };
    Write {
        statement: format!(
            "SELECT * FROM {}({})",
            quote(&routine_name(table.name, "write")),
            arguments([
                "immu_id",
                "immu_entity_id",
                "immu_expected",
                "immu_lock",
                "immu_columns",
                "immu_shape",
                "immu_actor",
                "immu_reason",
                "immu_context"
            ])
        ),
        call: format!(
            "CALL {}({})",
            quote(&routine_name(table.name, "commit")),
            arguments([
                "id",
                "entity_id",
                "immu_expected",
                "immu_lock",
                "immu_columns",
                "immu_shape",
                "immu_actor",
                "immu_reason",
                "immu_context"
            ])
        ),
    }
}

/// The statement of a partial update of `table` that sets each of `sets` (a column, its type, and
/// the SQL of its new value over the entity's latest version, whose columns it names as
/// `"<table>"."<column>"`): the entity's lock and latest version (`<table>_immu_latest`), then the
/// write function with the new values computed from it (each cast to its column's type, as an
/// `UPDATE` would), in one statement run by the server under the lock. The version keeps the
/// latest one's shape, or takes the entity's if newer; for an entity that upcasts, a latest
/// version of an older shape is not patched (no row: the columns it would change are not those
/// that version is read by). Binds `$1` the entity, `$2` its lock key, `$3` the new version row's
/// id, `$4` the columns set, `$5`-`$7` the provenance (see [`Write`]), `$8` the entity's shape.
pub(crate) fn patch(table: &TableDef, sets: &[(&str, &str, String)]) -> String {
    let alias = quote(table.name);
    let values: String = sets
        .iter()
        .map(|(column, sql_type, value)| format!(", {} => (({value})::{sql_type})", quote(column)))
        .collect();
    let shape = quote(SHAPE);
    let guard = if table.upcast.is_some() {
        format!(" WHERE {alias}.{shape} IS NULL OR {alias}.{shape} >= $8")
    } else {
        String::new()
    };
    format!(
        "SELECT \"immu_w\".* FROM {latest}($1, $2) AS {alias}, LATERAL {write}(immu_kind => 'update', \
         immu_id => $3, immu_entity_id => $1, immu_expected => {alias}.{version}, immu_columns => $4, \
         immu_shape => GREATEST({alias}.{shape}, $8), immu_actor => $5, immu_reason => $6, \
         immu_context => $7{values}) AS \"immu_w\"{guard}",
        latest = quote(&routine_name(table.name, "latest")),
        write = quote(&routine_name(table.name, "write")),
        version = quote(VERSION),
    )
}

/// The name of one of the routines immu generates for a table (`<table>_immu_<kind>`, in the
/// table's schema): `write`, `commit`, `latest`, `check`.
pub(crate) fn routine_name(table: &str, kind: &str) -> String {
    format!("{table}_immu_{kind}")
}

/// Quotes an identifier for PostgreSQL (doubling any `"`; immu's names have none).
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The name of the projection table of `table`: the latest version of each entity, the target of
/// foreign keys.
pub(crate) fn current_table_name(table: &str) -> String {
    format!("{table}_current")
}

/// Every column reads of the table select: the reserved ones, then [`data_columns`].
pub(crate) fn all_columns(table: &TableDef) -> impl Iterator<Item = &'static str> + Clone + '_ {
    RESERVED_COLUMNS.into_iter().chain(data_columns(table))
}

/// The entity's own columns; then, for an entity that upcasts older shapes, `immu_shape` and the
/// columns of those shapes that it does not have itself (each once, in the order of the chain).
pub(crate) fn data_columns(table: &TableDef) -> std::vec::IntoIter<&'static str> {
    let mut columns: Vec<&'static str> = table.columns.iter().map(|c| c.name).collect();
    if table.upcast.is_some() {
        columns.push(SHAPE);
    }
    let mut source = table.upcast;
    while let Some(older) = source {
        for column in older.columns {
            if !columns.contains(&column.name) {
                columns.push(column.name);
            }
        }
        source = older.upcast;
    }
    columns.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ColumnDef;

    pub(crate) const ACCOUNTS: TableDef = TableDef {
        name: "accounts",
        rust_name: "Account",
        shape: 1,
        upcast: None,
        columns: &[
            ColumnDef {
                name: "owner",
                field: "owner",
                sql_type: "text",
                nullable: false,
                json: false,
                references: None,
            },
            ColumnDef {
                name: "order",
                field: "order",
                sql_type: "bigint",
                nullable: false,
                json: false,
                references: None,
            },
        ],
    };

    #[test]
    fn statements_render() {
        let sql = Sql::new(&ACCOUNTS);
        assert_eq!(
            sql.current,
            r#"SELECT "id", "entity_id", "version", "valid_from", "deleted_at", "immu_actor", "immu_reason", "immu_context", "immu_db_user", "immu_application", "immu_revert_of", "owner", "order" FROM "accounts_current" WHERE "entity_id" = $1"#
        );
    }
}

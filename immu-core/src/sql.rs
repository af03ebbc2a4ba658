//! The SQL text of every statement immu runs for one entity type, rendered once with sea-query
//! and cached for the life of the process (see [`Immutable::__sql`](crate::Immutable)).
//!
//! Placeholders are numbered explicitly (`$1`, `$2`, ...) so that the read and write paths bind
//! values in a fixed, documented order with sqlx's own encoders: any type sqlx can encode (your
//! `#[derive(sqlx::Type)]` enums included) can be a column.

use sea_query::{Alias, Expr, ExprTrait, Func, Keyword, Order, PostgresQueryBuilder, Query, SelectStatement};

use crate::TableDef;
use crate::entity::RESERVED_COLUMNS;
use crate::resolve::{self, At};

pub(crate) const ID: &str = "id";
pub(crate) const ENTITY_ID: &str = "entity_id";
pub(crate) const VERSION: &str = "version";
pub(crate) const VALID_FROM: &str = "valid_from";
pub(crate) const DELETED_AT: &str = "deleted_at";

/// The CTE holding the latest version, read under the entity's lock, in write statements.
const LATEST: &str = "latest";
/// The CTE holding the appended version in write statements.
const APPENDED: &str = "appended";
/// The alias of the lateral subquery that computes the new version's timestamp.
const NEXT: &str = "next";
/// The column of [`NEXT`] holding the timestamp.
const TS: &str = "ts";

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

/// The new version's `valid_from`: the database clock now, never earlier than the previous
/// version's. Taken after the entity's lock, never from `now()` (the transaction start, which can
/// order two writers backwards).
fn next_valid_from() -> Expr {
    Func::greatest([Expr::cust("clock_timestamp()"), Expr::col((LATEST, VALID_FROM))]).into()
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
    /// New entity: `$1` id, `$2` entity_id, `$3..` own columns. Returns all columns, as stored.
    pub(crate) insert: String,
    /// Takes the write lock of entity `$1` (key `$2`) and returns its latest version, read after the
    /// lock (the table's `<table>_immu_latest` function). Columns: reserved then own.
    pub(crate) lock_latest: String,
    /// Next version with new data, in one statement: `$1` id, `$2` entity_id, `$3` lock key, `$4`
    /// expected current version (or NULL for any), `$5..` own columns. See [`latest_version_index`].
    pub(crate) append: String,
    /// Tombstone copying the latest data: `$1` id, `$2` entity_id, `$3` lock key. See [`latest_version_index`].
    pub(crate) delete: String,
    /// Live copy of a tombstone's data: `$1` id, `$2` entity_id, `$3` lock key. See [`latest_version_index`].
    pub(crate) undelete: String,
    /// Entities `$1` (uuid[]) each as of its instant in `$2` (timestamptz[]). Columns: the
    /// 1-based position in the arrays, then all columns.
    pub(crate) each_as_of: String,
    /// `insert`, run and committed by the table's `<table>_immu_insert` procedure.
    pub(crate) insert_call: String,
    /// `append`, run and committed by `<table>_immu_append`; the row has the same columns, with
    /// the latest version's number NULL if the entity does not exist.
    pub(crate) append_call: String,
    /// `delete`, run and committed by `<table>_immu_delete`, as `append_call`.
    pub(crate) delete_call: String,
    /// `undelete`, run and committed by `<table>_immu_undelete`, as `append_call`.
    pub(crate) undelete_call: String,
}

/// The write statements that have a procedure running and committing them (see
/// [`Sql::insert_call`]): the procedure's name suffix, its body before the `INTO` of the result,
/// and the types of its parameters (the statement's `$1`, `$2`, ...).
///
/// In a procedure the lock is taken by a statement of its own, and the write statement that
/// follows reads the latest version from the projection directly, with one function call less
/// than [`Sql::append`]: under READ COMMITTED each statement of a procedure takes a new
/// snapshot, so it sees every earlier writer's commit (with REPEATABLE READ as the session's
/// default, a stale read ends as a version conflict, as in [`Sql::append`]).
pub(crate) fn procedures(table: &TableDef, sql: &Sql) -> [(&'static str, String, Vec<&'static str>); 4] {
    let locked = |statement: &str| {
        let function = format!("SELECT * FROM {}($2, $3)", quote(&latest_function_name(table.name)));
        let direct = format!(
            "SELECT * FROM {} WHERE {} = $2",
            quote(&current_table_name(table.name)),
            quote(ENTITY_ID)
        );
        assert!(statement.contains(&function), "the write statement reads through the function");
        format!("PERFORM pg_advisory_xact_lock($3);\n    {}", statement.replace(&function, &direct))
    };
    let own = || table.columns.iter().map(|c| c.sql_type);
    let existing = || vec!["uuid", "uuid", "bigint"];
    let mut append = existing();
    append.push("bigint");
    append.extend(own());
    let mut insert = vec!["uuid", "uuid"];
    insert.extend(own());
    [
        ("insert", sql.insert.clone(), insert),
        ("append", locked(&sql.append), append),
        ("delete", locked(&sql.delete), existing()),
        ("undelete", locked(&sql.undelete), existing()),
    ]
}

/// The name of one of the table's write procedures.
pub(crate) fn procedure_name(table: &str, kind: &str) -> String {
    format!("{table}_immu_{kind}")
}

/// How many columns a write returns: every column of the appended version, then (except for
/// inserts) the latest version's number and tombstone.
pub(crate) fn written_columns(table: &TableDef, kind: &str) -> usize {
    RESERVED_COLUMNS.len() + table.columns.len() + if kind == "insert" { 0 } else { 2 }
}

/// `CALL "<table>_immu_<kind>"($1, ..., $n, NULL, ...)`: the statement's parameters, then one NULL
/// per output column.
fn call(table: &TableDef, kind: &str, parameters: usize) -> String {
    let arguments: Vec<String> = (1..=parameters)
        .map(|n| format!("${n}"))
        .chain((0..written_columns(table, kind)).map(|_| "NULL".to_owned()))
        .collect();
    format!("CALL {}({})", quote(&procedure_name(table.name, kind)), arguments.join(", "))
}

/// Index, in the row a write statement returns, of the latest version's number (its
/// `deleted_at` follows).
///
/// A write statement (`append`, `delete`, `undelete`) returns no row if the entity does not
/// exist; otherwise every column of the appended version (all NULL if the latest version did not
/// allow the write), then the latest version's `version` and `deleted_at` as the statement saw
/// them under the lock, which explain a refusal.
pub(crate) fn latest_version_index(table: &TableDef) -> usize {
    RESERVED_COLUMNS.len() + table.columns.len()
}

impl Sql {
    /// Renders every statement of `table`.
    pub fn new(table: &TableDef) -> Sql {
        let all = || all_columns(table);
        let own = || table.columns.iter().map(|c| c.name);
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

        let insert = {
            // The table's insert check adds the entity to the projection table.
            let values =
                [param(1), param(2), Expr::val(1i64), Expr::cust("clock_timestamp()"), Expr::cust("NULL")]
                    .into_iter()
                    .chain((0..table.columns.len()).map(|i| param(3 + i)));
            let mut insert = Query::insert();
            insert
                .into_table(table.name)
                .columns(all())
                .values_panic(values)
                .returning(Query::returning().columns(all()));
            insert.to_string(PostgresQueryBuilder)
        };

        let lock_latest = format!(
            "SELECT {} FROM {}($1, $2)",
            all().map(quote).collect::<Vec<_>>().join(", "),
            quote(&latest_function_name(table.name))
        );

        let append = {
            let mut select = Query::select();
            select
                .expr(param(1))
                .expr(Expr::col((LATEST, ENTITY_ID)))
                .expr(Expr::col((LATEST, VERSION)).add(1))
                .expr(next_valid_from())
                .expr(Expr::cust("NULL::timestamptz"))
                .exprs((0..table.columns.len()).map(|i| param(5 + i)))
                .from(LATEST)
                .and_where(Expr::col((LATEST, DELETED_AT)).is_null())
                .and_where(param(4).is_null().or(Expr::col((LATEST, VERSION)).eq(param(4))));
            write_statement(table, select)
        };

        let copy = |tombstone: bool| {
            let mut select = Query::select();
            select
                .expr(param(1))
                .expr(Expr::col((LATEST, ENTITY_ID)))
                .expr(Expr::col((LATEST, VERSION)).add(1))
                .expr(Expr::col((NEXT, TS)))
                .expr(if tombstone { Expr::col((NEXT, TS)) } else { Expr::cust("NULL::timestamptz") })
                .exprs(own().map(|c| Expr::col((LATEST, c))))
                .from(LATEST)
                .join_lateral(
                    sea_query::JoinType::InnerJoin,
                    Query::select().expr_as(next_valid_from(), Alias::new(TS)).to_owned(),
                    NEXT,
                    sea_query::Condition::all(),
                );
            let latest_deleted = Expr::col((LATEST, DELETED_AT));
            select.and_where(if tombstone { latest_deleted.is_null() } else { latest_deleted.is_not_null() });
            write_statement(table, select)
        };

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

        let own = table.columns.len();
        Sql {
            insert_call: call(table, "insert", 2 + own),
            append_call: call(table, "append", 4 + own),
            delete_call: call(table, "delete", 3),
            undelete_call: call(table, "undelete", 3),
            current: render(&resolve::current(table, all(), param(1))),
            as_of: render(&resolve::latest(table, None, Some(all()), param(1), At::Instant(param(2)))),
            version: render(&version),
            history: render(&history),
            insert,
            lock_latest,
            append,
            delete: copy(true),
            undelete: copy(false),
            each_as_of,
        }
    }
}

/// A write in one statement (see [`latest_version_index`]): the latest version under the entity's lock, the
/// new version `select` builds from it, and both returned together.
///
/// ```sql
/// WITH "latest" AS (SELECT * FROM "accounts_immu_latest"($2, $3)),
/// "appended" AS (INSERT INTO "accounts" (...) SELECT ... FROM "latest" WHERE ... RETURNING ...)
/// SELECT "appended"."id", ..., "latest"."version", "latest"."deleted_at"
/// FROM "latest" LEFT JOIN "appended" ON TRUE
/// ```
///
/// The function takes the lock and reads in a statement of its own, so under READ COMMITTED it
/// sees every earlier writer's commit although this statement's snapshot predates the lock.
fn write_statement(table: &TableDef, select: SelectStatement) -> String {
    let mut insert = Query::insert();
    insert
        .into_table(table.name)
        .columns(all_columns(table))
        .select_from(select)
        .expect("the select lists one expression per column")
        .returning(Query::returning().columns(all_columns(table)));
    let appended: Vec<String> =
        all_columns(table).map(|c| format!("{}.{}", quote(APPENDED), quote(c))).collect();
    format!(
        "WITH {latest} AS (SELECT * FROM {function}($2, $3)), {appended_cte} AS ({insert}) \
         SELECT {appended}, {latest}.{version}, {latest}.{deleted_at} FROM {latest} LEFT JOIN {appended_cte} ON TRUE",
        latest = quote(LATEST),
        function = quote(&latest_function_name(table.name)),
        appended_cte = quote(APPENDED),
        insert = insert.to_string(PostgresQueryBuilder),
        appended = appended.join(", "),
        version = quote(VERSION),
        deleted_at = quote(DELETED_AT),
    )
}

/// The name of the function that takes an entity's write lock and returns its latest version.
pub(crate) fn latest_function_name(table: &str) -> String {
    format!("{table}_immu_latest")
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

/// Every column of the table: the reserved ones, then the entity's own.
pub(crate) fn all_columns(table: &TableDef) -> impl Iterator<Item = &'static str> + Clone + '_ {
    RESERVED_COLUMNS.into_iter().chain(table.columns.iter().map(|c| c.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ColumnDef;

    pub(crate) const ACCOUNTS: TableDef = TableDef {
        name: "accounts",
        rust_name: "Account",
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
            r#"SELECT "id", "entity_id", "version", "valid_from", "deleted_at", "owner", "order" FROM "accounts_current" WHERE "entity_id" = $1"#
        );
    }
}

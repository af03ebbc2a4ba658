//! DDL for versioned tables: Rust-to-PostgreSQL column types and the `CREATE TABLE` script the
//! derive's metadata describes.

/// Maps a Rust field type to the PostgreSQL column type used by the generated DDL.
///
/// Implemented for the types sqlx encodes out of the box. For any other type (your own
/// `#[derive(sqlx::Type)]` enum, `rust_decimal::Decimal`, ...), name the column type on the field
/// with `#[immu(sql_type = "...")]`, or store it as JSON with `#[immu(json)]`.
#[diagnostic::on_unimplemented(
    message = "immu does not know which PostgreSQL column type to use for `{Self}`",
    label = "no column type for this field",
    note = "name it on the field: #[immu(sql_type = \"...\")], or store the field as JSON with #[immu(json)]"
)]
pub trait ColumnType {
    /// The PostgreSQL type, as written in `CREATE TABLE`.
    const SQL_TYPE: &'static str;
    /// Whether the column accepts SQL `NULL` (true only for `Option<T>`).
    const NULLABLE: bool = false;
}

macro_rules! column_types {
    ($($ty:ty => $sql:literal),* $(,)?) => {
        $(impl ColumnType for $ty { const SQL_TYPE: &'static str = $sql; })*
    };
}

column_types! {
    bool => "boolean",
    i8 => "\"char\"",
    i16 => "smallint",
    i32 => "integer",
    i64 => "bigint",
    f32 => "real",
    f64 => "double precision",
    String => "text",
    Vec<u8> => "bytea",
    uuid::Uuid => "uuid",
    chrono::DateTime<chrono::Utc> => "timestamptz",
    chrono::DateTime<chrono::FixedOffset> => "timestamptz",
    chrono::NaiveDateTime => "timestamp",
    chrono::NaiveDate => "date",
    chrono::NaiveTime => "time",
    serde_json::Value => "jsonb",
}

impl<T> ColumnType for sqlx::types::Json<T> {
    const SQL_TYPE: &'static str = "jsonb";
}

impl<T: ColumnType> ColumnType for Option<T> {
    const SQL_TYPE: &'static str = T::SQL_TYPE;
    const NULLABLE: bool = true;
}

use std::future::Future;

use sqlx::{Acquire, Postgres};

use crate::{Error, Immutable, Result, TableDef};

/// The release of the machinery (the routines and triggers immu generates in the database for each
/// versioned table) this version of immu_core calls. immu's own migrations
/// ([`MIGRATOR`](crate::MIGRATOR)) bring every table's machinery to it; [`check`] reports a table
/// whose machinery is of another release.
pub const MACHINERY_RELEASE: i32 = 4;

/// The prefix of the column names immu reserves for columns of its own (`immu_shape`, and those
/// of later releases): an entity's own columns may not start with it.
pub const RESERVED_PREFIX: &str = "immu_";

/// Longest table name immu accepts: names of the indexes it derives from the table name
/// (`<table>_current_pkey`, ...) must stay within PostgreSQL's 63 bytes, which it would otherwise
/// truncate silently.
pub const MAX_TABLE_NAME_LEN: usize = 48;
/// PostgreSQL's identifier length limit (`NAMEDATALEN - 1`).
pub const MAX_IDENTIFIER_LEN: usize = 63;

/// Checks that `name` is an identifier immu can use for a table or column: non-empty, ASCII
/// letters, digits and `_`, not starting with a digit, at most [`MAX_IDENTIFIER_LEN`] bytes.
///
/// SQL keywords (`order`, `user`, ...) are fine: immu quotes every identifier. The derive applies
/// the same rules at compile time; this is the runtime check for hand-built [`TableDef`]s.
///
/// ```
/// use immu_core::schema::validate_identifier;
/// assert!(validate_identifier("order").is_ok());
/// assert!(validate_identifier("drop table x; --").is_err());
/// ```
pub fn validate_identifier(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_IDENTIFIER_LEN {
        Some("it is longer than PostgreSQL's 63-byte identifier limit")
    } else if name.starts_with(|c: char| c.is_ascii_digit()) {
        Some("it starts with a digit")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Some("only ASCII letters, digits and '_' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidIdentifier { name: name.to_owned(), reason }),
        None => Ok(()),
    }
}

/// Checks every name of a table description: identifiers, length of the table name, reserved and
/// duplicate column names.
pub fn validate_table(table: &TableDef) -> Result<()> {
    validate_identifier(table.name)?;
    if table.name.len() > MAX_TABLE_NAME_LEN {
        return Err(Error::InvalidIdentifier {
            name: table.name.to_owned(),
            reason: "table names are limited to 48 bytes, so that the index names immu derives from them fit in 63",
        });
    }
    for (i, column) in table.columns.iter().enumerate() {
        validate_identifier(column.name)?;
        if crate::RESERVED_COLUMNS.iter().any(|r| r.eq_ignore_ascii_case(column.name)) {
            return Err(Error::InvalidIdentifier {
                name: column.name.to_owned(),
                reason: "the column name is reserved by immu",
            });
        }
        if column.name.len() >= RESERVED_PREFIX.len()
            && column.name[..RESERVED_PREFIX.len()].eq_ignore_ascii_case(RESERVED_PREFIX)
        {
            return Err(Error::InvalidIdentifier {
                name: column.name.to_owned(),
                reason: "column names starting with immu_ are reserved by immu",
            });
        }
        if table.columns[..i].iter().any(|c| c.name == column.name) {
            return Err(Error::InvalidIdentifier {
                name: column.name.to_owned(),
                reason: "the column name is used twice",
            });
        }
    }
    Ok(())
}

/// The migration that creates `T`'s versioned table: a `CREATE TABLE` with the entity's own
/// columns (types from [`ColumnType`] or `#[immu(sql_type)]`, `NOT NULL` unless the field is an
/// `Option`, a foreign key to the referenced entity's projection for `#[immu(references = ...)]`),
/// then `SELECT immu.add_versioning(...)`, which adds immu's columns and constraints, creates the
/// projection `<table>_current` (each entity's latest version: what current reads scan, the target
/// of foreign keys) and generates the machinery inside PostgreSQL: the insert trigger that checks
/// every version and keeps the projection in step, the triggers that refuse any other change, and
/// the write routines.
///
/// Put it in a migration that runs after immu's own ([`MIGRATOR`](crate::MIGRATOR)). It is short
/// and stays valid across releases of immu: an upgrade regenerates the machinery from immu's own
/// migrations, never from yours. Add your own constraints, defaults and indexes as you like;
/// after changing the table's columns later, call `SELECT immu.sync_versioning('<table>')` in the
/// same migration (see the README's "Changing an entity").
///
/// Each version costs one heap row and one entry in one index, the primary key
/// `(entity_id, valid_from, version)`, which serves as-of reads at any depth of history and
/// version lookups. `id` has no index: add `CREATE UNIQUE INDEX ... ("id")` if you look versions
/// up by it alone.
///
/// ```
/// use immu_core::Immutable;
///
/// #[derive(Immutable)]
/// #[immu(table = "accounts")]
/// struct Account {
///     owner: String,
///     balance: i64,
/// }
///
/// let ddl = immu_core::schema::create_table::<Account>().unwrap();
/// # // The text below is this file, which the test suite also checks against the database.
/// # assert_eq!(ddl, include_str!("../../tests/migrations/20261123000100_accounts.sql"));
/// assert!(ddl.ends_with("SELECT immu.add_versioning('\"accounts\"');\n"));
/// println!("{ddl}");
/// ```
///
/// prints
///
/// ```sql
/// -- Versioned table of `Account`, generated by immu_core::schema::create_table.
/// CREATE TABLE "accounts" (
///     "owner"   text   NOT NULL,
///     "balance" bigint NOT NULL
/// );
/// -- immu's columns (id, entity_id, version, valid_from, deleted_at, immu_shape), the projection
/// -- "accounts_current" and the machinery that keeps both append-only and in step.
/// SELECT immu.add_versioning('"accounts"');
/// ```
pub fn create_table<T: Immutable>() -> Result<String> {
    create_table_for(&T::TABLE)
}

/// [`create_table`] for a table description.
pub fn create_table_for(table: &TableDef) -> Result<String> {
    validate_table(table)?;
    let name_width = table.columns.iter().map(|c| quote(c.name).len()).max().unwrap_or(0);
    let type_width =
        table.columns.iter().filter(|c| !c.nullable).map(|c| c.sql_type.len()).max().unwrap_or(0);
    let mut lines = Vec::new();
    // References to the table itself (a tree): its projection exists once add_versioning ran.
    let mut later = String::new();
    for column in table.columns {
        let name = quote(column.name);
        let mut line = if column.nullable {
            format!("    {name:<name_width$} {}", column.sql_type)
        } else {
            format!("    {name:<name_width$} {:<type_width$} NOT NULL", column.sql_type)
        };
        if let Some(target) = column.references {
            validate_identifier(target)?;
            let projection = quote(&crate::sql::current_table_name(target));
            if target == table.name {
                later.push_str(&format!(
                    "ALTER TABLE {} ADD FOREIGN KEY ({name}) REFERENCES {projection} (\"entity_id\");\n",
                    quote(table.name)
                ));
            } else {
                line = format!("{} REFERENCES {projection} (\"entity_id\")", line.trim_end());
            }
        }
        lines.push(line.trim_end().to_owned());
    }
    let body = if lines.is_empty() { String::new() } else { format!("\n{}\n", lines.join(",\n")) };
    let history = quote(table.name);
    Ok(format!(
        "-- Versioned table of `{rust}`, generated by immu_core::schema::create_table.\n\
         CREATE TABLE {history} ({body});\n\
         -- immu's columns (id, entity_id, version, valid_from, deleted_at, immu_shape), the projection\n\
         -- {projection} and the machinery that keeps both append-only and in step.\n\
         SELECT immu.add_versioning({literal});\n{later}",
        rust = table.rust_name,
        projection = quote(&crate::sql::current_table_name(table.name)),
        literal = literal(&history),
    ))
}

/// SQL that rebuilds `T`'s projection table (`<table>_current`) from its history:
/// `SELECT immu.rebuild_projection('<table>')`. Every entity's row is set to its highest stored
/// version, missing rows are added, rows of entities without versions are removed. The projection
/// is only ever derived from the history, so this repairs it whatever happened to it (say,
/// triggers disabled by hand during a restore). It returns the number of rows it changed.
///
/// Run it as the tables' owner. Removing a row that another table's foreign key still references
/// fails, and the statement with it.
///
/// ```no_run
/// # use immu_core::Immutable;
/// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
/// # async fn demo(pool: sqlx::PgPool) -> immu_core::Result<()> {
/// let sql = immu_core::schema::rebuild_projection::<Account>()?;
/// let changed: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&pool).await?;
/// # Ok(()) }
/// ```
pub fn rebuild_projection<T: Immutable>() -> Result<String> {
    rebuild_projection_for(&T::TABLE)
}

/// [`rebuild_projection`] for a table description.
pub fn rebuild_projection_for(table: &TableDef) -> Result<String> {
    validate_table(table)?;
    Ok(format!("SELECT immu.rebuild_projection({})", literal(&quote(table.name))))
}

/// One way in which a versioned table differs from what immu or the entity's struct needs, and
/// the SQL (or the change to the struct) that fixes it. See [`check`] and
/// [`Error::SchemaDrift`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Difference {
    /// What differs.
    pub description: String,
    /// The fix: SQL to run in a migration, or the change to make to the struct.
    pub fix: String,
}

impl Difference {
    /// A difference and its fix.
    pub fn new(description: impl Into<String>, fix: impl Into<String>) -> Difference {
        Difference { description: description.into(), fix: fix.into() }
    }
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (fix: {})", self.description, self.fix)
    }
}

/// The drift check: compares `T`'s struct with its table in the database and the machinery immu
/// generated for it. `Ok(())` when they match; otherwise [`Error::SchemaDrift`] listing every
/// difference with the SQL that fixes it:
///
/// * the table is missing, not versioned, or versioned by another release of immu's machinery;
/// * the table's columns changed since its machinery was generated (`ALTER TABLE` without
///   `immu.sync_versioning`), immu's triggers are missing or disabled, or another role may create
///   triggers on it;
/// * a field has no column, or a column of another type, or the column is nullable and the field
///   is not an `Option` (accepted for a struct with `#[immu(upcast)]`: its new columns are NULL in
///   the versions of older shapes, which the older struct reads);
/// * a column the struct does not name is `NOT NULL` without a default (inserts would fail);
/// * a `#[immu(references = ...)]` field has no foreign key to the referenced projection, or a
///   column has a foreign key the struct does not declare.
///
/// Call it in your test suite and at startup, after the migrations:
///
/// ```no_run
/// # use immu_core::Immutable;
/// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
/// # async fn demo(pool: sqlx::PgPool) -> immu_core::Result<()> {
/// immu_core::schema::check::<Account>(&pool).await?;
/// # Ok(()) }
/// ```
pub fn check<'c, T: Immutable>(
    db: impl Acquire<'c, Database = Postgres> + Send + 'c,
) -> impl Future<Output = Result<()>> + Send + 'c {
    check_for(&T::TABLE, db)
}

/// [`check`] for a table description.
// Not an `async fn`: the future is declared `Send`, which callers in generic code need (an
// `async fn` leaves it to inference, which fails there: rust-lang/rust#100013).
#[allow(clippy::manual_async_fn)]
pub fn check_for<'c>(
    table: &'static TableDef,
    db: impl Acquire<'c, Database = Postgres> + Send + 'c,
) -> impl Future<Output = Result<()>> + Send + 'c {
    async move {
        validate_table(table)?;
        let mut conn = db.acquire().await?;
        check_on(table, &mut conn).await
    }
}

/// [`check_for`] on a connection.
async fn check_on(table: &TableDef, conn: &mut sqlx::PgConnection) -> Result<()> {
    let mut differences = Vec::new();
    let name = quote(table.name);
    let (exists, schema, machinery): (bool, bool, bool) = sqlx::query_as(
        "SELECT pg_catalog.to_regclass($1) IS NOT NULL, pg_catalog.to_regnamespace('immu') IS NOT NULL, \
         pg_catalog.to_regprocedure('immu.check_table(regclass)') IS NOT NULL",
    )
    .bind(&name)
    .fetch_one(&mut *conn)
    .await?;
    if !machinery {
        let what = if schema { "are older than release 2" } else { "have not run" };
        differences.push(Difference::new(
            format!("immu's migrations {what} in this database"),
            "run immu_core::MIGRATOR (or sqlx migrate run --config <immu>/immu-core/sqlx.toml --source <immu>/migrations) before your migrations",
        ));
    }
    if !exists {
        differences.push(Difference::new(
            format!("table {name} does not exist"),
            format!(
                "a migration with immu_core::schema::create_table::<{}>():\n{}",
                table.rust_name,
                create_table_for(table)?
            ),
        ));
    }
    if machinery && exists {
        let release: i32 = sqlx::query_scalar("SELECT immu.release()").fetch_one(&mut *conn).await?;
        if release < MACHINERY_RELEASE {
            differences.push(Difference::new(
                format!("the database's immu is release {release}; this immu_core needs release {MACHINERY_RELEASE}"),
                "run immu_core::MIGRATOR",
            ));
        } else if release > MACHINERY_RELEASE {
            differences.push(Difference::new(
                format!("the database's immu is release {release}, newer than this immu_core's ({MACHINERY_RELEASE})"),
                "upgrade immu_core",
            ));
        }
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT problem, fix FROM immu.check_table($1::regclass)")
                .bind(&name)
                .fetch_all(&mut *conn)
                .await?;
        differences.extend(rows.into_iter().map(|(description, fix)| Difference { description, fix }));
    }
    if exists {
        let columns: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
        let types: Vec<&str> = table.columns.iter().map(|c| c.sql_type).collect();
        let nullable: Vec<bool> = table.columns.iter().map(|c| c.nullable).collect();
        let references: Vec<Option<String>> =
            table.columns.iter().map(|c| c.references.map(crate::sql::current_table_name)).collect();
        let rows: Vec<(String, String)> = sqlx::query_as(CHECK_SQL)
            .bind(&name)
            .bind(&columns)
            .bind(&types)
            .bind(&nullable)
            .bind(&references)
            .bind(table.upcast.is_some())
            .fetch_all(&mut *conn)
            .await?;
        differences.extend(rows.into_iter().map(|(description, fix)| Difference { description, fix }));
    }
    if differences.is_empty() {
        return Ok(());
    }
    Err(Error::SchemaDrift { table: table.name.to_owned(), differences })
}

/// The drift check, in one statement (`check.sql`, which says what it binds).
const CHECK_SQL: &str = include_str!("check.sql");

/// Quotes an identifier for PostgreSQL (doubling any `"`; validated names have none).
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal for PostgreSQL.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A versioned table found by name (see [`find_versioned`]).
#[derive(Debug, Clone)]
pub(crate) struct Found {
    /// The history, schema-qualified and quoted where needed (`format('%I.%I')`).
    pub(crate) table: String,
    /// Its projection, likewise.
    pub(crate) projection: String,
    /// PostgreSQL's estimate of the history's rows.
    pub(crate) estimated: f32,
}

/// Finds the versioned table `lookup` names (as PostgreSQL reads a `regclass`: on the connection's
/// `search_path` unless qualified), as the application's own statements would, and names it
/// schema-qualified from then on. A table of that name that is not versioned (a table of another
/// schema earlier on the path) is refused, never used instead: `Error::SchemaDrift`. `name`
/// names the table in errors.
pub(crate) async fn find_versioned<'e, E>(db: E, lookup: &str, name: &str) -> Result<Found>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let found: Option<(String, Option<String>, f32)> = sqlx::query_as(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), \
                CASE WHEN p.oid IS NOT NULL THEN pg_catalog.format('%I.%I', pn.nspname, p.relname) END, c.reltuples \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN immu.versioned_tables v ON v.table_name = c.oid \
         LEFT JOIN pg_catalog.pg_class p ON p.oid = v.projection \
         LEFT JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace \
         WHERE c.oid = pg_catalog.to_regclass($1)",
    )
    .bind(lookup)
    .fetch_optional(db)
    .await?;
    match found {
        None => Err(Error::MissingTable { table: name.to_owned() }),
        Some((_, None, _)) => Err(Error::SchemaDrift {
            table: name.to_owned(),
            differences: vec![Difference::new(
                format!("{name} on this connection's search_path is not a versioned table"),
                format!("SELECT immu.add_versioning('{name}');"),
            )],
        }),
        Some((table, Some(projection), estimated)) => Ok(Found { table, projection, estimated }),
    }
}

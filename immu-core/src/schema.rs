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

use crate::sql::{DELETED_AT, ENTITY_ID, ID, VALID_FROM, VERSION};
use crate::{Error, Immutable, Result, TableDef};

/// Longest table name immu accepts: names of the indexes it derives from the table name
/// (`<table>_as_of_idx`, ...) must stay within PostgreSQL's 63 bytes, which it would otherwise
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
        if table.columns[..i].iter().any(|c| c.name == column.name) {
            return Err(Error::InvalidIdentifier {
                name: column.name.to_owned(),
                reason: "the column name is used twice",
            });
        }
    }
    Ok(())
}

/// The DDL of `T`'s versioned table: the identity table (one row per entity, the target of
/// foreign keys), the versioned table with the reserved columns, the entity's own columns (types
/// from [`ColumnType`] or `#[immu(sql_type)]`), the constraints, foreign keys for
/// `#[immu(references = ...)]`, the index as-of reads need, and the triggers that make both
/// tables append-only in the database.
///
/// Paste it into a migration that runs after immu's own ([`MIGRATOR`](crate::MIGRATOR), which
/// creates `immu.refuse_change()`).
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
/// assert!(ddl.contains(r#"CONSTRAINT "accounts_pkey" PRIMARY KEY ("entity_id", "version")"#));
/// # // The text below is this file, which the test suite also checks against the database.
/// # assert_eq!(ddl, include_str!("../../tests/migrations/20261123000100_accounts.sql"));
/// println!("{ddl}");
/// ```
///
/// prints
///
/// ```sql
/// -- Versioned table of `Account`, generated by immu_core::schema::create_table.
/// -- History is append-only: the triggers below refuse UPDATE, DELETE and TRUNCATE, and any
/// -- inserted version that would skip or repeat a number or go back in time.
///
/// -- One row per entity, written when its version 1 is: the target of foreign keys to it.
/// CREATE TABLE "accounts_entities" (
///     "entity_id" uuid NOT NULL,
///     CONSTRAINT "accounts_entities_pkey" PRIMARY KEY ("entity_id")
/// );
/// CREATE TRIGGER "immu_append_only"
///     BEFORE UPDATE OR DELETE OR TRUNCATE ON "accounts_entities"
///     FOR EACH STATEMENT EXECUTE FUNCTION immu.refuse_change();
/// ALTER TABLE "accounts_entities" ENABLE ALWAYS TRIGGER "immu_append_only";
///
/// -- Every version of every entity.
/// CREATE TABLE "accounts" (
///     "id"         uuid        NOT NULL,
///     "entity_id"  uuid        NOT NULL,
///     "version"    bigint      NOT NULL,
///     "valid_from" timestamptz NOT NULL,
///     "deleted_at" timestamptz,
///     "owner"      text        NOT NULL,
///     "balance"    bigint      NOT NULL,
///     CONSTRAINT "accounts_pkey" PRIMARY KEY ("entity_id", "version"),
///     CONSTRAINT "accounts_id_key" UNIQUE ("id"),
///     CONSTRAINT "immu_version_positive" CHECK ("version" >= 1),
///     CONSTRAINT "immu_valid_from_in_range" CHECK (isfinite("valid_from") AND "valid_from" < '262143-01-01 00:00:00+00'),
///     CONSTRAINT "immu_tombstone_at_valid_from" CHECK ("deleted_at" IS NULL OR "deleted_at" = "valid_from")
/// );
/// CREATE INDEX "accounts_as_of_idx" ON "accounts" ("entity_id", "valid_from", "version");
/// CREATE TRIGGER "immu_append_only"
///     BEFORE UPDATE OR DELETE OR TRUNCATE ON "accounts"
///     FOR EACH STATEMENT EXECUTE FUNCTION immu.refuse_change();
/// ALTER TABLE "accounts" ENABLE ALWAYS TRIGGER "immu_append_only";
///
/// -- Checks each inserted version against the entity's latest (SQLSTATE IMMU2) and registers the
/// -- entity's identity with its version 1.
/// CREATE FUNCTION "accounts_immu_check"() RETURNS trigger
/// LANGUAGE plpgsql AS $$
/// DECLARE
///     latest_version bigint;
///     latest_valid_from timestamptz;
/// BEGIN
///     SELECT "version", "valid_from" FROM "accounts" WHERE "entity_id" = NEW."entity_id" ORDER BY "version" DESC LIMIT 1
///         INTO latest_version, latest_valid_from;
///     IF NEW."version" <> COALESCE(latest_version, 0) + 1 THEN
///         RAISE EXCEPTION 'version % of entity % would skip or repeat a version: its latest version is %',
///             NEW."version", NEW."entity_id", COALESCE(latest_version, 0)
///             USING ERRCODE = 'IMMU2', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME;
///     END IF;
///     IF NEW."valid_from" < latest_valid_from THEN
///         RAISE EXCEPTION 'version % of entity % is valid from %, before version % (valid from %)',
///             NEW."version", NEW."entity_id", NEW."valid_from", latest_version, latest_valid_from
///             USING ERRCODE = 'IMMU2', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME;
///     END IF;
///     IF NEW."version" = 1 THEN
///         INSERT INTO "accounts_entities" ("entity_id") VALUES (NEW."entity_id") ON CONFLICT DO NOTHING;
///     END IF;
///     RETURN NEW;
/// END
/// $$;
/// CREATE TRIGGER "immu_check_insert"
///     BEFORE INSERT ON "accounts"
///     FOR EACH ROW EXECUTE FUNCTION "accounts_immu_check"();
/// ALTER TABLE "accounts" ENABLE ALWAYS TRIGGER "immu_check_insert";
///
/// -- The write path's first step, in one call: takes the write lock of entity $1 (the advisory lock
/// -- whose key $2 immu_core::lock_key computes) and returns the entity's latest version, read after
/// -- the lock in a statement of its own.
/// CREATE FUNCTION "accounts_immu_latest"(uuid, bigint) RETURNS SETOF "accounts"
/// LANGUAGE plpgsql AS $$
/// BEGIN
///     PERFORM pg_advisory_xact_lock($2);
///     RETURN QUERY SELECT * FROM "accounts" WHERE "entity_id" = $1 ORDER BY "version" DESC LIMIT 1;
/// END
/// $$;
/// ```
pub fn create_table<T: Immutable>() -> Result<String> {
    create_table_for(&T::TABLE)
}

/// [`create_table`] for a table description.
pub fn create_table_for(table: &TableDef) -> Result<String> {
    validate_table(table)?;
    let reserved = [
        (ID, "uuid", false),
        (ENTITY_ID, "uuid", false),
        (VERSION, "bigint", false),
        (VALID_FROM, "timestamptz", false),
        (DELETED_AT, "timestamptz", true),
    ];
    let own = table.columns.iter().map(|c| (c.name, c.sql_type, c.nullable));
    let columns: Vec<(String, &str, bool)> =
        reserved.into_iter().chain(own).map(|(n, ty, null)| (quote(n), ty, null)).collect();
    let name_width = columns.iter().map(|(n, _, _)| n.len()).max().unwrap_or(0);
    let type_width = columns.iter().filter(|c| !c.2).map(|(_, ty, _)| ty.len()).max().unwrap_or(0);

    let mut lines: Vec<String> = columns
        .iter()
        .map(|(name, ty, nullable)| {
            if *nullable {
                format!("    {name:<name_width$} {ty}")
            } else {
                format!("    {name:<name_width$} {ty:<type_width$} NOT NULL")
            }
        })
        .collect();
    let name = table.name;
    lines.extend([
        format!(r#"    CONSTRAINT "{name}_pkey" PRIMARY KEY ("entity_id", "version")"#),
        format!(r#"    CONSTRAINT "{name}_id_key" UNIQUE ("id")"#),
        r#"    CONSTRAINT "immu_version_positive" CHECK ("version" >= 1)"#.to_owned(),
        // Finite, and within what chrono (so every Rust reader) can represent.
        r#"    CONSTRAINT "immu_valid_from_in_range" CHECK (isfinite("valid_from") AND "valid_from" < '262143-01-01 00:00:00+00')"#.to_owned(),
        r#"    CONSTRAINT "immu_tombstone_at_valid_from" CHECK ("deleted_at" IS NULL OR "deleted_at" = "valid_from")"#.to_owned(),
    ]);
    for column in table.columns {
        if let Some(target) = column.references {
            validate_identifier(target)?;
            // PostgreSQL's own naming, cut to its 63-byte limit (names are ASCII).
            let mut constraint = format!("{name}_{}_fkey", column.name);
            constraint.truncate(MAX_IDENTIFIER_LEN);
            lines.push(format!(
                "    CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} (\"entity_id\")",
                quote(&constraint),
                quote(column.name),
                quote(&crate::sql::identity_table_name(target)),
            ));
        }
    }
    let ddl = DDL_TEMPLATE
        .replace("@RUST@", table.rust_name)
        .replace("@IDENTITY@", &quote(&crate::sql::identity_table_name(name)))
        .replace("@IDENTITY_PKEY@", &quote(&format!("{name}_entities_pkey")))
        .replace("@TABLE@", &quote(name))
        .replace("@AS_OF_IDX@", &quote(&format!("{name}_as_of_idx")))
        .replace("@CHECK_FN@", &quote(&format!("{name}_immu_check")))
        .replace("@CHECK_QUERY@", &latest_query(table, Some([VERSION, VALID_FROM]), r#"NEW."entity_id""#))
        .replace("@LATEST_FN@", &quote(&crate::sql::latest_function_name(name)))
        .replace("@LATEST_QUERY@", &latest_query(table, None::<[&str; 0]>, "$1"))
        .replace("@COLUMNS@", &lines.join(",\n"));
    Ok(ddl)
}

/// The query that reads an entity's latest version ([`resolve::latest`](crate::resolve)), for the
/// functions of the DDL; `entity` is the SQL expression of the entity id.
fn latest_query<I>(table: &TableDef, columns: Option<I>, entity: &'static str) -> String
where
    I: IntoIterator<Item = &'static str>,
{
    let entity = sea_query::Expr::Keyword(sea_query::Keyword::Custom(entity.into()));
    crate::resolve::latest(table, None, columns, entity, crate::resolve::At::Current)
        .to_string(sea_query::PostgresQueryBuilder)
}

/// The DDL of a versioned table; `@NAME@`s are replaced by quoted identifiers or queries.
const DDL_TEMPLATE: &str = r#"-- Versioned table of `@RUST@`, generated by immu_core::schema::create_table.
-- History is append-only: the triggers below refuse UPDATE, DELETE and TRUNCATE, and any
-- inserted version that would skip or repeat a number or go back in time.

-- One row per entity, written when its version 1 is: the target of foreign keys to it.
CREATE TABLE @IDENTITY@ (
    "entity_id" uuid NOT NULL,
    CONSTRAINT @IDENTITY_PKEY@ PRIMARY KEY ("entity_id")
);
CREATE TRIGGER "immu_append_only"
    BEFORE UPDATE OR DELETE OR TRUNCATE ON @IDENTITY@
    FOR EACH STATEMENT EXECUTE FUNCTION immu.refuse_change();
ALTER TABLE @IDENTITY@ ENABLE ALWAYS TRIGGER "immu_append_only";

-- Every version of every entity.
CREATE TABLE @TABLE@ (
@COLUMNS@
);
CREATE INDEX @AS_OF_IDX@ ON @TABLE@ ("entity_id", "valid_from", "version");
CREATE TRIGGER "immu_append_only"
    BEFORE UPDATE OR DELETE OR TRUNCATE ON @TABLE@
    FOR EACH STATEMENT EXECUTE FUNCTION immu.refuse_change();
ALTER TABLE @TABLE@ ENABLE ALWAYS TRIGGER "immu_append_only";

-- Checks each inserted version against the entity's latest (SQLSTATE IMMU2) and registers the
-- entity's identity with its version 1.
CREATE FUNCTION @CHECK_FN@() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    latest_version bigint;
    latest_valid_from timestamptz;
BEGIN
    @CHECK_QUERY@
        INTO latest_version, latest_valid_from;
    IF NEW."version" <> COALESCE(latest_version, 0) + 1 THEN
        RAISE EXCEPTION 'version % of entity % would skip or repeat a version: its latest version is %',
            NEW."version", NEW."entity_id", COALESCE(latest_version, 0)
            USING ERRCODE = 'IMMU2', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME;
    END IF;
    IF NEW."valid_from" < latest_valid_from THEN
        RAISE EXCEPTION 'version % of entity % is valid from %, before version % (valid from %)',
            NEW."version", NEW."entity_id", NEW."valid_from", latest_version, latest_valid_from
            USING ERRCODE = 'IMMU2', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME;
    END IF;
    IF NEW."version" = 1 THEN
        INSERT INTO @IDENTITY@ ("entity_id") VALUES (NEW."entity_id") ON CONFLICT DO NOTHING;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER "immu_check_insert"
    BEFORE INSERT ON @TABLE@
    FOR EACH ROW EXECUTE FUNCTION @CHECK_FN@();
ALTER TABLE @TABLE@ ENABLE ALWAYS TRIGGER "immu_check_insert";

-- The write path's first step, in one call: takes the write lock of entity $1 (the advisory lock
-- whose key $2 immu_core::lock_key computes) and returns the entity's latest version, read after
-- the lock in a statement of its own.
CREATE FUNCTION @LATEST_FN@(uuid, bigint) RETURNS SETOF @TABLE@
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock($2);
    RETURN QUERY @LATEST_QUERY@;
END
$$;
"#;

/// Quotes an identifier for PostgreSQL (doubling any `"`; validated names have none).
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

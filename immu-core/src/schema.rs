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

/// The reserved columns: name, type, nullable.
const RESERVED: [(&str, &str, bool); 5] = [
    (ID, "uuid", false),
    (ENTITY_ID, "uuid", false),
    (VERSION, "bigint", false),
    (VALID_FROM, "timestamptz", false),
    (DELETED_AT, "timestamptz", true),
];

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
        if table.columns[..i].iter().any(|c| c.name == column.name) {
            return Err(Error::InvalidIdentifier {
                name: column.name.to_owned(),
                reason: "the column name is used twice",
            });
        }
    }
    Ok(())
}

/// The DDL of `T`'s versioned table: the history table with the reserved columns, the entity's
/// own columns (types from [`ColumnType`] or `#[immu(sql_type)]`), the constraints and foreign
/// keys for `#[immu(references = ...)]`; the projection table `<table>_current` (each entity's
/// latest version: what current reads and lists scan, the target of foreign keys); the trigger
/// that checks each inserted version and keeps the projection in step; the triggers that refuse
/// any other change of either table in the database; and the write path's lock-and-read function.
///
/// Each version costs one heap row and one entry in one index, the primary key
/// `(entity_id, valid_from, version)`, which serves as-of reads at any depth of history and
/// version lookups. `id` has no index: add `CREATE UNIQUE INDEX ... ("id")` if you look
/// versions up by it.
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
/// assert!(ddl.contains(r#"CONSTRAINT "accounts_pkey" PRIMARY KEY ("entity_id", "valid_from", "version")"#));
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
/// -- Every version of every entity. The primary key is also the as-of index: valid_from never
/// -- decreases along an entity's versions, so it orders them like version does.
/// CREATE TABLE "accounts" (
///     "id"         uuid        NOT NULL,
///     "entity_id"  uuid        NOT NULL,
///     "version"    bigint      NOT NULL,
///     "valid_from" timestamptz NOT NULL,
///     "deleted_at" timestamptz,
///     "owner"      text        NOT NULL,
///     "balance"    bigint      NOT NULL,
///     CONSTRAINT "accounts_pkey" PRIMARY KEY ("entity_id", "valid_from", "version"),
///     CONSTRAINT "immu_version_positive" CHECK ("version" >= 1),
///     CONSTRAINT "immu_valid_from_in_range" CHECK (isfinite("valid_from") AND "valid_from" < '262143-01-01 00:00:00+00'),
///     CONSTRAINT "immu_tombstone_at_valid_from" CHECK ("deleted_at" IS NULL OR "deleted_at" = "valid_from")
/// );
/// CREATE TRIGGER "immu_append_only"
///     BEFORE UPDATE OR DELETE OR TRUNCATE ON "accounts"
///     FOR EACH STATEMENT EXECUTE FUNCTION immu.refuse_change();
/// ALTER TABLE "accounts" ENABLE ALWAYS TRIGGER "immu_append_only";
///
/// -- The latest version of each entity (tombstones included), kept in step by the trigger below and
/// -- writable by nothing else: what current reads and lists scan, and the target of foreign keys.
/// -- Statements run by a trigger (depth 1 and more) pass the WHEN clause without a function call.
/// CREATE TABLE "accounts_current" (
///     "id"         uuid        NOT NULL,
///     "entity_id"  uuid        NOT NULL,
///     "version"    bigint      NOT NULL,
///     "valid_from" timestamptz NOT NULL,
///     "deleted_at" timestamptz,
///     "owner"      text        NOT NULL,
///     "balance"    bigint      NOT NULL,
///     CONSTRAINT "accounts_current_pkey" PRIMARY KEY ("entity_id")
/// ) WITH (fillfactor = 90);
/// CREATE TRIGGER "immu_projection"
///     BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON "accounts_current"
///     FOR EACH STATEMENT WHEN (pg_trigger_depth() < 1)
///     EXECUTE FUNCTION immu.refuse_projection_change('accounts');
/// ALTER TABLE "accounts_current" ENABLE ALWAYS TRIGGER "immu_projection";
///
/// -- Checks each inserted version against the entity's latest (SQLSTATE IMMU2) and makes it the
/// -- latest: version 1 adds the entity's row to accounts_current, version n replaces version n - 1
/// -- there. The row lock of that update orders concurrent writers of one entity, so a version is
/// -- never stored twice, even by a writer that bypassed the advisory lock.
/// CREATE FUNCTION "accounts_immu_check"() RETURNS trigger
/// LANGUAGE plpgsql AS $$
/// DECLARE
///     latest_version bigint;
///     latest_valid_from timestamptz;
/// BEGIN
///     IF NEW."version" = 1 THEN
///         INSERT INTO "accounts_current" VALUES (NEW.*) ON CONFLICT DO NOTHING;
///     ELSE
///         UPDATE "accounts_current" SET ("id", "version", "valid_from", "deleted_at", "owner", "balance") = (NEW."id", NEW."version", NEW."valid_from", NEW."deleted_at", NEW."owner", NEW."balance")
///             WHERE "entity_id" = NEW."entity_id" AND "version" = NEW."version" - 1 AND "valid_from" <= NEW."valid_from";
///     END IF;
///     IF NOT FOUND THEN
///         SELECT "version", "valid_from" FROM "accounts_current" WHERE "entity_id" = NEW."entity_id"
///             INTO latest_version, latest_valid_from;
///         IF NEW."version" <> COALESCE(latest_version, 0) + 1 THEN
///             RAISE EXCEPTION 'version % of entity % would skip or repeat a version: its latest version is %',
///                 NEW."version", NEW."entity_id", COALESCE(latest_version, 0)
///                 USING ERRCODE = 'IMMU2', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME;
///         END IF;
///         RAISE EXCEPTION 'version % of entity % is valid from %, before version % (valid from %)',
///             NEW."version", NEW."entity_id", NEW."valid_from", latest_version, latest_valid_from
///             USING ERRCODE = 'IMMU2', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME;
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
/// CREATE FUNCTION "accounts_immu_latest"(uuid, bigint) RETURNS SETOF "accounts_current"
/// LANGUAGE plpgsql AS $$
/// BEGIN
///     PERFORM pg_advisory_xact_lock($2);
///     RETURN QUERY SELECT * FROM "accounts_current" WHERE "entity_id" = $1;
/// END
/// $$;
///
/// -- The write path outside a caller's transaction: each procedure runs one of immu's write
/// -- statements and commits it before it returns, in one round trip. A procedure can commit only
/// -- when CALLed outside a transaction block: inside one (even a block the client lost track of) the
/// -- CALL fails with SQLSTATE 2D000 instead of leaving the write uncommitted.
/// CREATE PROCEDURE "accounts_immu_insert"(uuid, uuid, text, bigint, OUT "o1" uuid, OUT "o2" uuid, OUT "o3" bigint, OUT "o4" timestamptz, OUT "o5" timestamptz, OUT "o6" text, OUT "o7" bigint)
/// LANGUAGE plpgsql AS $$
/// #variable_conflict use_column
/// BEGIN
///     INSERT INTO "accounts" ("id", "entity_id", "version", "valid_from", "deleted_at", "owner", "balance") VALUES ($1, $2, 1, clock_timestamp(), NULL, $3, $4) RETURNING "id", "entity_id", "version", "valid_from", "deleted_at", "owner", "balance"
///         INTO "o1", "o2", "o3", "o4", "o5", "o6", "o7";
///     COMMIT;
/// END
/// $$;
/// CREATE PROCEDURE "accounts_immu_append"(uuid, uuid, bigint, bigint, text, bigint, OUT "o1" uuid, OUT "o2" uuid, OUT "o3" bigint, OUT "o4" timestamptz, OUT "o5" timestamptz, OUT "o6" text, OUT "o7" bigint, OUT "o8" bigint, OUT "o9" timestamptz)
/// LANGUAGE plpgsql AS $$
/// #variable_conflict use_column
/// BEGIN
///     PERFORM pg_advisory_xact_lock($3);
///     WITH "latest" AS (SELECT * FROM "accounts_current" WHERE "entity_id" = $2), "appended" AS (INSERT INTO "accounts" ("id", "entity_id", "version", "valid_from", "deleted_at", "owner", "balance") SELECT $1, "latest"."entity_id", "latest"."version" + 1, GREATEST(clock_timestamp(), "latest"."valid_from"), NULL::timestamptz, $5, $6 FROM "latest" WHERE "latest"."deleted_at" IS NULL AND ($4 IS NULL OR "latest"."version" = $4) RETURNING "id", "entity_id", "version", "valid_from", "deleted_at", "owner", "balance") SELECT "appended"."id", "appended"."entity_id", "appended"."version", "appended"."valid_from", "appended"."deleted_at", "appended"."owner", "appended"."balance", "latest"."version", "latest"."deleted_at" FROM "latest" LEFT JOIN "appended" ON TRUE
///         INTO "o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8", "o9";
///     COMMIT;
/// END
/// $$;
/// CREATE PROCEDURE "accounts_immu_delete"(uuid, uuid, bigint, OUT "o1" uuid, OUT "o2" uuid, OUT "o3" bigint, OUT "o4" timestamptz, OUT "o5" timestamptz, OUT "o6" text, OUT "o7" bigint, OUT "o8" bigint, OUT "o9" timestamptz)
/// LANGUAGE plpgsql AS $$
/// #variable_conflict use_column
/// BEGIN
///     PERFORM pg_advisory_xact_lock($3);
///     WITH "latest" AS (SELECT * FROM "accounts_current" WHERE "entity_id" = $2), "appended" AS (INSERT INTO "accounts" ("id", "entity_id", "version", "valid_from", "deleted_at", "owner", "balance") SELECT $1, "latest"."entity_id", "latest"."version" + 1, "next"."ts", "next"."ts", "latest"."owner", "latest"."balance" FROM "latest" INNER JOIN LATERAL (SELECT GREATEST(clock_timestamp(), "latest"."valid_from") AS "ts") AS "next" ON TRUE WHERE "latest"."deleted_at" IS NULL RETURNING "id", "entity_id", "version", "valid_from", "deleted_at", "owner", "balance") SELECT "appended"."id", "appended"."entity_id", "appended"."version", "appended"."valid_from", "appended"."deleted_at", "appended"."owner", "appended"."balance", "latest"."version", "latest"."deleted_at" FROM "latest" LEFT JOIN "appended" ON TRUE
///         INTO "o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8", "o9";
///     COMMIT;
/// END
/// $$;
/// CREATE PROCEDURE "accounts_immu_undelete"(uuid, uuid, bigint, OUT "o1" uuid, OUT "o2" uuid, OUT "o3" bigint, OUT "o4" timestamptz, OUT "o5" timestamptz, OUT "o6" text, OUT "o7" bigint, OUT "o8" bigint, OUT "o9" timestamptz)
/// LANGUAGE plpgsql AS $$
/// #variable_conflict use_column
/// BEGIN
///     PERFORM pg_advisory_xact_lock($3);
///     WITH "latest" AS (SELECT * FROM "accounts_current" WHERE "entity_id" = $2), "appended" AS (INSERT INTO "accounts" ("id", "entity_id", "version", "valid_from", "deleted_at", "owner", "balance") SELECT $1, "latest"."entity_id", "latest"."version" + 1, "next"."ts", NULL::timestamptz, "latest"."owner", "latest"."balance" FROM "latest" INNER JOIN LATERAL (SELECT GREATEST(clock_timestamp(), "latest"."valid_from") AS "ts") AS "next" ON TRUE WHERE "latest"."deleted_at" IS NOT NULL RETURNING "id", "entity_id", "version", "valid_from", "deleted_at", "owner", "balance") SELECT "appended"."id", "appended"."entity_id", "appended"."version", "appended"."valid_from", "appended"."deleted_at", "appended"."owner", "appended"."balance", "latest"."version", "latest"."deleted_at" FROM "latest" LEFT JOIN "appended" ON TRUE
///         INTO "o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8", "o9";
///     COMMIT;
/// END
/// $$;
/// ```
pub fn create_table<T: Immutable>() -> Result<String> {
    create_table_for(&T::TABLE)
}

/// [`create_table`] for a table description.
pub fn create_table_for(table: &TableDef) -> Result<String> {
    validate_table(table)?;
    let own = table.columns.iter().map(|c| (c.name, c.sql_type, c.nullable));
    let columns: Vec<(String, &str, bool)> =
        RESERVED.into_iter().chain(own).map(|(n, ty, null)| (quote(n), ty, null)).collect();
    let name_width = columns.iter().map(|(n, _, _)| n.len()).max().unwrap_or(0);
    let type_width = columns.iter().filter(|c| !c.2).map(|(_, ty, _)| ty.len()).max().unwrap_or(0);

    let column_lines: Vec<String> = columns
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
    let current = crate::sql::current_table_name(name);
    let mut current_lines = column_lines.clone();
    current_lines
        .push(format!(r#"    CONSTRAINT {} PRIMARY KEY ("entity_id")"#, quote(&format!("{current}_pkey"))));
    let mut lines = column_lines;
    lines.extend([
        format!(r#"    CONSTRAINT "{name}_pkey" PRIMARY KEY ("entity_id", "valid_from", "version")"#),
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
                quote(&crate::sql::current_table_name(target)),
            ));
        }
    }
    let ddl = DDL_TEMPLATE
        .replace("@RUST@", table.rust_name)
        .replace("@TABLE_LITERAL@", &format!("'{name}'"))
        .replace("@TABLE@", &quote(name))
        .replace("@CURRENT_TEXT@", &current)
        .replace("@CURRENT_COLUMNS@", &current_lines.join(",\n"))
        .replace("@CURRENT@", &quote(&current))
        .replace("@CHECK_FN@", &quote(&format!("{name}_immu_check")))
        .replace("@LATEST_FN@", &quote(&crate::sql::latest_function_name(name)))
        .replace("@SET@", &projection_update(table, ""))
        .replace("@NEW_SET@", &projection_update(table, "NEW."))
        .replace("@PROCEDURES@", &procedure_ddl(table))
        .replace("@COLUMNS@", &lines.join(",\n"));
    Ok(ddl)
}

/// SQL that rebuilds `T`'s projection table (`<table>_current`) from its history: every entity's
/// row is set to its highest stored version, missing rows are added, rows of entities without
/// versions are removed. The projection is only ever derived from the history, so this repairs
/// it whatever happened to it (say, triggers disabled by hand during a restore).
///
/// Run it as the tables' owner, inside one transaction (it disables the projection's refusal
/// trigger for its own statements and enables it again; `ALTER TABLE` locks the table, so
/// writers wait until the transaction ends). Every projection row is rewritten once. Removing a
/// row that another table's foreign key still references fails, and the transaction with it.
///
/// ```no_run
/// # use immu_core::Immutable;
/// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
/// # async fn demo(pool: sqlx::PgPool) -> immu_core::Result<()> {
/// let mut tx = pool.begin().await?;
/// let sql = immu_core::schema::rebuild_projection::<Account>()?;
/// sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub fn rebuild_projection<T: Immutable>() -> Result<String> {
    rebuild_projection_for(&T::TABLE)
}

/// [`rebuild_projection`] for a table description.
pub fn rebuild_projection_for(table: &TableDef) -> Result<String> {
    validate_table(table)?;
    let history = quote(table.name);
    let current = quote(&crate::sql::current_table_name(table.name));
    let set = projection_update(table, "");
    let excluded = projection_update(table, "EXCLUDED.");
    Ok(format!(
        r#"-- Rebuilds {current} from {history}, generated by immu_core::schema::rebuild_projection.
ALTER TABLE {current} DISABLE TRIGGER "immu_projection";
INSERT INTO {current}
    SELECT DISTINCT ON ("entity_id") * FROM {history} ORDER BY "entity_id", "valid_from" DESC, "version" DESC
    ON CONFLICT ("entity_id") DO UPDATE SET ({set}) = ({excluded});
DELETE FROM {current} AS "immu_c"
    WHERE NOT EXISTS (SELECT FROM {history} AS "immu_h" WHERE "immu_h"."entity_id" = "immu_c"."entity_id");
ALTER TABLE {current} ENABLE ALWAYS TRIGGER "immu_projection";
"#
    ))
}

/// The columns a projection row's update sets: every column but the key, which the row keeps,
/// each prefixed with `source` (`NEW.`, `EXCLUDED.` or nothing).
fn projection_update(table: &TableDef, source: &str) -> String {
    crate::sql::all_columns(table)
        .filter(|c| *c != ENTITY_ID)
        .map(|c| format!("{source}{}", quote(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The write procedures of the DDL (see [`crate::sql::procedures`]).
fn procedure_ddl(table: &TableDef) -> String {
    let sql = crate::sql::Sql::new(table);
    let output_types: Vec<&str> = RESERVED
        .iter()
        .map(|(_, ty, _)| *ty)
        .chain(table.columns.iter().map(|c| c.sql_type))
        .chain(["bigint", "timestamptz"])
        .collect();
    let mut out = String::new();
    for (kind, statement, inputs) in crate::sql::procedures(table, &sql) {
        let outputs = crate::sql::written_columns(table, kind);
        let parameters: Vec<String> = inputs
            .iter()
            .map(|ty| (*ty).to_owned())
            .chain(
                output_types[..outputs].iter().enumerate().map(|(i, ty)| format!("OUT \"o{}\" {ty}", i + 1)),
            )
            .collect();
        let targets: Vec<String> = (1..=outputs).map(|i| format!("\"o{i}\"")).collect();
        out.push_str(&format!(
            "CREATE PROCEDURE {}({})\nLANGUAGE plpgsql AS $$\n#variable_conflict use_column\nBEGIN\n    {statement}\n        INTO {};\n    COMMIT;\nEND\n$$;\n",
            quote(&crate::sql::procedure_name(table.name, kind)),
            parameters.join(", "),
            targets.join(", "),
        ));
    }
    out
}

/// The DDL of a versioned table; `@NAME@`s are replaced by quoted identifiers or lists.
const DDL_TEMPLATE: &str = r#"-- Versioned table of `@RUST@`, generated by immu_core::schema::create_table.
-- History is append-only: the triggers below refuse UPDATE, DELETE and TRUNCATE, and any
-- inserted version that would skip or repeat a number or go back in time.

-- Every version of every entity. The primary key is also the as-of index: valid_from never
-- decreases along an entity's versions, so it orders them like version does.
CREATE TABLE @TABLE@ (
@COLUMNS@
);
CREATE TRIGGER "immu_append_only"
    BEFORE UPDATE OR DELETE OR TRUNCATE ON @TABLE@
    FOR EACH STATEMENT EXECUTE FUNCTION immu.refuse_change();
ALTER TABLE @TABLE@ ENABLE ALWAYS TRIGGER "immu_append_only";

-- The latest version of each entity (tombstones included), kept in step by the trigger below and
-- writable by nothing else: what current reads and lists scan, and the target of foreign keys.
-- Statements run by a trigger (depth 1 and more) pass the WHEN clause without a function call.
CREATE TABLE @CURRENT@ (
@CURRENT_COLUMNS@
) WITH (fillfactor = 90);
CREATE TRIGGER "immu_projection"
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON @CURRENT@
    FOR EACH STATEMENT WHEN (pg_trigger_depth() < 1)
    EXECUTE FUNCTION immu.refuse_projection_change(@TABLE_LITERAL@);
ALTER TABLE @CURRENT@ ENABLE ALWAYS TRIGGER "immu_projection";

-- Checks each inserted version against the entity's latest (SQLSTATE IMMU2) and makes it the
-- latest: version 1 adds the entity's row to @CURRENT_TEXT@, version n replaces version n - 1
-- there. The row lock of that update orders concurrent writers of one entity, so a version is
-- never stored twice, even by a writer that bypassed the advisory lock.
CREATE FUNCTION @CHECK_FN@() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    latest_version bigint;
    latest_valid_from timestamptz;
BEGIN
    IF NEW."version" = 1 THEN
        INSERT INTO @CURRENT@ VALUES (NEW.*) ON CONFLICT DO NOTHING;
    ELSE
        UPDATE @CURRENT@ SET (@SET@) = (@NEW_SET@)
            WHERE "entity_id" = NEW."entity_id" AND "version" = NEW."version" - 1 AND "valid_from" <= NEW."valid_from";
    END IF;
    IF NOT FOUND THEN
        SELECT "version", "valid_from" FROM @CURRENT@ WHERE "entity_id" = NEW."entity_id"
            INTO latest_version, latest_valid_from;
        IF NEW."version" <> COALESCE(latest_version, 0) + 1 THEN
            RAISE EXCEPTION 'version % of entity % would skip or repeat a version: its latest version is %',
                NEW."version", NEW."entity_id", COALESCE(latest_version, 0)
                USING ERRCODE = 'IMMU2', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME;
        END IF;
        RAISE EXCEPTION 'version % of entity % is valid from %, before version % (valid from %)',
            NEW."version", NEW."entity_id", NEW."valid_from", latest_version, latest_valid_from
            USING ERRCODE = 'IMMU2', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME;
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
CREATE FUNCTION @LATEST_FN@(uuid, bigint) RETURNS SETOF @CURRENT@
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock($2);
    RETURN QUERY SELECT * FROM @CURRENT@ WHERE "entity_id" = $1;
END
$$;

-- The write path outside a caller's transaction: each procedure runs one of immu's write
-- statements and commits it before it returns, in one round trip. A procedure can commit only
-- when CALLed outside a transaction block: inside one (even a block the client lost track of) the
-- CALL fails with SQLSTATE 2D000 instead of leaving the write uncommitted.
@PROCEDURES@"#;

/// Quotes an identifier for PostgreSQL (doubling any `"`; validated names have none).
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

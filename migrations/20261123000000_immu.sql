-- immu: database objects shared by every versioned (append-only) table.
--
-- Run it before the migrations that create versioned tables, either embedded
-- (`immu_core::MIGRATOR.run(&pool)`, tracked in `immu._migrations`) or with the sqlx CLI
-- (`sqlx migrate run --source migrations`), or copy it into your own migrations folder.

CREATE SCHEMA IF NOT EXISTS immu;

COMMENT ON SCHEMA immu IS 'immu: append-only, versioned tables';

-- Refuses any in-place change of a versioned table. Each versioned table attaches it as
--   CREATE TRIGGER "immu_append_only" BEFORE UPDATE OR DELETE OR TRUNCATE ON <table>
--       FOR EACH STATEMENT EXECUTE FUNCTION immu.refuse_change();
--   ALTER TABLE <table> ENABLE ALWAYS TRIGGER "immu_append_only";
-- A statement-level trigger fires even when no row matches, and ENABLE ALWAYS keeps it firing
-- under session_replication_role = replica. The error's SQLSTATE is IMMU1.
CREATE OR REPLACE FUNCTION immu.refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on "%" refused: the table is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'IMMU1',
              SCHEMA = TG_TABLE_SCHEMA,
              TABLE = TG_TABLE_NAME,
              DETAIL = format('"%s"."%s" is a versioned table: immu keeps every version, and history is never changed in place.', TG_TABLE_SCHEMA, TG_TABLE_NAME),
              HINT = 'Append a new version instead: update, delete and undelete through immu add rows.';
END
$$;

COMMENT ON FUNCTION immu.refuse_change() IS 'immu: refuses UPDATE, DELETE and TRUNCATE of a versioned table';

-- Refuses any direct change of a projection table (`<table>_current`, one row per entity holding
-- its latest version), which only the insert trigger of its versioned table writes. Attached as
--   CREATE TRIGGER "immu_projection" BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON <table>_current
--       FOR EACH STATEMENT WHEN (pg_trigger_depth() < 1)
--       EXECUTE FUNCTION immu.refuse_projection_change('<table>');
-- The WHEN clause lets the statements of the versioned table's trigger through without calling
-- it; a client's statement (trigger depth 0 before, 1 inside) is refused with SQLSTATE IMMU1.
CREATE OR REPLACE FUNCTION immu.refuse_projection_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() > 1 THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION '% on "%" refused: the table is maintained by immu', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'IMMU1',
              SCHEMA = TG_TABLE_SCHEMA,
              TABLE = TG_TABLE_NAME,
              DETAIL = format('"%s"."%s" holds the latest version of each entity of "%s", kept in step by the trigger on that versioned table.', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]),
              HINT = 'Append a new version instead: insert, update, delete and undelete through immu add rows to the versioned table.';
END
$$;

COMMENT ON FUNCTION immu.refuse_projection_change() IS 'immu: refuses direct changes of a projection table (<table>_current)';

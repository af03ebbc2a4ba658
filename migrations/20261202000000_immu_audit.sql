-- immu release 3: who and why on every version, reverts, no-op writes, partial updates.
--
-- Every version now records who wrote it and why, stored by the database with the version:
--
--   immu_actor        text   the application's user (an id, an email): given with the write, or
--                            for a whole transaction with SET LOCAL immu.actor = '...'
--   immu_reason       text   why (free text), likewise (immu.reason)
--   immu_context      jsonb  free-form context (request id, IP, ticket), likewise (immu.context)
--   immu_db_user      text   the database user of the session that wrote it (session_user),
--                            stamped by the insert trigger: nobody can give another
--   immu_application  text   the session's application_name, stamped by the insert trigger
--   immu_revert_of    bigint set on a version that reverts the entity to version n's data
--
-- A table can require an actor (immu.configure_versioning(t, require_actor => true)): a version
-- without one is refused (SQLSTATE IMMU5) and nothing is written. immu's writes append nothing when
-- the new data equals the latest version's, unless the table records identical versions
-- (record_identical => true). Raw SQL inserts store what they insert.
--
-- Like release 2, this migration replaces the generator (immu.generate) and ends with
-- SELECT immu.upgrade(), which adds the new columns to every versioned table (NULL in versions
-- written before) and regenerates its machinery. Nothing of a user's migrations changes.

CREATE OR REPLACE FUNCTION immu.release() RETURNS integer
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
RETURN 3;

-- The reserved columns, in order: release 2's, then the provenance columns of release 3 (added at
-- the end of a table that already exists).
CREATE OR REPLACE FUNCTION immu.reserved_columns(OUT name text, OUT type text) RETURNS SETOF record
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM (VALUES
        ('id', 'uuid'),
        ('entity_id', 'uuid'),
        ('version', 'bigint'),
        ('valid_from', 'timestamp with time zone'),
        ('deleted_at', 'timestamp with time zone'),
        ('immu_shape', 'integer'),
        ('immu_actor', 'text'),
        ('immu_reason', 'text'),
        ('immu_context', 'jsonb'),
        ('immu_db_user', 'text'),
        ('immu_application', 'text'),
        ('immu_revert_of', 'bigint')
    ) AS r (name, type);
END;

-- Adds the reserved columns `history` lacks (a table versioned by an earlier release), nullable:
-- versions written before have none of them. Catalog-only (no rewrite); the projection gets them
-- from immu.sync_versioning.
CREATE FUNCTION immu.add_reserved_columns(history regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    missing text;
BEGIN
    PERFORM immu.require_owner(history);
    SELECT string_agg(format('ADD COLUMN %I %s', r.name, r.type), ', ' ORDER BY r.o) INTO missing
      FROM immu.reserved_columns() WITH ORDINALITY AS r (name, type, o)
     WHERE NOT EXISTS (SELECT FROM immu.columns_of(history) c WHERE c.name = r.name);
    IF missing IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s %s', history, missing);
    END IF;
END
$fn$;

-- Release 2's sync (the projection's columns from the history's) keeps its body under another
-- name; immu.sync_versioning adds the reserved columns first.
ALTER FUNCTION immu.sync_versioning(regclass) RENAME TO sync_columns;
COMMENT ON FUNCTION immu.sync_columns(regclass) IS 'immu: brings the projection''s columns in step with the history''s, then regenerates the machinery (called by immu.sync_versioning)';

-- Brings the projection and the machinery of `history` in step with its columns: run it in the
-- migration that changes a versioned table's columns, after the ALTER TABLE (see immu.sync_columns).
CREATE FUNCTION immu.sync_versioning(history regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    PERFORM immu.require_owner(history);
    PERFORM immu.projection_of(history);
    PERFORM immu.add_reserved_columns(history);
    PERFORM immu.sync_columns(history);
END
$fn$;

-- The per-table options, and what each means:
--   require_actor     a version without an actor is refused (SQLSTATE IMMU5), raw SQL's included
--   record_identical  immu's writes append a version even when its data equals the latest's
-- Sets those given (NULL: unchanged), regenerates the machinery, returns the table's options. Run it
-- as the table's owner, in a migration:
--
--     SELECT immu.configure_versioning('accounts', require_actor => true);
CREATE FUNCTION immu.configure_versioning(history regclass, require_actor boolean DEFAULT NULL,
                                          record_identical boolean DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    result jsonb;
BEGIN
    PERFORM immu.require_owner(history);
    PERFORM immu.projection_of(history);
    UPDATE immu.versioned_tables v
       SET options = pg_catalog.jsonb_strip_nulls(v.options || jsonb_build_object(
               'require_actor', coalesce(require_actor, (v.options->>'require_actor')::boolean),
               'record_identical', coalesce(record_identical, (v.options->>'record_identical')::boolean)))
     WHERE v.table_name = history
    RETURNING v.options INTO result;
    PERFORM immu.sync_versioning(history);
    RETURN result;
END
$fn$;

-- Whether `history` has option `name` set to true.
CREATE FUNCTION immu.option(history regclass, name text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN coalesce((SELECT (v.options->>name)::boolean FROM immu.versioned_tables v WHERE v.table_name = history), false);

-- Whether `actor` names someone: not NULL, and not only blanks (white space, zero-width and other
-- invisible format characters).
CREATE FUNCTION immu.is_actor(actor text) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
RETURN actor IS NOT NULL AND pg_catalog.regexp_replace(actor, '[[:space:]\u00a0\u1680\u180e\u2000-\u200f\u2028-\u202f\u205f-\u2064\u3000\ufeff]', '', 'g') <> '';

-- The machinery, regenerated: release 2's generator with provenance, reverts, no-op writes and
-- partial updates.

-- (Re)creates the machinery of `history` from its current columns: the insert trigger that checks
-- every version and keeps the projection in step, the refusal triggers, the lock-and-read function,
-- the write function and the committing write procedure. Records them in the catalog. The history,
-- the projection and the catalog row must exist, with the same columns (see sync_versioning).
CREATE OR REPLACE FUNCTION immu.generate(history regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    entry immu.versioned_tables;
    projection regclass;
    owner name;
    check_fn text := immu.routine_name(history, 'check');
    latest_fn text := immu.routine_name(history, 'latest');
    write_fn text := immu.routine_name(history, 'write');
    write_bare text := (SELECT c.relname || '_immu_write' FROM pg_catalog.pg_class c WHERE c.oid = history);
    commit_proc text := immu.routine_name(history, 'commit');
    commit_bare text := (SELECT c.relname || '_immu_commit' FROM pg_catalog.pg_class c WHERE c.oid = history);
    health text;
    cols text;            -- every history column, in order
    own_cols text[];      -- the entity's own columns (not reserved)
    own_types text[];
    own_ptypes text[];
    reserved text[] := ARRAY(SELECT name FROM immu.reserved_columns());
    new_values text;      -- NEW.<col>::<projection type>, in order
    set_list text;        -- projection columns but the key
    set_values text;
    same_data text;       -- NEW's own data equals the projection row's (binary image)
    update_sql text;
    keep text;
    params text;
    inserted_values text;
    updated_values text;
    copied_values text;
    proc_params text;
    into_list text;
    arg_list text;
    own_count integer;
    policy name;
    new_routines text[];
    anchor_table regclass;
    old text;
    provenance text;      -- the trigger's stamping of who wrote a version
    revert_same text;     -- the trigger: a revert's data equals the version it reverts to
    same_new text;        -- the write function: the new data equals the latest version's
    same_revert text;     -- the write function: version n's data equals the latest version's
    reverted_values text; -- the write function: a revert's row
    skip_identical boolean;
    require_actor text;   -- the write function's refusal of a write without an actor, if the table requires one
    -- The write function's own-column parameters follow its 12 fixed ones. The generated code names
    -- them by position ($13, ...), never by name: a column may be named like a PL/pgSQL variable
    -- (found), which a name, even qualified with the function's, would resolve to instead.
    own_first integer := 12;
BEGIN
    PERFORM immu.require_owner(history);
    SELECT * INTO STRICT entry FROM immu.versioned_tables v WHERE v.table_name = history;
    projection := entry.projection;
    SELECT pg_catalog.pg_get_userbyid(c.relowner) INTO owner FROM pg_catalog.pg_class c WHERE c.oid = history;

    SELECT string_agg(quote_ident(c.name), ', ' ORDER BY c.attnum),
           string_agg(format('NEW.%I::%s', c.name, c.projection_type), ', ' ORDER BY c.attnum),
           string_agg(quote_ident(c.name), ', ' ORDER BY c.attnum) FILTER (WHERE c.name <> 'entity_id'),
           array_agg(c.name ORDER BY c.attnum) FILTER (WHERE c.name <> ALL (reserved)),
           array_agg(c.type ORDER BY c.attnum) FILTER (WHERE c.name <> ALL (reserved)),
           array_agg(c.projection_type ORDER BY c.attnum) FILTER (WHERE c.name <> ALL (reserved))
      INTO cols, new_values, set_list, own_cols, own_types, own_ptypes
      FROM immu.columns_of(history) c;
    own_cols := coalesce(own_cols, '{}');
    own_types := coalesce(own_types, '{}');
    own_ptypes := coalesce(own_ptypes, '{}');
    own_count := cardinality(own_cols);

    SELECT string_agg(CASE c.name
                          WHEN 'valid_from' THEN 'GREATEST(immu_stamp, c.valid_from)'
                          WHEN 'deleted_at' THEN 'CASE WHEN NEW.deleted_at IS NULL THEN NULL ELSE GREATEST(immu_stamp, c.valid_from) END'
                          ELSE format('NEW.%I::%s', c.name, c.projection_type) END,
                      ', ' ORDER BY c.attnum) FILTER (WHERE c.name <> 'entity_id')
      INTO set_values FROM immu.columns_of(history) c;
    IF own_count = 0 THEN
        same_data := 'true';
    ELSE
        SELECT format('(ROW(%s)::record OPERATOR(pg_catalog.*=) ROW(%s)::record)',
                      string_agg(format('c.%I', x.c), ', ' ORDER BY x.o),
                      string_agg(format('NEW.%I::%s', x.c, x.t), ', ' ORDER BY x.o))
          INTO same_data FROM unnest(own_cols, own_ptypes) WITH ORDINALITY AS x (c, t, o);
    END IF;
    IF own_count = 0 THEN
        revert_same := '(immu_r.immu_shape IS NOT DISTINCT FROM NEW.immu_shape)';
    ELSE
        SELECT format('(ROW(%s, immu_r.immu_shape)::record OPERATOR(pg_catalog.*=) ROW(%s, NEW.immu_shape)::record)',
                      string_agg(format('immu_r.%I::%s', x.c, x.t), ', ' ORDER BY x.o),
                      string_agg(format('NEW.%I::%s', x.c, x.t), ', ' ORDER BY x.o))
          INTO revert_same FROM unnest(own_cols, own_ptypes) WITH ORDINALITY AS x (c, t, o);
    END IF;
    -- (Each statement is a PL/pgSQL "simple expression", evaluated without the executor, and a
    -- field of NEW is assigned only when it changes: this block is on every write's path.)
    provenance := $p$-- Who wrote it: the session's database user and application_name, always (the
    -- database user is evidence: the trigger overwrites whatever the writer gave); the actor,
    -- reason and context the write gave, else this transaction's settings immu.actor, immu.reason
    -- and immu.context.
    NEW.immu_db_user := session_user;
    NEW.immu_application := NULLIF(pg_catalog.current_setting('application_name'), '');
    IF NEW.immu_actor IS NULL THEN
        immu_setting := pg_catalog.current_setting('immu.actor', true);
        IF immu_setting <> '' THEN
            NEW.immu_actor := immu_setting;
        END IF;
    END IF;
    IF NEW.immu_reason IS NULL THEN
        immu_setting := pg_catalog.current_setting('immu.reason', true);
        IF immu_setting <> '' THEN
            NEW.immu_reason := immu_setting;
        END IF;
    END IF;
    IF NEW.immu_context IS NULL THEN
        immu_setting := pg_catalog.current_setting('immu.context', true);
        IF immu_setting <> '' THEN
            NEW.immu_context := immu_setting::jsonb;
        END IF;
    END IF;
    IF NEW.immu_revert_of IS NOT NULL THEN
        IF NEW.immu_revert_of < 1 OR NEW.immu_revert_of >= NEW.version THEN
            RAISE EXCEPTION 'version % of entity % reverts to version %, which is not an earlier version', NEW.version, NEW.entity_id, NEW.immu_revert_of
                USING ERRCODE = 'IMMU2', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME, COLUMN = 'immu_revert_of';
        END IF;
        -- A revert carries the data of the version it reverts to.
        IF NOT EXISTS (
            SELECT FROM ONLY $p$ || history::text || $p$ AS immu_r
            WHERE immu_r.entity_id = NEW.entity_id AND immu_r.version = NEW.immu_revert_of
              AND $p$ || revert_same || $p$) THEN
            RAISE EXCEPTION 'version % of entity % says it reverts to version %, and its data differs from that version''s', NEW.version, NEW.entity_id, NEW.immu_revert_of
                USING ERRCODE = 'IMMU2', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME, COLUMN = 'immu_revert_of';
        END IF;
    END IF;$p$;
    IF immu.option(history, 'require_actor') THEN
        provenance := provenance || format($p$
    -- The table requires an actor (immu.configure_versioning): not blank.
    IF NOT immu.is_actor(NEW.immu_actor) THEN
        RAISE EXCEPTION 'version %% of entity %% has no actor, and %s requires one', NEW.version, NEW.entity_id
            USING ERRCODE = 'IMMU5', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME, COLUMN = 'immu_actor',
                  HINT = 'Give the write an actor (immu_core::Audit), or SET LOCAL immu.actor = ''...'' in its transaction.';
    END IF;$p$, replace(replace(history::text, '%', '%%'), '''', ''''''));
    END IF;
    skip_identical := NOT immu.option(history, 'record_identical');
    require_actor := '';
    IF immu.option(history, 'require_actor') THEN
        -- Also before a write that would append nothing: a write without an actor fails, whatever it is.
        require_actor := format($p$
    IF NOT immu.is_actor(coalesce(immu_actor, NULLIF(pg_catalog.current_setting('immu.actor', true), ''))) THEN
        RAISE EXCEPTION 'a write to entity %% has no actor, and %s requires one', immu_entity_id
            USING ERRCODE = 'IMMU5', SCHEMA = %L, TABLE = %L, COLUMN = 'immu_actor',
                  HINT = 'Give the write an actor (immu_core::Audit), or SET LOCAL immu.actor = ''...'' in its transaction.';
    END IF;$p$, replace(replace(history::text, '%', '%%'), '''', ''''''),
            (SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = history),
            (SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = history));
    END IF;
    health := format('PERFORM immu.assert_machinery(%L::regclass, %L::regclass, %L::jsonb, %L::jsonb);',
                     history::text, projection::text, immu.live_shape(history), immu.live_shape(projection));

    -- The insert trigger: SECURITY DEFINER (the application needs no write privilege on the
    -- projection), run for every inserted version, immu's or raw SQL's.
    update_sql := format($t$PERFORM pg_catalog.set_config('immu.writing', %5$L, true);
            UPDATE %1$s AS c SET (%2$s) = (%3$s)
            WHERE c.entity_id = NEW.entity_id AND c.version = NEW.version - 1
              AND CASE WHEN c.deleted_at IS NULL THEN NEW.deleted_at IS NULL OR %4$s
                       ELSE NEW.deleted_at IS NULL AND %4$s END
              AND (NOT immu_importing OR c.valid_from <= immu_stamp)
            RETURNING c.valid_from, c.deleted_at INTO immu_valid_from, immu_deleted_at;
            immu_done := FOUND;
            PERFORM pg_catalog.set_config('immu.writing', '', true);$t$,
        projection, set_list, set_values, same_data, history::text);
    EXECUTE format($t$
CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $immu$
-- Generated by immu (release %8$s) for %2$s; regenerated by immu.sync_versioning and immu.upgrade.
-- Checks each version inserted into %2$s and makes it the latest version in %3$s, in the inserting
-- statement. The database assigns valid_from (its clock, never behind the previous version) and a
-- tombstone's deleted_at; it refuses a version that is not the next one, a tombstone as version 1,
-- a tombstone or an undelete whose data differs from the version it follows, and an update of a
-- deleted entity. Moving the projection row from version n - 1 to n takes that row's lock, so a
-- version is never stored twice, even by a writer that bypassed the entity's advisory lock.
DECLARE
    immu_stamp timestamptz;
    immu_latest record;
    immu_done boolean;
    immu_valid_from timestamptz;
    immu_deleted_at timestamptz;
    immu_importing boolean;
    immu_setting text;
BEGIN
    -- It runs as the table's owner: only ever as the insert trigger of its own history.
    IF TG_RELID <> %2$L::regclass::oid OR TG_OP <> 'INSERT' OR TG_WHEN <> 'BEFORE' OR TG_LEVEL <> 'ROW' THEN
        RAISE EXCEPTION 'immu: %% is the insert trigger of %%, not of %%', %1$L, %2$L, TG_RELID::regclass
            USING ERRCODE = 'IMMU4';
    END IF;
    %4$s
    IF NEW.entity_id IS NULL THEN
        RAISE EXCEPTION 'null value in column "entity_id" of relation "%%" violates not-null constraint', TG_TABLE_NAME
            USING ERRCODE = 'not_null_violation', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME, COLUMN = 'entity_id';
    END IF;
    IF NEW.version IS NULL OR NEW.version < 1 THEN
        RAISE EXCEPTION 'version %% of entity %% fails the version check: versions are numbered 1, 2, 3, ...', coalesce(NEW.version::text, 'NULL'), NEW.entity_id
            USING ERRCODE = 'IMMU2', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME, COLUMN = 'version';
    END IF;
    %11$s
    immu_stamp := pg_catalog.clock_timestamp();
    -- An import (immu.begin_import, in this transaction) keeps each version's own valid_from: not
    -- in the future, not before the entity's previous version. Anyone else's is the clock.
    immu_importing := NEW.valid_from IS NOT NULL
        AND pg_catalog.current_setting('immu.importing', true) = %10$L
        AND immu.importing(%2$L::regclass);
    IF immu_importing THEN
        IF NOT NEW.valid_from <= immu_stamp THEN
            RAISE EXCEPTION 'imported version %% of entity %% is valid from %%, which is in the future', NEW.version, NEW.entity_id, NEW.valid_from
                USING ERRCODE = 'IMMU2', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME, COLUMN = 'valid_from';
        END IF;
        immu_stamp := NEW.valid_from;
    END IF;
    IF NEW.version = 1 THEN
        IF NEW.deleted_at IS NOT NULL THEN
            RAISE EXCEPTION 'version 1 of entity %% is a tombstone: an entity is created live', NEW.entity_id
                USING ERRCODE = 'IMMU2', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME, COLUMN = 'deleted_at';
        END IF;
        NEW.valid_from := immu_stamp;
        PERFORM pg_catalog.set_config('immu.writing', %10$L, true);
        INSERT INTO %3$s AS c (%5$s) VALUES (%6$s) ON CONFLICT (entity_id) DO NOTHING;
        immu_done := FOUND;
        PERFORM pg_catalog.set_config('immu.writing', '', true);
        IF immu_done THEN
            RETURN NEW;
        END IF;
    ELSIF pg_catalog.current_setting('transaction_isolation') = 'read committed' THEN
        %7$s
        IF immu_done THEN
            NEW.valid_from := immu_valid_from;
            NEW.deleted_at := immu_deleted_at;
            RETURN NEW;
        END IF;
    ELSE
        -- REPEATABLE READ or SERIALIZABLE: the row to move may have been changed after this
        -- transaction's snapshot. Say so (a subtransaction only at these isolation levels).
        BEGIN
            %7$s
        EXCEPTION WHEN serialization_failure THEN
            RAISE EXCEPTION 'version %% of entity %% was computed from a stale snapshot: a newer version was committed after this transaction (%%) took its snapshot', NEW.version, NEW.entity_id, pg_catalog.upper(pg_catalog.current_setting('transaction_isolation'))
                USING ERRCODE = 'serialization_failure', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME,
                      HINT = 'Roll the transaction back and retry it.';
        END;
        IF immu_done THEN
            NEW.valid_from := immu_valid_from;
            NEW.deleted_at := immu_deleted_at;
            RETURN NEW;
        END IF;
    END IF;

    -- Refused: say why, from the entity's latest version.
    SELECT c.version, c.valid_from, c.deleted_at, %9$s AS same_data INTO immu_latest FROM %3$s AS c WHERE c.entity_id = NEW.entity_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'version %% of entity %% would skip or repeat a version: the entity does not exist, its first version is 1', NEW.version, NEW.entity_id
            USING ERRCODE = 'IMMU2', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME, COLUMN = 'version';
    ELSIF immu_importing AND NEW.version = immu_latest.version + 1 AND immu_latest.valid_from > immu_stamp THEN
        RAISE EXCEPTION 'imported version %% of entity %% is valid from %%, before its version %% (valid from %%): import each entity''s versions in order', NEW.version, NEW.entity_id, immu_stamp, immu_latest.version, immu_latest.valid_from
            USING ERRCODE = 'IMMU2', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME, COLUMN = 'valid_from';
    ELSIF NEW.version <> immu_latest.version + 1 THEN
        RAISE EXCEPTION USING
            MESSAGE = pg_catalog.format('version %%s of entity %%s would skip or repeat a version: its latest version is %%s%%s', NEW.version, NEW.entity_id, immu_latest.version,
                CASE WHEN pg_catalog.current_setting('transaction_isolation') = 'read committed' THEN ''
                     ELSE ' in this transaction''s snapshot, which may be stale' END),
            ERRCODE = 'IMMU2', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME, COLUMN = 'version';
    ELSIF immu_latest.deleted_at IS NOT NULL AND NEW.deleted_at IS NOT NULL THEN
        RAISE EXCEPTION 'entity %% is already deleted (version %%): a tombstone cannot follow a tombstone', NEW.entity_id, immu_latest.version
            USING ERRCODE = 'IMMU2', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME, COLUMN = 'deleted_at';
    ELSIF immu_latest.deleted_at IS NOT NULL THEN
        RAISE EXCEPTION 'entity %% is deleted (version %%): the version after a tombstone undeletes it and must carry the tombstone''s data; undelete it, then update it', NEW.entity_id, immu_latest.version
            USING ERRCODE = 'IMMU2', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME;
    ELSE
        RAISE EXCEPTION 'a tombstone of entity %% must carry the data of the version it deletes (version %%)', NEW.entity_id, immu_latest.version
            USING ERRCODE = 'IMMU2', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME, COLUMN = 'deleted_at';
    END IF;
END
$immu$;
$t$, check_fn, history, projection, health, cols, new_values, update_sql, immu.release(), same_data, history::text, provenance);

    -- The lock-and-read function: the entity's write lock, then its latest version, read in a
    -- statement of its own (under READ COMMITTED it sees every earlier writer's commit).
    old := latest_fn || '(uuid, bigint)';
    EXECUTE format('DROP FUNCTION IF EXISTS %s', old);
    EXECUTE format($t$
CREATE FUNCTION %1$s(immu_entity uuid, immu_lock bigint) RETURNS SETOF %2$s
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $immu$
-- Generated by immu (release %3$s); regenerated by immu.sync_versioning and immu.upgrade.
-- Takes the write lock of entity immu_entity (the advisory lock whose key immu_core::lock_key
-- computes) and returns its latest version, read after the lock.
BEGIN
    %4$s
    PERFORM pg_catalog.pg_advisory_xact_lock(immu_lock);
    RETURN QUERY SELECT c.* FROM %2$s AS c WHERE c.entity_id = immu_entity;
END
$immu$;
$t$, latest_fn, projection, immu.release(), health);

    -- The write function: insert, update, delete, undelete or revert in one call, with the caller's
    -- rights (the application needs INSERT on the history). Each own column is a parameter of the
    -- same name, NULL by default; immu_columns names those the caller sets (NULL: all). An update
    -- keeps the latest value of a column the caller does not set; an insert leaves it to the
    -- column's default. immu_actor, immu_reason and immu_context are the write's provenance.
    SELECT coalesce(string_agg(format(', %I %s DEFAULT NULL', x.c, x.t), '' ORDER BY x.o), '')
      INTO params FROM unnest(own_cols, own_types) WITH ORDINALITY AS x (c, t, o);
    SELECT string_agg(CASE c.name
                          WHEN 'id' THEN 'immu_id'
                          WHEN 'entity_id' THEN 'immu_entity_id'
                          WHEN 'version' THEN '1'
                          WHEN 'valid_from' THEN 'NULL'
                          WHEN 'deleted_at' THEN 'NULL'
                          WHEN 'immu_shape' THEN 'immu_shape'
                          WHEN 'immu_db_user' THEN 'NULL'
                          WHEN 'immu_application' THEN 'NULL'
                          WHEN 'immu_revert_of' THEN 'NULL'
                          WHEN 'immu_actor' THEN format('%I.%I', write_bare, c.name)
                          WHEN 'immu_reason' THEN format('%I.%I', write_bare, c.name)
                          WHEN 'immu_context' THEN format('%I.%I', write_bare, c.name)
                          ELSE format('$%s', own_first + array_position(own_cols, c.name::text)) END,
                      ', ' ORDER BY c.attnum),
           string_agg(CASE c.name
                          WHEN 'id' THEN 'immu_id'
                          WHEN 'entity_id' THEN 'immu_latest.entity_id'
                          WHEN 'version' THEN 'immu_latest.version + 1'
                          WHEN 'valid_from' THEN 'NULL'
                          WHEN 'deleted_at' THEN 'NULL'
                          WHEN 'immu_shape' THEN 'immu_shape'
                          WHEN 'immu_actor' THEN format('%I.%I', write_bare, c.name)
                          WHEN 'immu_reason' THEN format('%I.%I', write_bare, c.name)
                          WHEN 'immu_context' THEN format('%I.%I', write_bare, c.name)
                          WHEN 'immu_db_user' THEN 'NULL'
                          WHEN 'immu_application' THEN 'NULL'
                          WHEN 'immu_revert_of' THEN 'NULL'
                          ELSE format('CASE WHEN immu_keep[%s] THEN immu_latest.%I ELSE $%s END',
                                      array_position(own_cols, c.name::text), c.name,
                                      own_first + array_position(own_cols, c.name::text)) END,
                      ', ' ORDER BY c.attnum),
           string_agg(CASE c.name
                          WHEN 'id' THEN 'immu_id'
                          WHEN 'version' THEN 'immu_latest.version + 1'
                          WHEN 'valid_from' THEN 'NULL'
                          WHEN 'deleted_at' THEN 'CASE WHEN immu_kind = ''delete'' THEN pg_catalog.clock_timestamp() END'
                          WHEN 'immu_actor' THEN format('%I.%I', write_bare, c.name)
                          WHEN 'immu_reason' THEN format('%I.%I', write_bare, c.name)
                          WHEN 'immu_context' THEN format('%I.%I', write_bare, c.name)
                          WHEN 'immu_db_user' THEN 'NULL'
                          WHEN 'immu_application' THEN 'NULL'
                          WHEN 'immu_revert_of' THEN 'NULL'
                          ELSE format('immu_latest.%I', c.name) END,
                      ', ' ORDER BY c.attnum),
           string_agg(CASE c.name
                          WHEN 'id' THEN 'immu_id'
                          WHEN 'entity_id' THEN 'immu_latest.entity_id'
                          WHEN 'version' THEN 'immu_latest.version + 1'
                          WHEN 'valid_from' THEN 'NULL'
                          WHEN 'deleted_at' THEN 'NULL'
                          WHEN 'immu_actor' THEN format('%I.%I', write_bare, c.name)
                          WHEN 'immu_reason' THEN format('%I.%I', write_bare, c.name)
                          WHEN 'immu_context' THEN format('%I.%I', write_bare, c.name)
                          WHEN 'immu_db_user' THEN 'NULL'
                          WHEN 'immu_application' THEN 'NULL'
                          WHEN 'immu_revert_of' THEN 'immu_target.version'
                          ELSE format('immu_target.%I', c.name) END,
                      ', ' ORDER BY c.attnum)
      INTO inserted_values, updated_values, copied_values, reverted_values
      FROM immu.columns_of(history) c;
    SELECT coalesce(string_agg(format('NOT (%L = ANY (immu_columns))', x.c), ', ' ORDER BY x.o), '')
      INTO keep FROM unnest(own_cols) WITH ORDINALITY AS x (c, o);
    -- Whether the data a write would append equals the latest version's: its own columns (as the
    -- projection holds them) and its shape, by binary image.
    SELECT format('(ROW(%s)::record OPERATOR(pg_catalog.*=) ROW(%s)::record)',
                  string_agg(format('(CASE WHEN immu_keep[%s] THEN immu_latest.%I ELSE $%s::%s END)', x.o, x.c, own_first + x.o, x.t), ', ' ORDER BY x.o) || ', immu_shape',
                  string_agg(format('immu_latest.%I', x.c), ', ' ORDER BY x.o) || ', immu_latest.immu_shape'),
           format('(ROW(%s)::record OPERATOR(pg_catalog.*=) ROW(%s)::record)',
                  string_agg(format('immu_target.%I::%s', x.c, x.t), ', ' ORDER BY x.o) || ', immu_target.immu_shape',
                  string_agg(format('immu_latest.%I', x.c), ', ' ORDER BY x.o) || ', immu_latest.immu_shape')
      INTO same_new, same_revert FROM unnest(own_cols, own_ptypes) WITH ORDINALITY AS x (c, t, o);
    IF own_count = 0 THEN
        same_new := '(immu_shape IS NOT DISTINCT FROM immu_latest.immu_shape)';
        same_revert := '(immu_target.immu_shape IS NOT DISTINCT FROM immu_latest.immu_shape)';
    END IF;
    -- write_fn with its parameter names changed: the old version must go first.
    FOR old IN SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p
               WHERE p.proname = write_bare
                 AND p.pronamespace = (SELECT c.relnamespace FROM pg_catalog.pg_class c WHERE c.oid = history)
    LOOP
        EXECUTE format('DROP FUNCTION %s', old);
    END LOOP;
    EXECUTE format($t$
CREATE FUNCTION %1$s(
    immu_kind text,
    immu_id uuid,
    immu_entity_id uuid,
    immu_expected bigint DEFAULT NULL,
    immu_lock bigint DEFAULT NULL,
    immu_columns text[] DEFAULT NULL,
    immu_shape integer DEFAULT NULL,
    immu_actor text DEFAULT NULL,
    immu_reason text DEFAULT NULL,
    immu_context jsonb DEFAULT NULL,
    immu_revert_to bigint DEFAULT NULL,
    immu_revert_at timestamptz DEFAULT NULL%2$s
) RETURNS SETOF %3$s
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $immu$
-- Generated by immu (release %11$s); regenerated by immu.sync_versioning and immu.upgrade.
-- One write of immu's write path. immu_kind: 'insert', 'update', 'delete', 'undelete' or 'revert'
-- (to version immu_revert_to, or to the version current at immu_revert_at: its data, as a live
-- version). Returns the stored version; or the entity's latest version, unchanged, when the
-- update or revert would append the data it already has (%17$s); or, when the entity's
-- latest version refuses the write (deleted, not deleted, not the expected version, no version to
-- revert to), a row whose id is NULL and whose reserved columns are that latest version's; or no
-- row when the entity does not exist. A write whose id is already the entity's latest version
-- returns that version and writes nothing: a retry of a write whose outcome was unknown never
-- stores it twice.
DECLARE
    immu_latest %4$s;
    immu_written %3$s;
    immu_target %3$s;
    immu_keep boolean[];
    immu_provided text[];
BEGIN
    %5$s
    IF immu_kind IS NULL OR immu_kind NOT IN ('insert', 'update', 'delete', 'undelete', 'revert') THEN
        RAISE EXCEPTION 'unknown write kind %%', coalesce(immu_kind, 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF immu_columns IS NOT NULL AND NOT (immu_columns <@ %9$L::text[]) THEN
        RAISE EXCEPTION 'immu_columns names columns %% does not have among %%', %12$L, immu_columns
            USING ERRCODE = 'undefined_column';
    END IF;
    %20$s
    PERFORM pg_catalog.pg_advisory_xact_lock(immu_lock) WHERE immu_lock IS NOT NULL;
    SELECT immu_c.* INTO immu_latest FROM %4$s AS immu_c WHERE immu_c.entity_id = immu_entity_id;
    IF FOUND AND immu_latest.id = immu_id THEN
        RETURN QUERY SELECT immu_h.* FROM ONLY %3$s AS immu_h
            WHERE immu_h.entity_id = immu_latest.entity_id AND immu_h.valid_from = immu_latest.valid_from AND immu_h.version = immu_latest.version;
        RETURN;
    END IF;
    IF immu_kind = 'insert' THEN
        IF immu_columns IS NULL OR %9$L::text[] <@ immu_columns THEN
            INSERT INTO %3$s (%7$s) VALUES (%8$s) RETURNING * INTO immu_written;
        ELSE
            -- Some own columns are not set: insert only the others, so that theirs get the
            -- column's default. (Names were checked against the table's above.)
            immu_provided := ARRAY(SELECT DISTINCT immu_x FROM unnest(immu_columns) AS immu_x);
            immu_written := ROW(%10$s)::%3$s;
            EXECUTE format('INSERT INTO %%s (id, entity_id, version, immu_shape, immu_actor, immu_reason, immu_context%%s) SELECT $1.id, $1.entity_id, 1, $1.immu_shape, $1.immu_actor, $1.immu_reason, $1.immu_context%%s RETURNING *',
                           %12$L, (SELECT string_agg(format(', %%I', immu_x), '') FROM unnest(immu_provided) AS immu_x),
                           (SELECT string_agg(format(', $1.%%I', immu_x), '') FROM unnest(immu_provided) AS immu_x))
                USING immu_written INTO immu_written;
        END IF;
        RETURN NEXT immu_written;
        RETURN;
    END IF;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF immu_kind = 'revert' AND immu_latest.deleted_at IS NULL THEN
        SELECT immu_h.* INTO immu_target FROM ONLY %3$s AS immu_h
         WHERE immu_h.entity_id = immu_latest.entity_id
           AND CASE WHEN immu_revert_to IS NOT NULL THEN immu_h.version = immu_revert_to
                    ELSE immu_h.valid_from <= immu_revert_at END
         ORDER BY immu_h.valid_from DESC, immu_h.version DESC LIMIT 1;
    END IF;
    IF (immu_kind IN ('update', 'delete', 'revert') AND immu_latest.deleted_at IS NOT NULL)
       OR (immu_kind = 'undelete' AND immu_latest.deleted_at IS NULL)
       OR (immu_kind = 'update' AND immu_expected IS NOT NULL AND immu_latest.version <> immu_expected)
       OR (immu_kind = 'revert' AND immu_target.version IS NULL) THEN
        immu_written.entity_id := immu_latest.entity_id;
        immu_written.version := immu_latest.version;
        immu_written.valid_from := immu_latest.valid_from;
        immu_written.deleted_at := immu_latest.deleted_at;
        RETURN NEXT immu_written;
        RETURN;
    END IF;
    IF immu_kind = 'update' THEN
        IF immu_columns IS NOT NULL AND NOT (%9$L::text[] <@ immu_columns) THEN
            immu_keep := ARRAY[%13$s]::boolean[];
        END IF;
        IF %16$s THEN
            RETURN QUERY SELECT immu_h.* FROM ONLY %3$s AS immu_h
                WHERE immu_h.entity_id = immu_latest.entity_id AND immu_h.valid_from = immu_latest.valid_from AND immu_h.version = immu_latest.version;
            RETURN;
        END IF;
        INSERT INTO %3$s (%7$s) VALUES (%14$s) RETURNING * INTO immu_written;
    ELSIF immu_kind = 'revert' THEN
        IF %19$s THEN
            RETURN QUERY SELECT immu_h.* FROM ONLY %3$s AS immu_h
                WHERE immu_h.entity_id = immu_latest.entity_id AND immu_h.valid_from = immu_latest.valid_from AND immu_h.version = immu_latest.version;
            RETURN;
        END IF;
        INSERT INTO %3$s (%7$s) VALUES (%18$s) RETURNING * INTO immu_written;
    ELSE
        INSERT INTO %3$s (%7$s) VALUES (%15$s) RETURNING * INTO immu_written;
    END IF;
    RETURN NEXT immu_written;
END
$immu$;
$t$, write_fn, params, history, projection, health, own_count, cols, inserted_values,
        own_cols, inserted_values, immu.release(), history::text, keep, updated_values, copied_values,
        CASE WHEN skip_identical THEN same_new ELSE 'false' END,
        CASE WHEN skip_identical THEN 'the default' ELSE 'never: this table records identical versions' END,
        reverted_values,
        CASE WHEN skip_identical THEN same_revert ELSE 'false' END,
        require_actor);

    -- The committing procedure: the write function's call and COMMIT, in one round trip, outside
    -- any transaction block (inside one, PostgreSQL refuses the COMMIT: SQLSTATE 2D000). No SET
    -- clause is allowed here, so its body names nothing unqualified. A partial update passes its
    -- statement (immu_patch): the entity's latest version, locked, and the write function called
    -- with expressions over it, all built by immu_core and run with the caller's rights, like any
    -- statement the caller sends.
    -- The procedure's parameters: 7 fixed ones, then every column, immu's first; named in its body
    -- by position (see own_first).
    SELECT string_agg(format('INOUT %I %s DEFAULT NULL', p.name, p.type), ', ' ORDER BY p.pos),
           string_agg(format('$%s', p.pos), ', ' ORDER BY p.attnum),
           coalesce(string_agg(format(', %I => $%s', p.name, p.pos), '' ORDER BY p.pos) FILTER (WHERE NOT p.reserved), '')
      INTO proc_params, into_list, arg_list
      FROM (SELECT c.name, c.type, c.attnum, c.name = ANY (reserved) AS reserved,
                   7 + row_number() OVER (ORDER BY CASE WHEN c.name = ANY (reserved) THEN 0 ELSE 1 END, c.attnum) AS pos
            FROM immu.columns_of(history) c) AS p;
    FOR old IN SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p
               WHERE p.proname = commit_bare
                 AND p.pronamespace = (SELECT c.relnamespace FROM pg_catalog.pg_class c WHERE c.oid = history)
    LOOP
        EXECUTE format('DROP PROCEDURE %s', old);
    END LOOP;
    EXECUTE format($t$
CREATE PROCEDURE %1$s(
    immu_kind text,
    immu_expected bigint DEFAULT NULL,
    immu_lock bigint DEFAULT NULL,
    immu_columns text[] DEFAULT NULL,
    immu_revert_to bigint DEFAULT NULL,
    immu_revert_at timestamptz DEFAULT NULL,
    immu_patch text DEFAULT NULL,
    %2$s
)
LANGUAGE plpgsql AS $immu$
-- Generated by immu (release %6$s); regenerated by immu.sync_versioning and immu.upgrade.
-- immu's write path outside a transaction: %3$s (or a partial update's statement), then
-- COMMIT, in one round trip. The INOUT parameters return the stored version (see the function).
BEGIN
    IF immu_patch IS NULL THEN
        SELECT w.* FROM %3$s(immu_kind => immu_kind, immu_id => id, immu_entity_id => entity_id,
                             immu_expected => immu_expected, immu_lock => immu_lock,
                             immu_columns => immu_columns, immu_shape => immu_shape,
                             immu_actor => immu_actor, immu_reason => immu_reason, immu_context => immu_context,
                             immu_revert_to => immu_revert_to, immu_revert_at => immu_revert_at%4$s) AS w
            INTO %5$s;
    ELSE
        -- One row (the version, or the refusal) or none (no such entity); never more.
        BEGIN
            EXECUTE immu_patch USING entity_id, immu_lock, id, immu_columns, immu_actor, immu_reason, immu_context, immu_shape
                INTO STRICT %5$s;
        EXCEPTION WHEN no_data_found THEN
            -- No such entity: every column NULL, as the function's empty result leaves them.
            SELECT %7$s INTO %5$s;
        END;
    END IF;
    COMMIT;
END
$immu$;
$t$, commit_proc, proc_params, write_fn, arg_list, into_list, immu.release(),
        (SELECT string_agg('NULL', ', ') FROM immu.columns_of(history) c));

    -- Triggers, ENABLE ALWAYS: they fire under session_replication_role = replica too. The
    -- projection's guards are described at immu.guard_projection.
    EXECUTE format('CREATE OR REPLACE TRIGGER immu_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION immu.refuse_change()', history);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER immu_append_only', history);
    EXECUTE format('CREATE OR REPLACE TRIGGER immu_check_insert BEFORE INSERT ON %s FOR EACH ROW EXECUTE FUNCTION %s()', history, check_fn);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER immu_check_insert', history);
    EXECUTE format('CREATE OR REPLACE TRIGGER immu_projection BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s
        FOR EACH STATEMENT EXECUTE FUNCTION immu.guard_projection(%L, %L)', projection, history::text, owner);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER immu_projection', projection);
    -- The history's refusals again per row, as a constraint trigger: a role that was granted
    -- TRIGGER on a table can replace its triggers (CREATE OR REPLACE TRIGGER), but not a
    -- constraint trigger. (It fires on UPDATE and DELETE only: nothing on the write path.)
    EXECUTE format('DROP TRIGGER IF EXISTS immu_append_only_rows ON %s', history);
    EXECUTE format('CREATE CONSTRAINT TRIGGER immu_append_only_rows AFTER UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION immu.refuse_change()', history);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER immu_append_only_rows', history);
    -- The projection's row security (release 2's first form was a constraint trigger per row).
    EXECUTE format('DROP TRIGGER IF EXISTS immu_projection_rows ON %s', projection);
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY, NO FORCE ROW LEVEL SECURITY', projection);
    FOR policy IN SELECT p.polname FROM pg_catalog.pg_policy p WHERE p.polrelid = projection LOOP
        EXECUTE format('DROP POLICY %I ON %s', policy, projection);
    END LOOP;
    EXECUTE format('CREATE POLICY immu_read ON %s FOR SELECT USING (true)', projection);
    EXECUTE format('CREATE POLICY immu_insert ON %1$s FOR INSERT WITH CHECK (immu.refuse_projection_write(%1$L, %2$L, %3$L))', projection, history, 'INSERT');
    EXECUTE format('CREATE POLICY immu_update ON %1$s FOR UPDATE USING (true) WITH CHECK (immu.refuse_projection_write(%1$L, %2$L, %3$L))', projection, history, 'UPDATE');
    EXECUTE format('CREATE POLICY immu_delete ON %1$s FOR DELETE USING (immu.refuse_projection_write(%1$L, %2$L, %3$L))', projection, history, 'DELETE');
    -- The insert trigger runs as the owner: nobody may attach it to a table of theirs.
    EXECUTE format('REVOKE ALL ON FUNCTION %s() FROM PUBLIC', check_fn);
    -- The anchor: TRUNCATE of either table fails for everyone but the owner (see the catalog).
    anchor_table := entry.anchor;
    IF anchor_table IS NULL THEN
        IF NOT pg_catalog.has_schema_privilege('immu', 'CREATE') THEN
            RAISE EXCEPTION 'the owner of % needs the CREATE privilege on schema immu, for the table''s anchor', history
                USING ERRCODE = 'insufficient_privilege',
                      HINT = format('Run immu''s migrations as the owner of the versioned tables, or: GRANT CREATE ON SCHEMA immu TO %I;', owner);
        END IF;
        IF pg_catalog.to_regclass(format('immu.%I', 'anchor_' || history::oid)) IS NULL THEN
            EXECUTE format('CREATE TABLE %s (entity_id uuid, valid_from timestamptz, version bigint)', format('immu.%I', 'anchor_' || history::oid));
        END IF;
        anchor_table := format('immu.%I', 'anchor_' || history::oid)::regclass;
        EXECUTE format('COMMENT ON TABLE %s IS %L', anchor_table,
                       format('immu: keeps %s and %s from being truncated; always empty', history, projection));
    END IF;
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS immu_history, DROP CONSTRAINT IF EXISTS immu_projection', anchor_table);
    EXECUTE format('ALTER TABLE %s ADD CONSTRAINT immu_history FOREIGN KEY (entity_id, valid_from, version) REFERENCES %s (entity_id, valid_from, version),
                                   ADD CONSTRAINT immu_projection FOREIGN KEY (entity_id) REFERENCES %s (entity_id)',
                   anchor_table, history, projection);
    EXECUTE format('REVOKE ALL ON %s FROM PUBLIC', anchor_table);
    EXECUTE format('ALTER TABLE %s OWNER TO %I', anchor_table, owner);

    -- Owner, privileges. The routines belong to the table's owner (the insert trigger runs as it);
    -- nobody else may write the projection, or create triggers on either table.
    new_routines := ARRAY[check_fn || '()', latest_fn || '(uuid, bigint)'];
    new_routines := new_routines || ARRAY(
        SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = (SELECT c.relnamespace FROM pg_catalog.pg_class c WHERE c.oid = history)
          AND p.proname IN (write_bare, commit_bare));
    FOREACH old IN ARRAY new_routines LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO %I', old, owner);
    END LOOP;
    EXECUTE format('ALTER TABLE %s OWNER TO %I', projection, owner);
    FOR old IN
        SELECT DISTINCT coalesce(quote_ident(pg_catalog.pg_get_userbyid(NULLIF(a.grantee, 0))), 'PUBLIC')
        FROM pg_catalog.pg_class c, LATERAL pg_catalog.aclexplode(c.relacl) a
        WHERE c.oid IN (history, projection) AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('REVOKE TRIGGER ON %s, %s FROM %s', history, projection, old);
        EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON %s FROM %s', projection, old);
        EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON %s FROM %s', history, old);
    END LOOP;

    -- Routines of an earlier name (the table was renamed) are dropped.
    FOREACH old IN ARRAY coalesce(entry.routines, '{}') LOOP
        IF old <> ALL (new_routines) AND pg_catalog.to_regprocedure(old) IS NOT NULL THEN
            EXECUTE format('DROP ROUTINE %s', old);
        END IF;
    END LOOP;

    UPDATE immu.versioned_tables v
       SET release = immu.release(),
           columns = (SELECT jsonb_agg(jsonb_build_object('attnum', c.attnum, 'name', c.name, 'type', c.type) ORDER BY c.attnum)
                      FROM immu.columns_of(history) c),
           routines = new_routines,
           anchor = anchor_table,
           history_shape = immu.live_shape(history),
           projection_shape = immu.live_shape(v.projection),
           synced_at = pg_catalog.clock_timestamp()
     WHERE v.table_name = history;
END
$fn$;

-- Every versioned table: the new columns, and its machinery regenerated.
SELECT immu.upgrade();

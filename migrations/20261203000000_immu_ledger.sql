-- immu release 4: a hash chain per entity (tamper evidence), each version's transaction (the
-- change feed's cursor), and the generator split into pieces that later releases replace one by
-- one.
--
-- Every version now also records, stamped by the insert trigger (a writer cannot choose them):
--
--   immu_xid     bigint   the top-level transaction that inserted it (pg_current_xact_id(), an
--                         xid8 value: epoch-extended, never wraps). A snapshot says exactly which
--                         transactions had committed, so "the versions a snapshot saw" is exact:
--                         what a digest covers, and where a change feed's cursor stands.
--   immu_layout  integer  the hash layout it was hashed with (immu.hash_layouts: which columns, in
--                         which order), so that changing a table's columns keeps older versions
--                         verifiable.
--   immu_hash    bytea    sha256(previous version's hash || this version's canonical encoding):
--                         each entity's versions form a chain. The encoding of a version is, for
--                         each column of its layout in order, 'N' for NULL, else
--                         'V' || length(text) || ':' || text, text being the column's output
--                         under pinned settings (TimeZone UTC, DateStyle ISO, IntervalStyle
--                         postgres, extra_float_digits 1, bytea_output hex), as UTF-8.
--
-- Versions written before this release have none of the three (NULL): their entities' chains
-- start at their first version written by release 4. The history gets a BRIN index on immu_xid
-- (the change feed's range scans), and a table configured with notify => true has its insert
-- trigger notify channel 'immu_feed_<oid of the history>' (LISTEN wakes the change feed at commit).
--
-- Like the releases before, this migration replaces the generator and ends with
-- SELECT immu.upgrade(). The generator is now a function per piece of machinery (immu.generate
-- calls them in order), so that a later release replaces the piece it changes and nothing else.

CREATE OR REPLACE FUNCTION immu.release() RETURNS integer
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
RETURN 4;

-- The reserved columns, in order: release 2's, release 3's provenance, release 4's ledger columns
-- (added at the end of a table that already exists).
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
        ('immu_revert_of', 'bigint'),
        ('immu_xid', 'bigint'),
        ('immu_layout', 'integer'),
        ('immu_hash', 'bytea')
    ) AS r (name, type);
END;

-- The per-table options, and what each means (release 3's, and release 4's notify):
--   require_actor     a version without an actor is refused (SQLSTATE IMMU5), raw SQL's included
--   record_identical  immu's writes append a version even when its data equals the latest's
--   notify            the insert trigger notifies channel 'immu_feed_<oid>' (the change feed's
--                     wake-up, sent at commit); off by default: PostgreSQL serializes the commits
--                     of every notifying transaction of a database, through their WAL flush. The
--                     feed without it reads at its poll interval. A transaction that will be
--                     prepared (two-phase commit) turns it off with SET LOCAL immu.notify = 'off'.
-- Sets those given (NULL: unchanged), regenerates the machinery, returns the table's options.
DROP FUNCTION immu.configure_versioning(regclass, boolean, boolean);
CREATE FUNCTION immu.configure_versioning(history regclass, require_actor boolean DEFAULT NULL,
                                          record_identical boolean DEFAULT NULL,
                                          notify boolean DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    result jsonb;
BEGIN
    PERFORM immu.require_owner(history);
    PERFORM immu.projection_of(history);
    UPDATE immu.versioned_tables v
       SET options = pg_catalog.jsonb_strip_nulls(v.options || jsonb_build_object(
               'require_actor', coalesce(require_actor, (v.options->>'require_actor')::boolean),
               'record_identical', coalesce(record_identical, (v.options->>'record_identical')::boolean),
               'notify', coalesce(notify, (v.options->>'notify')::boolean)))
     WHERE v.table_name = history
    RETURNING v.options INTO result;
    PERFORM immu.sync_versioning(history);
    RETURN result;
END
$fn$;

-- The hash layouts: which columns a version's hash covers, in order, per table. A table gets a new
-- layout when its columns change (immu.generate); each version records the layout it was hashed
-- with. A rename renames the column in every layout of the table; a dropped column stays in the
-- old layouts as NULL (what older versions held in it is gone, and their verification says so).
CREATE TABLE immu.hash_layouts (
    table_name  regclass    NOT NULL,
    layout      integer     NOT NULL,
    -- The encoding (1: the one described at the top of this migration).
    encoding    integer     NOT NULL DEFAULT 1,
    -- The columns, in encoding order (every column of the history but immu_hash, by attribute
    -- number, when the layout was made); NULL for a column dropped since.
    columns     text[]      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    PRIMARY KEY (table_name, layout)
);
COMMENT ON TABLE immu.hash_layouts IS 'immu: the columns each version''s hash covers (immu_layout), per versioned table';
-- Everyone reads the layouts (verification does, as any role that may read the history); each
-- role writes only those of the tables it owns.
ALTER TABLE immu.hash_layouts ENABLE ROW LEVEL SECURITY;
CREATE POLICY read_all ON immu.hash_layouts FOR SELECT USING (true);
CREATE POLICY owners_write ON immu.hash_layouts FOR ALL
    USING (immu.owns(table_name)) WITH CHECK (immu.owns(table_name));
GRANT SELECT, INSERT, UPDATE ON immu.hash_layouts TO PUBLIC;

-- The entity's own columns of `history` (not reserved), in order, with their types and position.
CREATE FUNCTION immu.own_columns(history regclass)
RETURNS TABLE (name text, type text, projection_type text, ord bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT c.name, c.type, c.projection_type, row_number() OVER (ORDER BY c.attnum)
    FROM immu.columns_of(history) c
    WHERE c.name NOT IN (SELECT r.name FROM immu.reserved_columns() r)
    ORDER BY c.attnum;
END;

-- The health check every generated routine starts with (see immu.assert_machinery): the tables'
-- shapes now, as constants.
CREATE FUNCTION immu.health_check(history regclass) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN format('PERFORM immu.assert_machinery(%L::regclass, %L::regclass, %L::jsonb, %L::jsonb);',
              history::text, immu.projection_of(history)::text,
              immu.live_shape(history), immu.live_shape(immu.projection_of(history)));

-- The settings a version's encoding depends on, pinned on the insert trigger (SET clauses) and by
-- immu_core's verification (SET LOCAL): the text output of timestamps, intervals, floats and bytea.
CREATE FUNCTION immu.hash_settings() RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
RETURN $s$SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET extra_float_digits = 1 SET bytea_output = 'hex'$s$;

-- The expression of a version's hash, for the insert trigger: sha256 of `prev` (the previous
-- version's hash; NULL for none) followed by the encoding (see the top of this migration) of the
-- layout's columns, read from NEW but for valid_from and deleted_at, given as expressions (the
-- trigger knows them only when it moves the projection row).
CREATE FUNCTION immu.hash_expression(columns text[], prev text, valid_from text, deleted_at text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
RETURN format('pg_catalog.sha256(coalesce(%s, ''\x''::bytea) OPERATOR(pg_catalog.||) pg_catalog.convert_to(%s, ''UTF8''))',
              prev,
              (SELECT string_agg(format('CASE WHEN (%1$s) IS NULL THEN ''N'' ELSE ''V'' OPERATOR(pg_catalog.||) pg_catalog.length((%1$s)::text) OPERATOR(pg_catalog.||) '':'' OPERATOR(pg_catalog.||) (%1$s)::text END',
                                        CASE x.c WHEN 'valid_from' THEN valid_from
                                                 WHEN 'deleted_at' THEN deleted_at
                                                 ELSE format('NEW.%I', x.c) END),
                                 ' OPERATOR(pg_catalog.||) ' ORDER BY x.o)
               FROM unnest(columns) WITH ORDINALITY AS x (c, o)));

-- The ledger of `history`: its hash layout (renames since the last sync applied to every layout, a
-- new layout when the columns changed) and the feed's index. Returns the layout new versions are
-- hashed with. Called by immu.generate before the insert trigger is generated, while the catalog
-- still holds the columns of the last sync.
CREATE FUNCTION immu.generate_ledger(history regclass) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    entry immu.versioned_tables;
    now_columns text[];
    latest immu.hash_layouts;
BEGIN
    SELECT * INTO STRICT entry FROM immu.versioned_tables v WHERE v.table_name = history;
    -- Columns renamed (same attribute number, another name) or dropped since the last sync, in
    -- every layout of the table, in one pass (a swap of two names stays a swap).
    IF entry.columns <> '[]'::jsonb THEN
        UPDATE immu.hash_layouts l
           SET columns = ARRAY(
                   SELECT CASE WHEN r.attnum IS NULL THEN x.c  -- not a column of the last sync
                               ELSE (SELECT c.name FROM immu.columns_of(history) c WHERE c.attnum = r.attnum) END
                   FROM unnest(l.columns) WITH ORDINALITY AS x (c, o)
                   LEFT JOIN (SELECT (j->>'attnum')::int AS attnum, j->>'name' AS name
                              FROM jsonb_array_elements(entry.columns) AS j) AS r ON r.name = x.c
                   ORDER BY x.o)
         WHERE l.table_name = history;
    END IF;
    now_columns := ARRAY(SELECT c.name FROM immu.columns_of(history) c WHERE c.name <> 'immu_hash' ORDER BY c.attnum);
    SELECT * INTO latest FROM immu.hash_layouts l WHERE l.table_name = history ORDER BY l.layout DESC LIMIT 1;
    IF latest.layout IS NULL OR latest.columns IS DISTINCT FROM now_columns THEN
        INSERT INTO immu.hash_layouts (table_name, layout, columns)
        VALUES (history, coalesce(latest.layout, 0) + 1, now_columns)
        RETURNING * INTO latest;
    END IF;
    -- The change feed reads versions by transaction: a BRIN index (a few pages; transaction ids
    -- grow with the table).
    IF NOT EXISTS (
        SELECT FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = history AND i.indnkeyatts = 1 AND a.attname = 'immu_xid' AND i.indpred IS NULL) THEN
        EXECUTE format('CREATE INDEX %I ON %s USING brin (immu_xid) WITH (pages_per_range = 16, autosummarize = on)',
                       (SELECT left(c.relname, 54) || '_immu_xid' FROM pg_catalog.pg_class c WHERE c.oid = history), history);
    END IF;
    RETURN latest.layout;
END
$fn$;

-- The insert trigger of `history`, hashing with layout `layout`: SECURITY DEFINER (the application
-- needs no write privilege on the projection), run for every inserted version, immu's or raw SQL's.
CREATE FUNCTION immu.generate_insert_trigger(history regclass, layout integer) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    projection regclass := immu.projection_of(history);
    check_fn text := immu.routine_name(history, 'check');
    layout_columns text[] := (SELECT l.columns FROM immu.hash_layouts l WHERE l.table_name = history AND l.layout = generate_insert_trigger.layout);
    own_cols text[] := ARRAY(SELECT o.name FROM immu.own_columns(history) o ORDER BY o.ord);
    own_ptypes text[] := ARRAY(SELECT o.projection_type FROM immu.own_columns(history) o ORDER BY o.ord);
    cols text;            -- every history column, in order
    new_values text;      -- NEW.<col>::<projection type>, in order
    set_list text;        -- projection columns but the key
    set_values text;
    same_data text;       -- NEW's own data equals the projection row's (binary image)
    revert_same text;     -- a revert's data equals the version it reverts to
    provenance text;      -- the stamping of who wrote a version
    update_sql text;
    moved_valid_from text := 'GREATEST(immu_stamp, c.valid_from)';
    moved_deleted_at text := 'CASE WHEN NEW.deleted_at IS NULL THEN NULL ELSE GREATEST(immu_stamp, c.valid_from) END';
BEGIN
    SELECT string_agg(quote_ident(c.name), ', ' ORDER BY c.attnum),
           string_agg(format('NEW.%I::%s', c.name, c.projection_type), ', ' ORDER BY c.attnum),
           string_agg(quote_ident(c.name), ', ' ORDER BY c.attnum) FILTER (WHERE c.name <> 'entity_id'),
           string_agg(CASE c.name
                          WHEN 'valid_from' THEN moved_valid_from
                          WHEN 'deleted_at' THEN moved_deleted_at
                          WHEN 'immu_hash' THEN immu.hash_expression(layout_columns, 'c.immu_hash', moved_valid_from, moved_deleted_at)
                          ELSE format('NEW.%I::%s', c.name, c.projection_type) END,
                      ', ' ORDER BY c.attnum) FILTER (WHERE c.name <> 'entity_id')
      INTO cols, new_values, set_list, set_values
      FROM immu.columns_of(history) c;
    IF cardinality(own_cols) = 0 THEN
        same_data := 'true';
        revert_same := '(immu_r.immu_shape IS NOT DISTINCT FROM NEW.immu_shape)';
    ELSE
        SELECT format('(ROW(%s)::record OPERATOR(pg_catalog.*=) ROW(%s)::record)',
                      string_agg(format('c.%I', x.c), ', ' ORDER BY x.o),
                      string_agg(format('NEW.%I::%s', x.c, x.t), ', ' ORDER BY x.o)),
               format('(ROW(%s, immu_r.immu_shape)::record OPERATOR(pg_catalog.*=) ROW(%s, NEW.immu_shape)::record)',
                      string_agg(format('immu_r.%I::%s', x.c, x.t), ', ' ORDER BY x.o),
                      string_agg(format('NEW.%I::%s', x.c, x.t), ', ' ORDER BY x.o))
          INTO same_data, revert_same FROM unnest(own_cols, own_ptypes) WITH ORDINALITY AS x (c, t, o);
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
    -- The ledger: the version's transaction and layout (its hash is computed with the projection
    -- row's move, when valid_from is known), and the change feed's wake-up, sent at commit. A
    -- transaction that will be prepared (PREPARE TRANSACTION refuses one that notified) turns the
    -- wake-up off with SET LOCAL immu.notify = 'off': the feed then finds its versions when it next
    -- reads, woken by another write or by its own timer.
    provenance := provenance || format($p$
    NEW.immu_xid := pg_catalog.pg_current_xact_id()::text::bigint;
    NEW.immu_layout := %s;$p$, layout);
    -- Only for a table configured with notify => true: PostgreSQL serializes the commits of all
    -- notifying transactions of a database (a lock held through the commit's WAL flush).
    IF immu.option(history, 'notify') THEN
        provenance := provenance || $p$
    IF pg_catalog.current_setting('immu.notify', true) IS DISTINCT FROM 'off' THEN
        PERFORM pg_catalog.pg_notify('immu_feed_' OPERATOR(pg_catalog.||) TG_RELID, '');
    END IF;$p$;
    END IF;

    update_sql := format($t$PERFORM pg_catalog.set_config('immu.writing', %5$L, true);
            UPDATE %1$s AS c SET (%2$s) = (%3$s)
            WHERE c.entity_id = NEW.entity_id AND c.version = NEW.version - 1
              AND CASE WHEN c.deleted_at IS NULL THEN NEW.deleted_at IS NULL OR %4$s
                       ELSE NEW.deleted_at IS NULL AND %4$s END
              AND (NOT immu_importing OR c.valid_from <= immu_stamp)
            RETURNING c.valid_from, c.deleted_at, c.immu_hash INTO immu_valid_from, immu_deleted_at, immu_hash;
            immu_done := FOUND;
            PERFORM pg_catalog.set_config('immu.writing', '', true);$t$,
        projection, set_list, set_values, same_data, history::text);
    EXECUTE format($t$
CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp %13$s AS $immu$
-- Generated by immu (release %8$s) for %2$s; regenerated by immu.sync_versioning and immu.upgrade.
-- Checks each version inserted into %2$s and makes it the latest version in %3$s, in the inserting
-- statement. The database assigns valid_from (its clock, never behind the previous version) and a
-- tombstone's deleted_at; it refuses a version that is not the next one, a tombstone as version 1,
-- a tombstone or an undelete whose data differs from the version it follows, and an update of a
-- deleted entity. Moving the projection row from version n - 1 to n takes that row's lock, so a
-- version is never stored twice, even by a writer that bypassed the entity's advisory lock. It
-- stamps the version's provenance, transaction and hash layout, and chains its hash to the
-- previous version's (held by the projection row), with the settings of the SET clauses above.
DECLARE
    immu_stamp timestamptz;
    immu_latest record;
    immu_done boolean;
    immu_valid_from timestamptz;
    immu_deleted_at timestamptz;
    immu_hash bytea;
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
        NEW.immu_hash := %12$s;
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
            NEW.immu_hash := immu_hash;
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
            NEW.immu_hash := immu_hash;
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
$t$, check_fn, history, projection, immu.health_check(history), cols, new_values, update_sql, immu.release(),
        same_data, history::text, provenance,
        immu.hash_expression(layout_columns, 'NULL', 'NEW.valid_from', 'NEW.deleted_at'),
        immu.hash_settings());
END
$fn$;

-- The lock-and-read function of `history`: the entity's write lock, then its latest version, read
-- in a statement of its own (under READ COMMITTED it sees every earlier writer's commit).
CREATE FUNCTION immu.generate_latest(history regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    latest_fn text := immu.routine_name(history, 'latest');
BEGIN
    EXECUTE format('DROP FUNCTION IF EXISTS %s', latest_fn || '(uuid, bigint)');
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
$t$, latest_fn, immu.projection_of(history), immu.release(), immu.health_check(history));
END
$fn$;

-- The write function's value of column `col` in the row a write of `kind` appends: 'insert' (a
-- new entity), 'update' (the caller's values, or the latest version's for a column it keeps),
-- 'copy' (delete and undelete: the latest version's data) or 'revert' (the target version's data).
-- The trigger stamps valid_from, the database user, the application, the transaction, the layout
-- and the hash, whatever the row holds; provenance is the write's. Own columns are named by
-- position: the write function's parameter $<own_first + their position>.
CREATE FUNCTION immu.write_value(history regclass, col text, kind text, write_bare text, own_first integer) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN CASE
    WHEN col IN ('valid_from', 'immu_db_user', 'immu_application', 'immu_xid', 'immu_layout', 'immu_hash') THEN 'NULL'
    WHEN col = 'id' THEN 'immu_id'
    WHEN col IN ('immu_actor', 'immu_reason', 'immu_context') THEN format('%I.%I', write_bare, col)
    WHEN kind = 'insert' THEN CASE col
        WHEN 'entity_id' THEN 'immu_entity_id'
        WHEN 'version' THEN '1'
        WHEN 'deleted_at' THEN 'NULL'
        WHEN 'immu_shape' THEN 'immu_shape'
        WHEN 'immu_revert_of' THEN 'NULL'
        ELSE format('$%s', own_first + (SELECT o.ord FROM immu.own_columns(history) o WHERE o.name = col)) END
    ELSE CASE col
        WHEN 'entity_id' THEN 'immu_latest.entity_id'
        WHEN 'version' THEN 'immu_latest.version + 1'
        WHEN 'deleted_at' THEN CASE WHEN kind = 'copy' THEN 'CASE WHEN immu_kind = ''delete'' THEN pg_catalog.clock_timestamp() END' ELSE 'NULL' END
        WHEN 'immu_shape' THEN CASE kind WHEN 'update' THEN 'immu_shape' WHEN 'copy' THEN 'immu_latest.immu_shape' ELSE 'immu_target.immu_shape' END
        WHEN 'immu_revert_of' THEN CASE WHEN kind = 'revert' THEN 'immu_target.version' ELSE 'NULL' END
        ELSE CASE kind
            WHEN 'update' THEN format('CASE WHEN immu_keep[%1$s] THEN immu_latest.%2$I ELSE $%3$s END',
                                      (SELECT o.ord FROM immu.own_columns(history) o WHERE o.name = col), col,
                                      own_first + (SELECT o.ord FROM immu.own_columns(history) o WHERE o.name = col))
            WHEN 'copy' THEN format('immu_latest.%I', col)
            ELSE format('immu_target.%I', col) END END
END;

-- The write function of `history`: insert, update, delete, undelete or revert in one call, with the
-- caller's rights (the application needs INSERT on the history). Each own column is a parameter of
-- the same name, NULL by default; immu_columns names those the caller sets (NULL: all). An update
-- keeps the latest value of a column the caller does not set; an insert leaves it to the column's
-- default. immu_actor, immu_reason and immu_context are the write's provenance.
CREATE FUNCTION immu.generate_write(history regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    projection regclass := immu.projection_of(history);
    write_fn text := immu.routine_name(history, 'write');
    write_bare text := (SELECT c.relname || '_immu_write' FROM pg_catalog.pg_class c WHERE c.oid = history);
    own_cols text[] := ARRAY(SELECT o.name FROM immu.own_columns(history) o ORDER BY o.ord);
    cols text := (SELECT string_agg(quote_ident(c.name), ', ' ORDER BY c.attnum) FROM immu.columns_of(history) c);
    skip_identical boolean := NOT immu.option(history, 'record_identical');
    -- The write function's own-column parameters follow its 12 fixed ones. The generated code names
    -- them by position ($13, ...), never by name: a column may be named like a PL/pgSQL variable
    -- (found), which a name, even qualified with the function's, would resolve to instead.
    own_first integer := 12;
    params text;
    keep text;
    same_new text;        -- the new data equals the latest version's
    same_revert text;     -- version n's data equals the latest version's
    require_actor text := '';
    old text;
BEGIN
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
    SELECT coalesce(string_agg(format(', %I %s DEFAULT NULL', o.name, o.type), '' ORDER BY o.ord), ''),
           coalesce(string_agg(format('NOT (%L = ANY (immu_columns))', o.name), ', ' ORDER BY o.ord), ''),
           format('(ROW(%s)::record OPERATOR(pg_catalog.*=) ROW(%s)::record)',
                  string_agg(format('(CASE WHEN immu_keep[%s] THEN immu_latest.%I ELSE $%s::%s END)', o.ord, o.name, own_first + o.ord, o.projection_type), ', ' ORDER BY o.ord) || ', immu_shape',
                  string_agg(format('immu_latest.%I', o.name), ', ' ORDER BY o.ord) || ', immu_latest.immu_shape'),
           format('(ROW(%s)::record OPERATOR(pg_catalog.*=) ROW(%s)::record)',
                  string_agg(format('immu_target.%I::%s', o.name, o.projection_type), ', ' ORDER BY o.ord) || ', immu_target.immu_shape',
                  string_agg(format('immu_latest.%I', o.name), ', ' ORDER BY o.ord) || ', immu_latest.immu_shape')
      INTO params, keep, same_new, same_revert
      FROM immu.own_columns(history) o;
    IF cardinality(own_cols) = 0 THEN
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
$t$, write_fn, params, history, projection, immu.health_check(history), cardinality(own_cols), cols,
        (SELECT string_agg(immu.write_value(history, c.name, 'insert', write_bare, own_first), ', ' ORDER BY c.attnum) FROM immu.columns_of(history) c),
        own_cols,
        (SELECT string_agg(immu.write_value(history, c.name, 'insert', write_bare, own_first), ', ' ORDER BY c.attnum) FROM immu.columns_of(history) c),
        immu.release(), history::text, keep,
        (SELECT string_agg(immu.write_value(history, c.name, 'update', write_bare, own_first), ', ' ORDER BY c.attnum) FROM immu.columns_of(history) c),
        (SELECT string_agg(immu.write_value(history, c.name, 'copy', write_bare, own_first), ', ' ORDER BY c.attnum) FROM immu.columns_of(history) c),
        CASE WHEN skip_identical THEN same_new ELSE 'false' END,
        CASE WHEN skip_identical THEN 'the default' ELSE 'never: this table records identical versions' END,
        (SELECT string_agg(immu.write_value(history, c.name, 'revert', write_bare, own_first), ', ' ORDER BY c.attnum) FROM immu.columns_of(history) c),
        CASE WHEN skip_identical THEN same_revert ELSE 'false' END,
        require_actor);
END
$fn$;

-- The committing procedure of `history`: the write function's call and COMMIT, in one round trip,
-- outside any transaction block (inside one, PostgreSQL refuses the COMMIT: SQLSTATE 2D000). No SET
-- clause is allowed here, so its body names nothing unqualified. A partial update passes its
-- statement (immu_patch): the entity's latest version, locked, and the write function called with
-- expressions over it, all built by immu_core and run with the caller's rights, like any statement
-- the caller sends. Its parameters: 7 fixed ones, then every column, immu's first; named in its
-- body by position.
CREATE FUNCTION immu.generate_commit(history regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    write_fn text := immu.routine_name(history, 'write');
    commit_proc text := immu.routine_name(history, 'commit');
    commit_bare text := (SELECT c.relname || '_immu_commit' FROM pg_catalog.pg_class c WHERE c.oid = history);
    reserved text[] := ARRAY(SELECT r.name FROM immu.reserved_columns() r);
    proc_params text;
    into_list text;
    arg_list text;
    old text;
BEGIN
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
END
$fn$;

-- The guards of `history` and its projection (triggers ENABLE ALWAYS, the projection's row security,
-- the anchor against TRUNCATE), the routines' owner and the privileges nobody else may hold; then
-- the catalog row: the columns, routines and shapes the machinery was generated for.
CREATE FUNCTION immu.generate_guards(history regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    entry immu.versioned_tables;
    projection regclass;
    owner name;
    check_fn text := immu.routine_name(history, 'check');
    latest_fn text := immu.routine_name(history, 'latest');
    write_bare text := (SELECT c.relname || '_immu_write' FROM pg_catalog.pg_class c WHERE c.oid = history);
    commit_bare text := (SELECT c.relname || '_immu_commit' FROM pg_catalog.pg_class c WHERE c.oid = history);
    policy name;
    new_routines text[];
    anchor_table regclass;
    old text;
BEGIN
    SELECT * INTO STRICT entry FROM immu.versioned_tables v WHERE v.table_name = history;
    projection := entry.projection;
    SELECT pg_catalog.pg_get_userbyid(c.relowner) INTO owner FROM pg_catalog.pg_class c WHERE c.oid = history;

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

-- (Re)creates the machinery of `history` from its current columns, piece by piece: the ledger (hash
-- layout, feed index), the insert trigger that checks every version, hashes it and keeps the
-- projection in step, the lock-and-read function, the write function, the committing write
-- procedure, then the guards and the catalog row. The history, the projection and the catalog row
-- must exist, with the same columns (see sync_versioning).
CREATE OR REPLACE FUNCTION immu.generate(history regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    layout integer;
BEGIN
    PERFORM immu.require_owner(history);
    PERFORM FROM immu.versioned_tables v WHERE v.table_name = history;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% is not a versioned table', history USING ERRCODE = 'IMMU3',
            HINT = format('SELECT immu.add_versioning(%L);', history::text);
    END IF;
    layout := immu.generate_ledger(history);
    PERFORM immu.generate_insert_trigger(history, layout);
    PERFORM immu.generate_latest(history);
    PERFORM immu.generate_write(history);
    PERFORM immu.generate_commit(history);
    PERFORM immu.generate_guards(history);
END
$fn$;

-- Every versioned table: the new columns, its ledger, and its machinery regenerated.
SELECT immu.upgrade();

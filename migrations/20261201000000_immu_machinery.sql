-- immu release 2: every versioned table's machinery is generated inside PostgreSQL, from the
-- catalog, by the functions of this schema.
--
-- A user's migration holds its table and one call:
--
--     CREATE TABLE accounts (owner text NOT NULL, balance bigint NOT NULL);
--     SELECT immu.add_versioning('accounts');
--
-- and, after changing the table's columns, one call again: SELECT immu.sync_versioning('accounts').
-- A later release of immu replaces these functions in a migration of its own and ends it with
-- `SELECT immu.upgrade()`, which regenerates the machinery of every versioned table: no user
-- migration is ever edited or added for an upgrade. This migration upgrades the tables created by
-- release 1's pasted DDL the same way.
--
-- Everything here, and everything generated, pins `search_path` to `pg_catalog, pg_temp` and
-- qualifies every other name, so that nothing a session creates (temp tables, objects in schemas
-- earlier on its path, its own functions or operators) can change what it touches. The one
-- exception PostgreSQL imposes is the committing write procedure (a procedure with a SET clause
-- cannot COMMIT): its body is a single call of a qualified function, with no operator.

-- Generated routines call immu.assert_machinery (below) with the caller's rights.
GRANT USAGE ON SCHEMA immu TO PUBLIC;

-- Release 1's refusal functions, pinned. The projection's refusal no longer lets nested statements
-- through: release 1's projections use it until immu.upgrade gives them release 2's guards
-- (immu.guard_projection and row security, below).
ALTER FUNCTION immu.refuse_change() SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION immu.refuse_projection_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RAISE EXCEPTION '% on "%" refused: the table is maintained by immu', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'IMMU1',
              SCHEMA = TG_TABLE_SCHEMA,
              TABLE = TG_TABLE_NAME,
              DETAIL = format('%I.%I holds the latest version of each entity of %s, kept in step by the trigger on that versioned table; only that trigger may write it.', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]),
              HINT = 'Append a new version instead: insert, update, delete and undelete through immu add rows to the versioned table.';
END
$fn$;

COMMENT ON FUNCTION immu.refuse_projection_change() IS 'immu: refuses direct changes of a projection table (<table>_current)';

-- The projection's guards. Its rows are written only by the insert trigger of its history, which
-- runs as the tables' owner. Two guards, neither on the path of that trigger's own statements:
--
-- * row security (ENABLE, not FORCE): every role but the owner (and its members, superusers and
--   BYPASSRLS roles) may read every row and write none. Its policies call
--   immu.refuse_projection_write, which raises IMMU1 for the first row a statement would write.
--   Only the owner can change policies or disable row security; a role granted TRIGGER cannot.
-- * a statement trigger (immu.guard_projection) for the owner and superusers, whom row security
--   does not stop: it refuses every statement but the history trigger's own (at trigger depth 2,
--   as the owner, with the transaction-local setting immu.writing naming the history; anyone may
--   set it, but only the owner's trigger passes the rest), and every TRUNCATE. A trigger without a
--   WHEN clause: PostgreSQL compiles a WHEN clause for each statement, which costs more than the
--   function.
CREATE FUNCTION immu.refuse_projection_write(projection regclass, history regclass, operation text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    schema_name text;
    table_name text;
BEGIN
    SELECT n.nspname, c.relname INTO schema_name, table_name
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = projection;
    RAISE EXCEPTION '% on "%" refused: the table is maintained by immu', operation, table_name
        USING ERRCODE = 'IMMU1',
              SCHEMA = schema_name,
              TABLE = table_name,
              DETAIL = format('%s holds the latest version of each entity of %s, kept in step by the trigger on that versioned table; only that trigger may write it.', projection, history),
              HINT = 'Append a new version instead: insert, update, delete and undelete through immu add rows to the versioned table.';
END
$fn$;

COMMENT ON FUNCTION immu.refuse_projection_write(regclass, regclass, text) IS 'immu: refuses, in the row security policies of a projection, every write of a role other than its owner';
-- Evaluated with the rights of whoever writes: everyone may call it (it only ever raises).
GRANT EXECUTE ON FUNCTION immu.refuse_projection_write(regclass, regclass, text) TO PUBLIC;

CREATE FUNCTION immu.guard_projection() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    -- TG_ARGV: the history, its owner.
    IF TG_OP <> 'TRUNCATE' AND pg_catalog.pg_trigger_depth() > 1 AND CURRENT_USER = TG_ARGV[1]::name
       AND pg_catalog.current_setting('immu.writing', true) = TG_ARGV[0] THEN
        RETURN NULL;
    END IF;
    PERFORM immu.refuse_projection_write(TG_RELID::regclass, TG_ARGV[0]::regclass, TG_OP);
    RETURN NULL;
END
$fn$;

COMMENT ON FUNCTION immu.guard_projection() IS 'immu: refuses statements on a projection table (<table>_current) but those of its history''s insert trigger';

-- The release of the machinery this migration generates. Rust's immu_core::schema::MACHINERY_RELEASE
-- names the release it expects; the drift check compares them.
CREATE FUNCTION immu.release() RETURNS integer
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
RETURN 2;

COMMENT ON FUNCTION immu.release() IS 'immu: the release of the machinery the current immu functions generate';

-- The catalog: one row per versioned table, written by immu's functions as the table's owner.
CREATE TABLE immu.versioned_tables (
    -- The history table (every version). regclass: dumped and restored by name, kept by pg_upgrade.
    table_name  regclass    PRIMARY KEY,
    -- The projection table (the latest version of each entity).
    projection  regclass    NOT NULL UNIQUE,
    -- The release of the machinery generated for it.
    release     integer     NOT NULL,
    -- The history's columns at the last sync, by attribute number: how a rename is told from a
    -- drop and an add. [{"attnum": 1, "name": "owner", "type": "text"}, ...]
    columns     jsonb       NOT NULL,
    -- The generated routines (regprocedure text), so that a sync after a rename drops the old ones.
    routines    text[]      NOT NULL,
    -- The shapes (immu.live_shape) of the history and the projection the machinery was generated
    -- for: what immu.assert_machinery compares with.
    history_shape    jsonb  NOT NULL DEFAULT '[]'::jsonb,
    projection_shape jsonb  NOT NULL DEFAULT '[]'::jsonb,
    -- The anchor: an empty table in schema immu whose foreign keys reference the history and the
    -- projection, so that neither can be truncated by anyone but the owner (a foreign key makes
    -- TRUNCATE fail, and TRUNCATE ... CASCADE needs a privilege on the anchor that nobody holds).
    anchor      regclass,
    -- Per-table options of later features (room for them; none yet).
    options     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    synced_at   timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);

COMMENT ON TABLE immu.versioned_tables IS 'immu: the catalog of versioned tables, from which their machinery is generated';

-- Whether the current role has the rights of `rel`'s owner.
CREATE FUNCTION immu.owns(rel regclass) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = rel), 'USAGE');

-- Whether `rel` is a permanent table (not a temporary one, not missing).
CREATE FUNCTION immu.is_permanent_table(rel regclass) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN coalesce((SELECT c.relkind = 'r' AND c.relpersistence = 'p' FROM pg_catalog.pg_class c WHERE c.oid = rel), false);

-- The transactions importing history into a table (immu.begin_import): one row per table and
-- transaction. The row of a transaction in progress is visible to that transaction alone; once it
-- ends the row matches no transaction again (transaction ids are never reused), and the next
-- begin_import of the table removes it. Only a table's owner may add a row, and only for its own
-- transaction: setting immu.importing alone, which anyone may, imports nothing.
CREATE TABLE immu.imports (
    table_name  regclass NOT NULL,
    transaction xid8     NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    PRIMARY KEY (table_name, transaction)
);
COMMENT ON TABLE immu.imports IS 'immu: transactions importing history (immu.begin_import)';
ALTER TABLE immu.imports ENABLE ROW LEVEL SECURITY;
CREATE POLICY owners ON immu.imports FOR ALL USING (immu.owns(table_name))
    WITH CHECK (immu.owns(table_name) AND transaction OPERATOR(pg_catalog.=) pg_catalog.pg_current_xact_id());
GRANT SELECT, INSERT, DELETE ON immu.imports TO PUBLIC;

-- Whether this transaction imports history into `history` (see immu.imports). PL/pgSQL, so that
-- the insert trigger calls it as a plain function, and only in an import.
CREATE FUNCTION immu.importing(history regclass) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN EXISTS (SELECT FROM immu.imports i
                   WHERE i.table_name = history AND i.transaction = pg_catalog.pg_current_xact_id());
END
$fn$;

-- Everyone reads the catalog (the drift check does, as the application); each role writes only the
-- rows of the tables it owns.
ALTER TABLE immu.versioned_tables ENABLE ROW LEVEL SECURITY;
CREATE POLICY read_all ON immu.versioned_tables FOR SELECT USING (true);
CREATE POLICY owners_write ON immu.versioned_tables FOR ALL
    USING (immu.owns(table_name))
    WITH CHECK (immu.owns(table_name) AND immu.owns(projection)
                AND immu.is_permanent_table(table_name) AND immu.is_permanent_table(projection));
GRANT SELECT, INSERT, UPDATE, DELETE ON immu.versioned_tables TO PUBLIC;

-- The reserved columns immu adds to a versioned table, in order, with their types.
CREATE FUNCTION immu.reserved_columns(OUT name text, OUT type text) RETURNS SETOF record
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM (VALUES
        ('id', 'uuid'),
        ('entity_id', 'uuid'),
        ('version', 'bigint'),
        ('valid_from', 'timestamp with time zone'),
        ('deleted_at', 'timestamp with time zone'),
        ('immu_shape', 'integer')
    ) AS r (name, type);
END;

-- The type of a projection column that mirrors a history column of type `typ` with typmod
-- `typmod`: domains are replaced by their base type (a domain's CHECK would otherwise run again,
-- as the table's owner, inside immu's trigger) and the typmod is dropped, so that the projection
-- holds exactly the value the history holds whatever typmod the history column has or gets
-- (numeric(12,2) -> numeric, varchar(10) -> character varying, timestamp(3) -> timestamp). bit
-- keeps its length: bit without one is bit(1).
CREATE FUNCTION immu.projection_type(typ oid, typmod integer) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    t pg_catalog.pg_type;
BEGIN
    SELECT * INTO STRICT t FROM pg_catalog.pg_type WHERE oid = typ;
    IF t.typtype = 'd' THEN
        RETURN immu.projection_type(t.typbasetype, t.typtypmod);
    END IF;
    IF t.typcategory = 'A' AND t.typelem <> 0 THEN
        RETURN immu.projection_type(t.typelem, typmod) || '[]';
    END IF;
    IF typ IN ('bit'::regtype, 'character'::regtype) THEN
        RETURN pg_catalog.format_type(typ, typmod);
    END IF;
    RETURN pg_catalog.format_type(typ, NULL);
END
$fn$;

-- The columns of `rel` (not dropped), in order: attribute number, name, type (format_type, with
-- its typmod), the projection type, whether NOT NULL, whether it has a default.
CREATE FUNCTION immu.columns_of(rel regclass)
RETURNS TABLE (attnum smallint, name text, type text, projection_type text, not_null boolean, has_default boolean)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT a.attnum, a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod),
           immu.projection_type(a.atttypid, a.atttypmod), a.attnotnull, a.atthasdef
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
    ORDER BY a.attnum;
END;

-- The shape of `rel` as the executor sees it now: each column's name and type (without typmod),
-- in order. Read through the row type (the type cache), never through pg_attribute: under
-- REPEATABLE READ a query of the catalog sees the transaction's snapshot, older than a concurrent
-- ALTER TABLE that the executor already applies.
CREATE FUNCTION immu.live_shape(rel regclass) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    names text[];
    types text[];
BEGIN
    EXECUTE format(
        'SELECT array_agg(k ORDER BY o) FROM pg_catalog.json_object_keys(pg_catalog.row_to_json(pg_catalog.json_populate_record(NULL::%s, ''{}''))) WITH ORDINALITY AS c (k, o)',
        rel) INTO names;
    EXECUTE format('SELECT ARRAY[%s]::text[]',
        (SELECT string_agg(format('pg_catalog.pg_typeof((NULL::%s).%I)::text', rel, n), ', ' ORDER BY o)
         FROM unnest(names) WITH ORDINALITY AS c (n, o))) INTO types;
    RETURN coalesce((SELECT jsonb_agg(jsonb_build_object('name', n, 'type', t) ORDER BY o)
                     FROM unnest(names, types) WITH ORDINALITY AS c (n, t, o)), '[]'::jsonb);
END
$fn$;

-- How `live` differs from `expected` (both immu.live_shape), one line per column.
CREATE FUNCTION immu.shape_differences(rel regclass, expected jsonb, live jsonb) RETURNS SETOF text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT CASE WHEN e.name IS NULL THEN format('column %I (%s) of %s was added', l.name, l.type, rel)
                WHEN l.name IS NULL THEN format('column %I (%s) of %s was dropped or renamed', e.name, e.type, rel)
                ELSE format('column %I of %s changed type from %s to %s', l.name, rel, e.type, l.type) END
    FROM (SELECT x->>'name' AS name, x->>'type' AS type FROM jsonb_array_elements(expected) AS x) AS e
    FULL JOIN (SELECT x->>'name' AS name, x->>'type' AS type FROM jsonb_array_elements(live) AS x) AS l
      ON l.name = e.name
    WHERE e.name IS NULL OR l.name IS NULL OR e.type <> l.type;
END;

-- Everything that keeps immu's machinery of `history` from running safely: its columns differ
-- from the shape it was generated for (IMMU3), one of immu's triggers is missing or disabled
-- (IMMU3), or a role other than the owner could run code inside it (IMMU4). Each with its fix.
CREATE FUNCTION immu.machinery_problems(history regclass, projection regclass, history_shape jsonb, projection_shape jsonb)
RETURNS TABLE (sqlstate text, problem text, fix text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    owner oid;
    sync text := format('SELECT immu.sync_versioning(%L);', history::text);
    r record;
BEGIN
    SELECT c.relowner INTO owner FROM pg_catalog.pg_class c WHERE c.oid = history;
    RETURN QUERY SELECT 'IMMU3', d, sync FROM immu.shape_differences(history, history_shape, immu.live_shape(history)) AS d;
    RETURN QUERY SELECT 'IMMU3', d, sync FROM immu.shape_differences(projection, projection_shape, immu.live_shape(projection)) AS d;
    -- The same columns in another order: a column dropped and added again.
    RETURN QUERY SELECT 'IMMU3', format('the columns of %s were re-created or reordered since the last sync', x.rel), sync
        FROM (VALUES (history, history_shape), (projection, projection_shape)) AS x (rel, shape)
        WHERE immu.live_shape(x.rel) IS DISTINCT FROM x.shape
          AND NOT EXISTS (SELECT FROM immu.shape_differences(x.rel, x.shape, immu.live_shape(x.rel)));
    -- immu's triggers: each present, enabled ALWAYS, and as immu made it (events, level, function,
    -- arguments, no WHEN clause; the history's row refusal a constraint trigger).
    RETURN QUERY
        SELECT 'IMMU3', format('trigger %I on %s is %s', x.name, x.rel,
                   CASE WHEN t.tgenabled IS NULL THEN 'missing' WHEN t.tgenabled <> 'A' THEN 'not enabled ALWAYS' ELSE 'not as immu made it' END),
               sync
        FROM (VALUES (history, 'immu_append_only', 'immu.refuse_change', 58, ''::bytea, false),
                     (history, 'immu_append_only_rows', 'immu.refuse_change', 25, ''::bytea, true),
                     (history, 'immu_check_insert', immu.routine_name(history, 'check'), 7, ''::bytea, false),
                     (projection, 'immu_projection', 'immu.guard_projection', 62,
                      pg_catalog.convert_to(history::text, 'UTF8') || '\x00'::bytea
                        || pg_catalog.convert_to(pg_catalog.pg_get_userbyid(owner), 'UTF8') || '\x00'::bytea, false))
             AS x (rel, name, fn, tgtype, args, is_constraint)
        LEFT JOIN pg_catalog.pg_trigger t ON t.tgrelid = x.rel AND t.tgname = x.name
        WHERE t.tgenabled IS DISTINCT FROM 'A'
           OR t.tgfoid::regproc::text <> x.fn
           OR t.tgtype <> x.tgtype
           OR t.tgargs <> x.args
           OR t.tgqual IS NOT NULL
           OR (t.tgconstraint <> 0) <> x.is_constraint;
    -- Roles other than the owner (and its members, and superusers) that may create triggers: the
    -- privilege is read through has_table_privilege, which sees a GRANT committed after this
    -- transaction's snapshot.
    RETURN QUERY
        SELECT 'IMMU4', format('%s may create triggers on %s (TRIGGER privilege)', a.who, x.rel),
               format('REVOKE TRIGGER ON %s FROM %s;', x.rel, a.who)
        FROM (VALUES (history), (projection)) AS x (rel)
        CROSS JOIN (SELECT oid, quote_ident(rolname) AS who FROM pg_catalog.pg_roles WHERE NOT rolsuper
                    UNION ALL SELECT 0::oid, 'PUBLIC') AS a
        WHERE CASE WHEN a.oid = 0 THEN pg_catalog.has_table_privilege('public', x.rel, 'TRIGGER')
                   ELSE NOT pg_catalog.pg_has_role(a.oid, owner, 'MEMBER')
                        AND pg_catalog.has_table_privilege(a.oid, x.rel, 'TRIGGER') END;
    -- Triggers that are not immu's: any on the projection (it would run inside immu's trigger, as
    -- the owner); on the history, a BEFORE ROW or INSTEAD OF one (it could change a checked row),
    -- or any whose function is not the owner's (it would run as whoever writes, the owner too).
    RETURN QUERY
        SELECT 'IMMU4', format('trigger %I on %s is not immu''s and could change the rows immu writes or run as their writer', t.tgname, t.tgrelid::regclass),
               format('DROP TRIGGER %I ON %s;', t.tgname, t.tgrelid::regclass)
        FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc f ON f.oid = t.tgfoid
        WHERE NOT t.tgisinternal
          AND ((t.tgrelid = projection AND t.tgname <> 'immu_projection')
               OR (t.tgrelid = history AND t.tgname NOT IN ('immu_append_only', 'immu_append_only_rows', 'immu_check_insert')
                   AND (t.tgtype & 64 = 64 OR t.tgtype & 3 = 3
                        OR NOT (f.proowner = owner
                                OR (pg_catalog.pg_has_role(f.proowner, owner, 'MEMBER')
                                    AND NOT (SELECT ro.rolsuper FROM pg_catalog.pg_roles ro WHERE ro.oid = f.proowner)))
                        OR f.pronamespace = pg_catalog.pg_my_temp_schema())));
    -- The projection's row security: enabled, with immu's four policies and no other (policies
    -- that permit are combined with OR: one more could let other roles write). Only the owner can
    -- change them; the sync restores them.
    RETURN QUERY
        SELECT 'IMMU3', format('row security of %s is disabled: roles granted writes on it could change it', projection), sync
        FROM pg_catalog.pg_class c WHERE c.oid = projection AND NOT c.relrowsecurity;
    RETURN QUERY
        SELECT 'IMMU3', format('row security of %s is forced: it would refuse the owner''s trigger too', projection), sync
        FROM pg_catalog.pg_class c WHERE c.oid = projection AND c.relforcerowsecurity;
    RETURN QUERY
        SELECT 'IMMU3', format('policy %I on %s is %s', coalesce(x.name, p.polname), projection,
                               CASE WHEN p.polname IS NULL THEN 'missing' WHEN x.name IS NULL THEN 'not immu''s' ELSE 'not as immu made it' END),
               sync
        FROM (SELECT p.polname, p.polcmd, p.polpermissive, p.polroles,
                     pg_catalog.pg_get_expr(p.polqual, p.polrelid) AS qual,
                     pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) AS with_check
              FROM pg_catalog.pg_policy p WHERE p.polrelid = projection) AS p
        FULL JOIN (VALUES ('immu_read'::name, 'r'::"char", 'true', NULL),
                          ('immu_insert', 'a', NULL, format('immu.refuse_projection_write(%L::regclass, %L::regclass, %L::text)', projection::text, history::text, 'INSERT')),
                          ('immu_update', 'w', 'true', format('immu.refuse_projection_write(%L::regclass, %L::regclass, %L::text)', projection::text, history::text, 'UPDATE')),
                          ('immu_delete', 'd', format('immu.refuse_projection_write(%L::regclass, %L::regclass, %L::text)', projection::text, history::text, 'DELETE'), NULL)) AS x (name, cmd, qual, with_check)
          ON x.name = p.polname
        WHERE p.polname IS NULL OR x.name IS NULL OR p.polcmd <> x.cmd OR NOT p.polpermissive OR p.polroles <> '{0}'
           OR p.qual IS DISTINCT FROM x.qual OR p.with_check IS DISTINCT FROM x.with_check;
    RETURN QUERY
        SELECT 'IMMU4', format('rule %I on %s could change what immu writes', rw.rulename, rw.ev_class::regclass),
               format('DROP RULE %I ON %s;', rw.rulename, rw.ev_class::regclass)
        FROM pg_catalog.pg_rewrite rw
        WHERE rw.ev_class IN (history, projection) AND rw.rulename <> '_RETURN';
    RETURN QUERY
        SELECT 'IMMU3', format('column %I of %s is generated: immu copies what is written, and a generated value is not yet known when it does', a.attname, history),
               format('ALTER TABLE %s ALTER COLUMN %I DROP EXPRESSION; %s', history, a.attname, sync)
        FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = history AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> '';
END
$fn$;

-- The health check of a versioned table's machinery, called by the generated routines as
--     PERFORM immu.assert_machinery('public.accounts'::regclass, 'public.accounts_current'::regclass, '<shape>'::jsonb, '<shape>'::jsonb);
--
-- Declared IMMUTABLE on purpose, with constant arguments: PostgreSQL evaluates such a call once,
-- when it plans the statement, and keeps the result in the cached plan. The regclass arguments make
-- the plan depend on both tables, so any DDL on either (ALTER TABLE, CREATE TRIGGER, GRANT, ...)
-- invalidates it and the next write checks again. The check costs nothing on the write path and
-- runs after every change it could miss. It refuses to write (raising, so the write fails):
--
-- * IMMU3: the columns of the history or the projection differ from the shape the machinery was
--   generated for (a column added, dropped, renamed or retyped without immu.sync_versioning), or one
--   of immu's triggers is missing or disabled. The next write would copy the wrong columns.
-- * IMMU4: a role other than the owner may create triggers on either table (TRIGGER privilege), or
--   a trigger that is not immu's could change the rows immu writes (any trigger on the projection, a
--   BEFORE ROW trigger on the history). A trigger on the projection would run as the table's owner
--   inside immu's trigger, and could rewrite it.
CREATE FUNCTION immu.assert_machinery(history regclass, projection regclass, history_shape jsonb, projection_shape jsonb)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    code text;
    problems text[];
    fixes text[];
BEGIN
    FOR code IN SELECT DISTINCT p.sqlstate FROM immu.machinery_problems(history, projection, history_shape, projection_shape) p ORDER BY 1 LOOP
        SELECT array_agg(p.problem), array_agg(DISTINCT p.fix) INTO problems, fixes
          FROM immu.machinery_problems(history, projection, history_shape, projection_shape) p WHERE p.sqlstate = code;
        RAISE EXCEPTION USING
            MESSAGE = CASE code
                WHEN 'IMMU3' THEN format('%s: immu''s machinery is out of step with the table', history)
                ELSE format('%s: immu refuses to write while another role could run code inside its machinery', history) END,
            ERRCODE = code,
            TABLE = (SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = history),
            SCHEMA = (SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = history),
            DETAIL = array_to_string(problems, E'\n'),
            HINT = CASE code
                WHEN 'IMMU3' THEN 'Regenerate the machinery as the table''s owner (after a change of its columns, in the same migration): ' || array_to_string(fixes, ' ')
                ELSE 'A trigger on an immu table runs inside immu''s trigger, as the table''s owner; only the owner may create them. As the owner, in one transaction (a transaction already running could still use a trigger that outlives the REVOKE): BEGIN; ' || array_to_string(fixes, ' ') || ' COMMIT;' END;
    END LOOP;
    RETURN true;
END
$fn$;

COMMENT ON FUNCTION immu.assert_machinery(regclass, regclass, jsonb, jsonb) IS
    'immu: health check of a versioned table''s machinery, evaluated when PostgreSQL plans the machinery''s statements (IMMUTABLE on purpose)';

-- The name of one of a versioned table's routines, in the table's schema: <table>_immu_<kind>.
CREATE FUNCTION immu.routine_name(history regclass, kind text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN (SELECT format('%I.%I', n.nspname, c.relname || '_immu_' || kind)
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = history);

-- The projection of versioned table `history`; raises when `history` is not one.
CREATE FUNCTION immu.projection_of(history regclass) RETURNS regclass
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    projection regclass;
BEGIN
    SELECT v.projection INTO projection FROM immu.versioned_tables v WHERE v.table_name = history;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% is not a versioned table', history
            USING ERRCODE = 'undefined_object', HINT = format('Make it one with SELECT immu.add_versioning(%L);', history::text);
    END IF;
    RETURN projection;
END
$fn$;

-- Refuses to manage `history` unless the current role has its owner's rights.
CREATE FUNCTION immu.require_owner(history regclass) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF NOT immu.owns(history) THEN
        RAISE EXCEPTION 'must be the owner of table % to manage its versioning', history
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Run immu''s migrations and the migrations of versioned tables as the tables'' owner.';
    END IF;
END
$fn$;

-- Refuses (IMMU4) while code of another role could run inside immu's own statements on these
-- tables: a foreign trigger or rule (see immu.machinery_problems). immu's management functions
-- write the projection as its owner, and would run it.
CREATE FUNCTION immu.refuse_foreign_code(history regclass, projection regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    problems text[];
    fixes text[];
BEGIN
    SELECT array_agg(p.problem), array_agg(p.fix) INTO problems, fixes
      FROM immu.machinery_problems(history, projection, '[]'::jsonb, '[]'::jsonb) p
     WHERE p.sqlstate = 'IMMU4' AND p.problem NOT LIKE '%(TRIGGER privilege)';
    IF problems IS NOT NULL THEN
        RAISE EXCEPTION '%: immu refuses to change the table while code of another role could run inside it', history
            USING ERRCODE = 'IMMU4', DETAIL = array_to_string(problems, E'\n'), HINT = array_to_string(fixes, ' ');
    END IF;
END
$fn$;

-- (Re)creates the machinery of `history` from its current columns: the insert trigger that checks
-- every version and keeps the projection in step, the refusal triggers, the lock-and-read function,
-- the write function and the committing write procedure. Records them in the catalog. The history,
-- the projection and the catalog row must exist, with the same columns (see sync_versioning).
CREATE FUNCTION immu.generate(history regclass) RETURNS void
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
$t$, check_fn, history, projection, health, cols, new_values, update_sql, immu.release(), same_data, history::text);

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

    -- The write function: insert, update, delete or undelete in one call, with the caller's rights
    -- (the application needs INSERT on the history). Each own column is a parameter of the same name,
    -- NULL by default; immu_columns names those the caller sets (NULL: all). An update keeps the
    -- latest value of a column the caller does not set; an insert leaves it to the column's default.
    SELECT coalesce(string_agg(format(', %I %s DEFAULT NULL', x.c, x.t), '' ORDER BY x.o), '')
      INTO params FROM unnest(own_cols, own_types) WITH ORDINALITY AS x (c, t, o);
    SELECT string_agg(CASE c.name
                          WHEN 'id' THEN 'immu_id'
                          WHEN 'entity_id' THEN 'immu_entity_id'
                          WHEN 'version' THEN '1'
                          WHEN 'valid_from' THEN 'NULL'
                          WHEN 'deleted_at' THEN 'NULL'
                          WHEN 'immu_shape' THEN 'immu_shape'
                          ELSE format('%I.%I', write_bare, c.name) END,
                      ', ' ORDER BY c.attnum),
           string_agg(CASE c.name
                          WHEN 'id' THEN 'immu_id'
                          WHEN 'entity_id' THEN 'immu_latest.entity_id'
                          WHEN 'version' THEN 'immu_latest.version + 1'
                          WHEN 'valid_from' THEN 'NULL'
                          WHEN 'deleted_at' THEN 'NULL'
                          WHEN 'immu_shape' THEN 'immu_shape'
                          ELSE format('CASE WHEN immu_keep[%s] THEN immu_latest.%I ELSE %I.%I END',
                                      array_position(own_cols, c.name::text), c.name, write_bare, c.name) END,
                      ', ' ORDER BY c.attnum),
           string_agg(CASE c.name
                          WHEN 'id' THEN 'immu_id'
                          WHEN 'version' THEN 'immu_latest.version + 1'
                          WHEN 'valid_from' THEN 'NULL'
                          WHEN 'deleted_at' THEN 'CASE WHEN immu_kind = ''delete'' THEN pg_catalog.clock_timestamp() END'
                          ELSE format('immu_latest.%I', c.name) END,
                      ', ' ORDER BY c.attnum)
      INTO inserted_values, updated_values, copied_values
      FROM immu.columns_of(history) c;
    SELECT coalesce(string_agg(format('NOT (%L = ANY (immu_columns))', x.c), ', ' ORDER BY x.o), '')
      INTO keep FROM unnest(own_cols) WITH ORDINALITY AS x (c, o);
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
    immu_shape integer DEFAULT NULL%2$s
) RETURNS SETOF %3$s
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $immu$
-- Generated by immu (release %11$s); regenerated by immu.sync_versioning and immu.upgrade.
-- One write of immu's write path. immu_kind: 'insert', 'update', 'delete' or 'undelete'. Returns
-- the stored version; or, when the entity's latest version refuses the write (deleted, not
-- deleted, not the expected version), a row whose id is NULL and whose reserved columns are that
-- latest version's; or no row when the entity does not exist. A write whose id is already the
-- entity's latest version returns that version and writes nothing: a retry of a write whose
-- outcome was unknown never stores it twice.
DECLARE
    immu_latest %4$s;
    immu_written %3$s;
    immu_keep boolean[];
    immu_provided text[];
BEGIN
    %5$s
    IF immu_kind IS NULL OR immu_kind NOT IN ('insert', 'update', 'delete', 'undelete') THEN
        RAISE EXCEPTION 'unknown write kind %%', coalesce(immu_kind, 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF immu_columns IS NOT NULL AND NOT (immu_columns <@ %9$L::text[]) THEN
        RAISE EXCEPTION 'immu_columns names columns %% does not have among %%', %12$L, immu_columns
            USING ERRCODE = 'undefined_column';
    END IF;
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
            EXECUTE format('INSERT INTO %%s (id, entity_id, version, immu_shape%%s) SELECT $1.id, $1.entity_id, 1, $1.immu_shape%%s RETURNING *',
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
    IF (immu_kind IN ('update', 'delete') AND immu_latest.deleted_at IS NOT NULL)
       OR (immu_kind = 'undelete' AND immu_latest.deleted_at IS NULL)
       OR (immu_kind = 'update' AND immu_expected IS NOT NULL AND immu_latest.version <> immu_expected) THEN
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
        INSERT INTO %3$s (%7$s) VALUES (%14$s) RETURNING * INTO immu_written;
    ELSE
        INSERT INTO %3$s (%7$s) VALUES (%15$s) RETURNING * INTO immu_written;
    END IF;
    RETURN NEXT immu_written;
END
$immu$;
$t$, write_fn, params, history, projection, health, own_count, cols, inserted_values,
        own_cols, inserted_values, immu.release(), history::text, keep, updated_values, copied_values);

    -- The committing procedure: the write function's call and COMMIT, in one round trip, outside
    -- any transaction block (inside one, PostgreSQL refuses the COMMIT: SQLSTATE 2D000). No SET
    -- clause is allowed here, so its body names nothing unqualified.
    SELECT string_agg(CASE WHEN c.name = ANY (reserved)
                           THEN format('INOUT %I %s DEFAULT NULL', c.name, c.type)
                           ELSE format('INOUT %I %s DEFAULT NULL', c.name, c.type) END,
                      ', ' ORDER BY CASE WHEN c.name = ANY (reserved) THEN 0 ELSE 1 END, c.attnum),
           string_agg(quote_ident(c.name), ', ' ORDER BY c.attnum)
      INTO proc_params, into_list FROM immu.columns_of(history) c;
    SELECT coalesce(string_agg(format(', %I => %I', x.c, x.c), '' ORDER BY x.o), '')
      INTO arg_list FROM unnest(own_cols) WITH ORDINALITY AS x (c, o);
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
    %2$s
)
LANGUAGE plpgsql AS $immu$
-- Generated by immu (release %6$s); regenerated by immu.sync_versioning and immu.upgrade.
-- immu's write path outside a transaction: %3$s, then COMMIT, in one round trip. The
-- INOUT parameters return the stored version (see the function).
BEGIN
    SELECT w.* FROM %3$s(immu_kind => immu_kind, immu_id => id, immu_entity_id => entity_id,
                         immu_expected => immu_expected, immu_lock => immu_lock,
                         immu_columns => immu_columns, immu_shape => immu_shape%4$s) AS w
        INTO %5$s;
    COMMIT;
END
$immu$;
$t$, commit_proc, proc_params, write_fn, arg_list, into_list, immu.release());

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

-- Makes `history` a versioned table: adds immu's reserved columns (id, entity_id, version,
-- valid_from, deleted_at, immu_shape) and constraints, creates the projection <table>_current
-- (each entity's latest version: what current reads scan, the target of foreign keys) and
-- generates the machinery. The table must be empty, have no primary key of its own and no column
-- named like immu's (or starting with immu_). Run it in the migration that creates the table, as
-- the table's owner:
--
--     CREATE TABLE accounts (owner text NOT NULL, balance bigint NOT NULL);
--     SELECT immu.add_versioning('accounts');
CREATE FUNCTION immu.add_versioning(history regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    t record;
    projection_name text;
    projection regclass;
    bad text;
    nonempty boolean;
BEGIN
    PERFORM immu.require_owner(history);
    SELECT c.relname, c.relkind, c.relpersistence, n.nspname INTO t
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = history;
    IF t.relkind <> 'r' OR t.relpersistence = 't' THEN
        RAISE EXCEPTION '% is not a plain, permanent table: immu versions ordinary tables', history
            USING ERRCODE = 'wrong_object_type';
    END IF;
    IF EXISTS (SELECT FROM immu.versioned_tables v WHERE v.table_name = history) THEN
        RAISE EXCEPTION '% is already versioned', history
            USING ERRCODE = 'duplicate_object',
                  HINT = format('After changing its columns, run SELECT immu.sync_versioning(%L);', history::text);
    END IF;
    IF length(t.relname) > 48 THEN
        RAISE EXCEPTION 'table name % is longer than 48 bytes: the names immu derives from it (%_current, %_immu_commit) must fit in 63', t.relname, t.relname, t.relname
            USING ERRCODE = 'name_too_long';
    END IF;
    SELECT string_agg(c.name, ', ') INTO bad FROM immu.columns_of(history) c
      WHERE c.name LIKE 'immu\_%' OR c.name IN (SELECT r.name FROM immu.reserved_columns() r);
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'columns of % use names immu reserves: %', history, bad
            USING ERRCODE = 'duplicate_column',
                  HINT = 'immu adds id, entity_id, version, valid_from, deleted_at and immu_shape itself; names starting with immu_ are reserved.';
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_constraint k WHERE k.conrelid = history AND k.contype = 'p') THEN
        RAISE EXCEPTION '% has a primary key: a versioned table''s primary key is immu''s (entity_id, valid_from, version)', history
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'Drop it; uniqueness of a current value belongs on the projection table (<table>_current).';
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT FROM ONLY %s)', history) INTO nonempty;
    IF nonempty THEN
        RAISE EXCEPTION '% is not empty: immu versions new tables', history
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;

    EXECUTE format($t$ALTER TABLE %1$s
        ADD COLUMN id uuid NOT NULL,
        ADD COLUMN entity_id uuid NOT NULL,
        ADD COLUMN version bigint NOT NULL,
        ADD COLUMN valid_from timestamptz NOT NULL,
        ADD COLUMN deleted_at timestamptz,
        ADD COLUMN immu_shape integer,
        ADD CONSTRAINT %2$I PRIMARY KEY (entity_id, valid_from, version),
        ADD CONSTRAINT immu_version_positive CHECK (version >= 1),
        ADD CONSTRAINT immu_valid_from_in_range CHECK (isfinite(valid_from) AND valid_from < '262143-01-01 00:00:00+00'),
        ADD CONSTRAINT immu_tombstone_at_valid_from CHECK (deleted_at IS NULL OR deleted_at = valid_from)$t$,
        history, (SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = history) || '_pkey');

    SELECT c.relname || '_current' INTO projection_name FROM pg_catalog.pg_class c WHERE c.oid = history;
    EXECUTE format('CREATE TABLE %I.%I (entity_id uuid NOT NULL, CONSTRAINT %I PRIMARY KEY (entity_id)) WITH (fillfactor = 90)',
                   (SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = history),
                   projection_name, projection_name || '_pkey');
    projection := format('%I.%I', (SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = history),
                         projection_name)::regclass;
    EXECUTE format('COMMENT ON TABLE %s IS %L', projection,
                   format('immu: the latest version of each entity of %s (tombstones included), kept in step by its trigger', history));
    INSERT INTO immu.versioned_tables (table_name, projection, release, columns, routines)
    VALUES (history, projection, 0, '[]', '{}');
    PERFORM immu.sync_versioning(history);
END
$fn$;

-- Brings the projection and the machinery of `history` in step with its columns: run it in the
-- migration that changes a versioned table's columns, after the ALTER TABLE. A column renamed in the
-- history is renamed in the projection (its indexes follow); an added or retyped column is added or
-- retyped there and filled from each entity's latest version (whatever USING clause the history's
-- ALTER used); a dropped one is dropped. Then the machinery is regenerated. Idempotent: with nothing
-- changed it only regenerates. Takes an ACCESS EXCLUSIVE lock on the projection until the
-- transaction ends; filling a column rewrites every projection row.
CREATE FUNCTION immu.sync_versioning(history regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    entry immu.versioned_tables;
    projection regclass;
    hist_name text;
    proj_name text;
    col record;
    recorded jsonb;
    fill text[] := '{}';
    guards text[];
    current_type text;
BEGIN
    PERFORM immu.require_owner(history);
    PERFORM immu.projection_of(history);
    SELECT * INTO entry FROM immu.versioned_tables v WHERE v.table_name = history FOR UPDATE;
    projection := entry.projection;
    SELECT c.relname INTO hist_name FROM pg_catalog.pg_class c WHERE c.oid = history;
    SELECT c.relname INTO proj_name FROM pg_catalog.pg_class c WHERE c.oid = projection;
    -- The table was renamed: its projection follows.
    IF proj_name <> hist_name || '_current' THEN
        EXECUTE format('ALTER TABLE %s RENAME TO %I', projection, hist_name || '_current');
        EXECUTE format('ALTER INDEX %I.%I RENAME TO %I',
                       (SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = projection),
                       proj_name || '_pkey', hist_name || '_current_pkey');
    END IF;
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', projection);
    PERFORM immu.refuse_foreign_code(history, projection);
    IF EXISTS (SELECT FROM pg_catalog.pg_attribute a
               WHERE a.attrelid = history AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> '') THEN
        RAISE EXCEPTION '% has a generated column: immu copies what is written, and a generated value is not yet known when it does', history
            USING ERRCODE = 'feature_not_supported', HINT = 'Compute it in your queries, or in an index expression on the projection.';
    END IF;

    -- Renames: a history column whose attribute number had another name at the last sync.
    FOR col IN
        SELECT c.name, r->>'name' AS old_name
        FROM immu.columns_of(history) c
        JOIN jsonb_array_elements(entry.columns) r ON (r->>'attnum')::int = c.attnum
        WHERE r->>'name' <> c.name
    LOOP
        IF EXISTS (SELECT FROM immu.columns_of(projection) p WHERE p.name = col.old_name)
           AND NOT EXISTS (SELECT FROM immu.columns_of(projection) p WHERE p.name = col.name) THEN
            EXECUTE format('ALTER TABLE %s RENAME COLUMN %I TO %I', projection, col.old_name, col.name);
        END IF;
    END LOOP;
    -- Columns the projection has and the history no longer has.
    FOR col IN
        SELECT p.name FROM immu.columns_of(projection) p
        WHERE p.name NOT IN (SELECT c.name FROM immu.columns_of(history) c)
    LOOP
        EXECUTE format('ALTER TABLE %s DROP COLUMN %I', projection, col.name);
    END LOOP;
    -- Columns dropped and added again under the same name since the last sync (their attribute
    -- number changed): their values are new, refill them.
    FOR col IN
        SELECT c.name FROM immu.columns_of(history) c
        WHERE entry.columns <> '[]'::jsonb
          AND NOT EXISTS (SELECT FROM jsonb_array_elements(entry.columns) r WHERE (r->>'attnum')::int = c.attnum)
          AND EXISTS (SELECT FROM immu.columns_of(projection) p WHERE p.name = c.name)
    LOOP
        fill := fill || col.name;
    END LOOP;
    -- Columns to add or retype, in the history's order; then filled from the history.
    FOR col IN
        SELECT c.name, c.projection_type, p.type AS current_type, p.not_null,
               (SELECT a.atttypid FROM pg_catalog.pg_attribute a WHERE a.attrelid = history AND a.attname = c.name) AS hist_typid,
               (SELECT a.atttypid FROM pg_catalog.pg_attribute a WHERE a.attrelid = projection AND a.attname = c.name) AS proj_typid
        FROM immu.columns_of(history) c
        LEFT JOIN immu.columns_of(projection) p ON p.name = c.name
        ORDER BY c.attnum
    LOOP
        IF col.current_type IS NULL THEN
            EXECUTE format('ALTER TABLE %s ADD COLUMN %I %s', projection, col.name, col.projection_type);
            fill := fill || col.name::text;
        ELSIF col.current_type <> col.projection_type THEN
            -- Same base type, only a typmod or a domain relaxed: the values are the same.
            IF pg_catalog.format_type(col.proj_typid, NULL) = immu.projection_type(col.hist_typid, NULL) THEN
                EXECUTE format('ALTER TABLE %s ALTER COLUMN %I TYPE %s', projection, col.name, col.projection_type);
            ELSE
                EXECUTE format('ALTER TABLE %s ALTER COLUMN %I TYPE %s USING NULL', projection, col.name, col.projection_type);
                fill := fill || col.name;
            END IF;
        END IF;
        IF col.not_null AND col.name <> 'entity_id' THEN
            EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP NOT NULL', projection, col.name);
        END IF;
    END LOOP;
    IF fill <> '{}' THEN
        -- The projection's guards (those that exist: a table of release 1 has one) let the
        -- owner's fill through while disabled.
        guards := ARRAY(SELECT t.tgname::text FROM pg_catalog.pg_trigger t
                        WHERE t.tgrelid = projection AND t.tgname IN ('immu_projection', 'immu_projection_rows'));
        -- (Row security does not apply to the owner.)
        IF guards <> '{}' THEN
            EXECUTE format('ALTER TABLE %s %s', projection,
                           (SELECT string_agg(format('DISABLE TRIGGER %I', g), ', ') FROM unnest(guards) AS g));
        END IF;
        EXECUTE format('UPDATE %1$s AS p SET (%2$s) = ROW(%3$s) FROM ONLY %4$s AS h
                        WHERE h.entity_id = p.entity_id AND h.valid_from = p.valid_from AND h.version = p.version',
                       projection,
                       (SELECT string_agg(quote_ident(x), ', ') FROM unnest(fill) AS x),
                       (SELECT string_agg(format('h.%I', x), ', ') FROM unnest(fill) AS x),
                       history);
        IF guards <> '{}' THEN
            EXECUTE format('ALTER TABLE %s %s', projection,
                           (SELECT string_agg(format('ENABLE ALWAYS TRIGGER %I', g), ', ') FROM unnest(guards) AS g));
        END IF;
    END IF;
    -- (A projection still without its guard, being created by add_versioning, is empty.)
    PERFORM immu.generate(history);
END
$fn$;

-- Rebuilds the projection of `history` from the history: every entity's row is set to its highest
-- stored version, missing rows are added, rows of entities without versions are removed. The
-- projection is only ever derived from the history, so this repairs it whatever happened to it
-- (triggers disabled by hand during a restore, say). Run it as the tables' owner. Returns the number
-- of projection rows it changed. Removing a row that another table's foreign key still references
-- fails, and the transaction with it.
CREATE FUNCTION immu.rebuild_projection(history regclass) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    projection regclass;
    cols text;
    sets text;
    changed bigint;
    removed bigint;
BEGIN
    PERFORM immu.require_owner(history);
    projection := immu.projection_of(history);
    SELECT string_agg(quote_ident(c.name), ', ' ORDER BY c.attnum),
           string_agg(format('%I = EXCLUDED.%I', c.name, c.name), ', ' ORDER BY c.attnum) FILTER (WHERE c.name <> 'entity_id')
      INTO cols, sets FROM immu.columns_of(history) c;
    PERFORM immu.refuse_foreign_code(history, projection);
    -- The owner's statements pass row security; only the guard trigger stops them.
    EXECUTE format('ALTER TABLE %s DISABLE TRIGGER immu_projection', projection);
    EXECUTE format($t$INSERT INTO %1$s AS p (%2$s)
        SELECT DISTINCT ON (h.entity_id) %4$s FROM ONLY %3$s AS h ORDER BY h.entity_id, h.valid_from DESC, h.version DESC
        ON CONFLICT (entity_id) DO UPDATE SET %5$s
        WHERE ROW(%6$s)::record OPERATOR(pg_catalog.*<>) ROW(%7$s)::record$t$,
        projection, cols, history,
        (SELECT string_agg(format('h.%I', c.name), ', ' ORDER BY c.attnum) FROM immu.columns_of(history) c),
        sets,
        (SELECT string_agg(format('p.%I', c.name), ', ' ORDER BY c.attnum) FROM immu.columns_of(history) c),
        (SELECT string_agg(format('EXCLUDED.%I', c.name), ', ' ORDER BY c.attnum) FROM immu.columns_of(history) c));
    GET DIAGNOSTICS changed = ROW_COUNT;
    EXECUTE format('DELETE FROM %1$s AS p WHERE NOT EXISTS (SELECT FROM ONLY %2$s AS h WHERE h.entity_id = p.entity_id)',
                   projection, history);
    GET DIAGNOSTICS removed = ROW_COUNT;
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER immu_projection', projection);
    RETURN changed + removed;
END
$fn$;

-- Importing history that already happened (a move from another system, a restore of selected
-- entities): versions with their own valid_from, which the insert trigger would replace with the
-- clock. As the table's owner, in one transaction:
--
--     SELECT immu.begin_import('accounts');   -- this transaction's inserts keep their valid_from
--     INSERT INTO accounts (...) SELECT ... ORDER BY valid_from;   -- or COPY, each entity's versions in order
--     SELECT immu.finish_import('accounts');  -- optional: the transaction's end ends it too
--
-- Every imported version passes every check a write does (the next version number, the
-- tombstone state machine, the projection moved under its row's lock); its valid_from must not be
-- in the future nor before the entity's previous version. A refusal (IMMU2) fails the statement.
CREATE FUNCTION immu.begin_import(history regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    PERFORM immu.require_owner(history);
    PERFORM immu.projection_of(history);
    -- Rows of imports that ended without finish_import match no transaction: remove them.
    DELETE FROM immu.imports i WHERE i.table_name = history AND i.transaction <> pg_catalog.pg_current_xact_id();
    INSERT INTO immu.imports (table_name) VALUES (history) ON CONFLICT DO NOTHING;
    PERFORM pg_catalog.set_config('immu.importing', history::text, true);
END
$fn$;

CREATE FUNCTION immu.finish_import(history regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    PERFORM immu.require_owner(history);
    DELETE FROM immu.imports i WHERE i.table_name = history AND i.transaction = pg_catalog.pg_current_xact_id();
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no import of % was begun in this transaction', history
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = format('SELECT immu.begin_import(%L);', history::text);
    END IF;
    PERFORM pg_catalog.set_config('immu.importing', '', true);
END
$fn$;

-- The entities whose projection row differs from their latest stored version, column by column:
-- none when the projection is right. Each row names the entity and what differs.
CREATE FUNCTION immu.check_projection(history regclass) RETURNS TABLE (entity_id uuid, problem text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    projection regclass;
    drift text[];
BEGIN
    projection := immu.projection_of(history);
    -- Columns that differ between the two tables cannot be compared: say so first.
    SELECT array_agg(p.problem) INTO drift
      FROM immu.versioned_tables v, immu.machinery_problems(v.table_name, v.projection, v.history_shape, v.projection_shape) p
     WHERE v.table_name = history AND p.sqlstate = 'IMMU3';
    IF drift IS NOT NULL THEN
        RAISE EXCEPTION '%: immu''s machinery is out of step with the table', history
            USING ERRCODE = 'IMMU3', DETAIL = array_to_string(drift, E'\n'),
                  HINT = format('SELECT immu.sync_versioning(%L);', history::text);
    END IF;
    RETURN QUERY EXECUTE format($t$
        SELECT coalesce(h.entity_id, p.entity_id),
               CASE WHEN p.entity_id IS NULL THEN 'no projection row for the entity'
                    WHEN h.entity_id IS NULL THEN 'projection row of an entity without versions'
                    ELSE 'projection row differs from version ' || h.version || ' in: ' ||
                         (SELECT string_agg(x.c, ', ') FROM (VALUES %4$s) AS x (c, same) WHERE NOT x.same) END
        FROM (SELECT DISTINCT ON (h.entity_id) h.* FROM ONLY %1$s AS h ORDER BY h.entity_id, h.valid_from DESC, h.version DESC) AS h
        FULL JOIN %2$s AS p ON p.entity_id = h.entity_id
        WHERE p.entity_id IS NULL OR h.entity_id IS NULL OR ROW(%3$s)::record OPERATOR(pg_catalog.*<>) ROW(%5$s)::record$t$,
        history, projection,
        (SELECT string_agg(format('p.%I', c.name), ', ' ORDER BY c.attnum) FROM immu.columns_of(history) c),
        (SELECT string_agg(format('(%L, ROW(p.%I)::record OPERATOR(pg_catalog.*=) ROW(h.%I::%s)::record)', c.name, c.name, c.name, c.projection_type), ', ' ORDER BY c.attnum)
         FROM immu.columns_of(history) c),
        (SELECT string_agg(format('h.%I::%s', c.name, c.projection_type), ', ' ORDER BY c.attnum) FROM immu.columns_of(history) c));
END
$fn$;

-- The versions of `history` that break its rules, with what is wrong: versions not numbered 1, 2,
-- 3, ... per entity, valid_from going back, a tombstone not stamped at its valid_from, a tombstone
-- as version 1 or after a tombstone, a tombstone whose data differs from the version it deletes,
-- a live version after a tombstone whose data differs from the tombstone's (an update of a deleted
-- entity). No row: the history is sound. Reads the whole table.
CREATE FUNCTION immu.check_history(history regclass) RETURNS TABLE (entity_id uuid, version bigint, problem text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    own text;
BEGIN
    SELECT coalesce(string_agg(format('%%1$s.%I', c.name), ', ' ORDER BY c.attnum), '')
      INTO own FROM immu.columns_of(history) c
     WHERE c.name NOT IN (SELECT r.name FROM immu.reserved_columns() r) AND c.name NOT LIKE 'immu\_%';
    RETURN QUERY EXECUTE format($q$
        SELECT h.entity_id, h.version,
               CASE WHEN h.copies > 1 THEN 'version ' || h.version || ' is stored ' || h.copies || ' times'
                    WHEN h.version > 1 AND p.version IS NULL THEN 'version ' || h.version || ' follows no version ' || (h.version - 1)
                    WHEN h.version < 1 THEN 'version numbers start at 1'
                    WHEN h.valid_from < p.valid_from THEN 'valid from ' || h.valid_from || ', before version ' || p.version || ' (' || p.valid_from || ')'
                    WHEN h.deleted_at IS DISTINCT FROM h.valid_from AND h.deleted_at IS NOT NULL THEN 'a tombstone not stamped at its valid_from'
                    WHEN h.version = 1 AND h.deleted_at IS NOT NULL THEN 'version 1 is a tombstone'
                    WHEN p.deleted_at IS NOT NULL AND h.deleted_at IS NOT NULL THEN 'a tombstone after a tombstone'
                    WHEN p.deleted_at IS NULL AND h.deleted_at IS NOT NULL AND NOT %2$s THEN 'a tombstone whose data differs from the version it deletes'
                    WHEN p.deleted_at IS NOT NULL AND h.deleted_at IS NULL AND NOT %2$s THEN 'the version after a tombstone does not carry its data'
               END
        FROM (SELECT x.*, count(*) OVER (PARTITION BY x.entity_id, x.version) AS copies FROM ONLY %1$s AS x) AS h
        LEFT JOIN LATERAL (SELECT y.* FROM ONLY %1$s AS y
                           WHERE y.entity_id = h.entity_id AND y.version = h.version - 1 LIMIT 1) AS p ON true
        WHERE h.copies > 1 OR (h.version > 1 AND p.version IS NULL) OR h.version < 1 OR h.valid_from < p.valid_from
           OR (h.deleted_at IS NOT NULL AND (h.deleted_at IS DISTINCT FROM h.valid_from OR h.version = 1 OR p.deleted_at IS NOT NULL))
           OR (p.deleted_at IS NULL AND h.deleted_at IS NOT NULL AND NOT %2$s)
           OR (p.deleted_at IS NOT NULL AND h.deleted_at IS NULL AND NOT %2$s)
        ORDER BY h.entity_id, h.version$q$,
        history,
        CASE WHEN own = '' THEN 'true'
             ELSE format('(ROW(%s)::record OPERATOR(pg_catalog.*=) ROW(%s)::record)', format(own, 'h'), format(own, 'p')) END);
END
$fn$;

-- What keeps `history` from being a versioned table whose machinery runs, safely, in step with
-- its columns, with the fix of each: not versioned, machinery of another release, columns changed
-- without immu.sync_versioning, immu's triggers missing or disabled, another role able to create
-- triggers on it. No row: nothing. immu_core::schema::check adds the differences between the
-- table and the entity's struct.
CREATE FUNCTION immu.check_table(history regclass) RETURNS TABLE (problem text, fix text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    entry immu.versioned_tables;
BEGIN
    SELECT * INTO entry FROM immu.versioned_tables v WHERE v.table_name = history;
    IF NOT FOUND THEN
        IF EXISTS (SELECT FROM pg_catalog.pg_trigger g
                   WHERE g.tgrelid = history AND g.tgname = 'immu_append_only' AND g.tgfoid = 'immu.refuse_change()'::regprocedure) THEN
            RETURN QUERY SELECT format('%s was made versioned by release 1''s DDL, after immu''s migrations ran', history),
                                'SELECT immu.upgrade();'::text;
        ELSE
            RETURN QUERY SELECT format('%s is not a versioned table', history),
                                format('SELECT immu.add_versioning(%L);', history::text);
        END IF;
        RETURN;
    END IF;
    IF entry.release <> immu.release() THEN
        RETURN QUERY SELECT format('the machinery of %s is from release %s of immu; the database''s immu functions are release %s', history, entry.release, immu.release()),
                            'SELECT immu.upgrade();'::text;
    END IF;
    RETURN QUERY SELECT p.problem, p.fix FROM immu.machinery_problems(history, entry.projection, entry.history_shape, entry.projection_shape) p;
END
$fn$;

-- Brings a table made by release 1's pasted DDL into the catalog: drops its per-table routines
-- (the catalog-generated ones replace them), adds immu_shape, and syncs it.
CREATE FUNCTION immu.adopt(history regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    projection regclass;
    old text;
BEGIN
    PERFORM immu.require_owner(history);
    projection := pg_catalog.to_regclass(format('%I.%I',
        (SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = history),
        (SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = history) || '_current'));
    IF projection IS NULL THEN
        RAISE EXCEPTION '% has release 1''s append-only trigger but no projection table', history
            USING ERRCODE = 'undefined_table';
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS immu_check_insert ON %s', history);
    FOR old IN
        SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = (SELECT c.relnamespace FROM pg_catalog.pg_class c WHERE c.oid = history)
          AND p.proname IN (SELECT (SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = history) || '_immu_' || k
                            FROM unnest(ARRAY['check', 'latest', 'insert', 'append', 'delete', 'undelete']) AS k)
    LOOP
        EXECUTE format('DROP ROUTINE %s', old);
    END LOOP;
    IF NOT EXISTS (SELECT FROM immu.columns_of(history) c WHERE c.name = 'immu_shape') THEN
        EXECUTE format('ALTER TABLE %s ADD COLUMN immu_shape integer', history);
    END IF;
    INSERT INTO immu.versioned_tables (table_name, projection, release, columns, routines)
    SELECT history, projection, 1,
           (SELECT jsonb_agg(jsonb_build_object('attnum', c.attnum, 'name', c.name, 'type', c.type) ORDER BY c.attnum)
            FROM immu.columns_of(history) c),
           '{}';
    PERFORM immu.sync_versioning(history);
END
$fn$;

-- Regenerates the machinery of every versioned table with the current immu functions, and adopts
-- the tables of release 1's pasted DDL. immu's own migrations end with it; run it by hand after
-- migrations that still create tables with release 1's pasted DDL (a new database built from
-- an old project). Tables the current role does not own are skipped with a warning.
CREATE FUNCTION immu.upgrade() RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    t regclass;
    done integer := 0;
BEGIN
    FOR t IN
        SELECT DISTINCT g.tgrelid::regclass FROM pg_catalog.pg_trigger g
        WHERE g.tgname = 'immu_append_only' AND g.tgfoid = 'immu.refuse_change()'::regprocedure
          AND g.tgrelid NOT IN (SELECT v.table_name FROM immu.versioned_tables v)
        ORDER BY 1
    LOOP
        IF immu.owns(t) THEN
            PERFORM immu.adopt(t);
            done := done + 1;
        ELSE
            RAISE WARNING 'immu: % is not owned by %, its machinery was not upgraded', t, current_user;
        END IF;
    END LOOP;
    FOR t IN
        SELECT v.table_name FROM immu.versioned_tables v
        WHERE (v.release < immu.release() OR v.release IS NULL)
          AND immu.is_permanent_table(v.table_name)
        ORDER BY v.table_name::text
    LOOP
        IF immu.owns(t) THEN
            PERFORM immu.sync_versioning(t);
            done := done + 1;
        ELSE
            RAISE WARNING 'immu: % is not owned by %, its machinery was not upgraded', t, current_user;
        END IF;
    END LOOP;
    RETURN done;
END
$fn$;

-- Release 1's tables, if any.
SELECT immu.upgrade();

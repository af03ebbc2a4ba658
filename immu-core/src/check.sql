-- The differences between an entity's struct and its versioned table, for
-- immu_core::schema::check. $1: the table (regclass). The struct's own columns: $2 names, $3 types
-- as the struct declares them, $4 whether each is nullable (an Option), $5 the projection each
-- references (NULL: none), $6 whether versions of older shapes are read by another struct (an
-- upcast: the struct's new columns are NULL in them). One row per difference: what differs, and
-- the fix.
WITH
target AS (
    SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS name
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = $1::regclass
),
fields AS (
    SELECT f.name, f.type, f.nullable, f.ref, f.o, pg_catalog.to_regtype(f.type) AS typid
    FROM unnest($2::text[], $3::text[], $4::bool[], $5::text[]) WITH ORDINALITY AS f (name, type, nullable, ref, o)
),
cols AS (
    SELECT a.attnum, a.attname::text AS name, a.atttypid, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type,
           a.attnotnull, a.atthasdef
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
),
-- Domains and their base types, so that a domain column matches its base type (PostgreSQL sends
-- a domain's values as its base type's).
base (typid, base) AS (
    SELECT t.oid, t.oid FROM pg_catalog.pg_type t WHERE t.typtype <> 'd'
    UNION ALL
    SELECT d.oid, d.typbasetype FROM pg_catalog.pg_type d WHERE d.typtype = 'd' AND d.typbasetype <> 0
),
resolved AS (
    SELECT b.typid, coalesce(b2.base, b.base) AS base FROM base b LEFT JOIN base b2 ON b2.typid = b.base AND b2.typid <> b2.base
),
fkeys AS (
    SELECT k.conname::text AS conname, a.attname::text AS col, k.confrelid
    FROM pg_catalog.pg_constraint k
    JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
    WHERE k.conrelid = $1::regclass AND k.contype = 'f' AND cardinality(k.conkey) = 1
),
sync AS (SELECT pg_catalog.format('SELECT immu.sync_versioning(%L);', name) AS sql FROM target)
SELECT description, fix FROM (
    SELECT f.o AS o, pg_catalog.format('field column %I (%s) is missing from %s', f.name, f.type, (SELECT name FROM target)) AS description,
           pg_catalog.format('ALTER TABLE %s ADD COLUMN %I %s; %s (or remove the field)', (SELECT name FROM target), f.name,
                             f.type || CASE WHEN f.nullable THEN '' ELSE ' NOT NULL DEFAULT <value>' END, (SELECT sql FROM sync)) AS fix
    FROM fields f WHERE NOT EXISTS (SELECT FROM cols c WHERE c.name = f.name)
    UNION ALL
    SELECT f.o, pg_catalog.format('type %s of field column %I does not exist in the database', f.type, f.name),
           'create the type in a migration, or correct #[immu(sql_type = ...)]'
    FROM fields f WHERE f.typid IS NULL AND EXISTS (SELECT FROM cols c WHERE c.name = f.name)
    UNION ALL
    SELECT f.o, pg_catalog.format('column %I of %s is %s; the struct declares %s', f.name, (SELECT name FROM target), c.type, f.type),
           pg_catalog.format('ALTER TABLE %s ALTER COLUMN %I TYPE %s; %s (or change the field''s type)', (SELECT name FROM target), f.name, f.type, (SELECT sql FROM sync))
    FROM fields f JOIN cols c ON c.name = f.name
    WHERE f.typid IS NOT NULL
      AND (SELECT r.base FROM resolved r WHERE r.typid = c.atttypid) IS DISTINCT FROM (SELECT r.base FROM resolved r WHERE r.typid = f.typid)
      -- The text types decode to the same Rust String.
      AND NOT ((SELECT r.base FROM resolved r WHERE r.typid = c.atttypid) IN ('text'::regtype, 'character varying'::regtype, 'character'::regtype, 'name'::regtype)
               AND (SELECT r.base FROM resolved r WHERE r.typid = f.typid) IN ('text'::regtype, 'character varying'::regtype, 'character'::regtype, 'name'::regtype))
    UNION ALL
    SELECT f.o, pg_catalog.format('column %I of %s is nullable, and its field is not an Option: reading a NULL would fail', f.name, (SELECT name FROM target)),
           pg_catalog.format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL; (or make the field an Option)', (SELECT name FROM target), f.name)
    FROM fields f JOIN cols c ON c.name = f.name
    WHERE NOT f.nullable AND NOT c.attnotnull AND NOT $6::boolean
    UNION ALL
    SELECT 1000000 + c.attnum, pg_catalog.format('column %I of %s is NOT NULL without a default and the struct does not set it: inserts would fail', c.name, (SELECT name FROM target)),
           pg_catalog.format('ALTER TABLE %s ALTER COLUMN %I DROP NOT NULL; (or SET DEFAULT ..., or add the field)', (SELECT name FROM target), c.name)
    FROM cols c
    WHERE c.attnotnull AND NOT c.atthasdef
      AND c.name NOT IN ('id', 'entity_id', 'version', 'valid_from', 'deleted_at')
      AND c.name NOT LIKE 'immu\_%'
      AND NOT EXISTS (SELECT FROM fields f WHERE f.name = c.name)
    UNION ALL
    SELECT f.o, pg_catalog.format('field column %I references %s, and %s has no foreign key from it to %s', f.name, f.ref, (SELECT name FROM target), f.ref),
           pg_catalog.format('ALTER TABLE %s ADD FOREIGN KEY (%I) REFERENCES %s (entity_id);', (SELECT name FROM target), f.name, pg_catalog.quote_ident(f.ref))
    FROM fields f
    WHERE f.ref IS NOT NULL AND EXISTS (SELECT FROM cols c WHERE c.name = f.name)
      AND NOT EXISTS (SELECT FROM fkeys k WHERE k.col = f.name AND k.confrelid = pg_catalog.to_regclass(pg_catalog.quote_ident(f.ref)))
    UNION ALL
    SELECT f.o, pg_catalog.format('column %I of %s has the foreign key %I to %s, which the struct does not declare', f.name, (SELECT name FROM target), k.conname, k.confrelid::regclass),
           pg_catalog.format('add #[immu(references = ...)] to the field, or ALTER TABLE %s DROP CONSTRAINT %I;', (SELECT name FROM target), k.conname)
    FROM fields f JOIN fkeys k ON k.col = f.name
    WHERE f.ref IS NULL OR k.confrelid IS DISTINCT FROM pg_catalog.to_regclass(pg_catalog.quote_ident(f.ref))
) AS d
ORDER BY o, description

//! The database side of the benchmark: the server's settings, the schema of the three contenders
//! (immu's versioned table, the plain mutable table, the periods extension's system-versioned
//! table), the data set, its storage sizes and the correctness checks run before measuring.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use immu_core::Immutable;
use immu_core::sea_query::ExprTrait;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::{Account, BoxError, Config};

/// The database the benchmark creates (and drops again) on the server.
pub(crate) const DATABASE: &str = "immu_bench";

/// Balances are uniform in `[0, BALANCE_RANGE)`; the selective filter keeps `balance < FILTER_BELOW`
/// (1% of the entities).
pub(crate) const BALANCE_RANGE: i64 = 100_000;
/// The upper bound of the selective filter: 1% of [`BALANCE_RANGE`].
pub(crate) const FILTER_BELOW: i64 = 1_000;

/// Every `DELETED_EVERY`-th entity is deleted (its last version is a tombstone): 5%.
const DELETED_EVERY: u64 = 20;

/// The server settings that shape the numbers, reported with the results.
pub(crate) const REPORTED_SETTINGS: [&str; 14] = [
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_level",
    "shared_buffers",
    "work_mem",
    "effective_cache_size",
    "random_page_cost",
    "jit",
    "max_parallel_workers_per_gather",
    "max_wal_size",
    "checkpoint_timeout",
    "autovacuum",
    "max_connections",
];

/// The settings of the throwaway server, on top of `TempPostgres::builder().fsync(true)` (which
/// turns `fsync`, `full_page_writes` and `synchronous_commit` on).
pub(crate) const SERVER_SETTINGS: [(&str, &str); 5] = [
    // Commits do not wait for the WAL flush: the comparison is CPU-bound (every commit is still
    // written to the WAL and fsynced in the background; `full_page_writes` stays on).
    ("synchronous_commit", "off"),
    // The whole data set (about 400 MB at 1M versions) stays in shared buffers.
    ("shared_buffers", "1GB"),
    // JIT compilation adds tens of milliseconds to every plan over a large table and would
    // measure the compiler rather than the query shapes.
    ("jit", "off"),
    // No forced checkpoint in the middle of a write scenario.
    ("max_wal_size", "8GB"),
    ("max_connections", "200"),
];

/// The server and the loaded data set.
pub(crate) struct Setup {
    /// A pool on the benchmark database (for setup queries, not for measuring).
    pub(crate) pool: PgPool,
    /// URL of the benchmark database.
    pub(crate) url: String,
    /// Whether the periods extension is installed and loaded; otherwise why not.
    pub(crate) periods: Result<(), String>,
    /// The tables immu's DDL created (history table, projection table, anything added later).
    pub(crate) library_tables: Vec<String>,
    /// The instant the as-of scenarios read at: every entity exists then, most have later versions.
    pub(crate) as_of: DateTime<Utc>,
    /// A recent instant: the latest version of 90% of the entities is valid from it or earlier.
    pub(crate) as_of_recent: DateTime<Utc>,
    /// Version rows in immu's table after the load.
    pub(crate) version_rows: i64,
    /// How long the load took (all three tables, vacuum included).
    pub(crate) load_time: Duration,
    /// `SELECT version()`.
    pub(crate) server_version: String,
    /// The [`REPORTED_SETTINGS`] as the server reports them.
    pub(crate) settings: Vec<(String, String)>,
}

/// Creates the benchmark database on `admin_url`'s server, the three tables and the data set.
pub(crate) async fn prepare(
    admin_url: &str,
    benchmark_url: String,
    config: &Config,
) -> Result<Setup, BoxError> {
    let started = Instant::now();
    let mut admin = PgConnection::connect(admin_url).await?;
    let drop_database = format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)");
    sqlx::raw_sql(AssertSqlSafe(drop_database)).execute(&mut admin).await?;
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {DATABASE}"))).execute(&mut admin).await?;
    admin.close().await?;

    let pool = PgPoolOptions::new().max_connections(4).connect(&benchmark_url).await?;
    let server_version: String = sqlx::query_scalar("SELECT version()").fetch_one(&pool).await?;
    let settings = sqlx::query_as::<_, (String, String)>(
        "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY($1) ORDER BY name",
    )
    .bind(REPORTED_SETTINGS.map(str::to_owned).to_vec())
    .fetch_all(&pool)
    .await?;

    let mut conn = pool.acquire().await?;
    let periods =
        match sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS periods CASCADE").execute(&mut *conn).await {
            Ok(_) => Ok(()),
            Err(err) => Err(format!(
                "the periods extension is not available on this server ({err}); on Debian/Ubuntu: \
             apt-get install postgresql-15-periods (match the server's major version)"
            )),
        };
    immu_core::MIGRATOR.run(&mut *conn).await?;

    // immu's own DDL, exactly as users paste it into a migration; whatever tables it creates are
    // the library's storage.
    let before = public_tables(&mut conn).await?;
    sqlx::raw_sql(AssertSqlSafe(immu_core::schema::create_table::<Account>()?)).execute(&mut *conn).await?;
    let library_tables: Vec<String> = public_tables(&mut conn).await?.difference(&before).cloned().collect();

    let t0 = (Utc::now() - TimeDelta::days(40)).trunc_subsecs(0);
    let as_of = t0 + TimeDelta::days(15);
    let (entities, versions) = (config.entities, config.versions);
    eprintln!("loading {entities} entities x {versions} versions ...");
    load_versions(&mut conn, t0, entities, versions).await?;
    let version_rows: i64 =
        sqlx::query_scalar(r#"SELECT count(*) FROM "accounts""#).fetch_one(&mut *conn).await?;
    let as_of_recent: DateTime<Utc> = sqlx::query_scalar(
        r#"SELECT percentile_disc(0.9) WITHIN GROUP (ORDER BY "valid_from") FROM "accounts_current""#,
    )
    .fetch_one(&mut *conn)
    .await?;
    load_plain(&mut conn, versions).await?;
    let periods = match periods {
        Ok(()) => load_periods(&mut conn, versions)
            .await
            .map_err(|e| format!("loading the periods table failed: {e}")),
        Err(why) => Err(why),
    };
    sqlx::raw_sql("DROP TABLE bench_entities").execute(&mut *conn).await?;
    // The load wrote each projection row once per version, all in one transaction: compact it to
    // what a table updated one transaction at a time keeps (HOT updates, pruned in place), as the
    // floor and periods tables are freshly written too. The history is left as loaded.
    sqlx::raw_sql(r#"VACUUM (FULL) "accounts_current""#).execute(&mut *conn).await?;
    sqlx::raw_sql("VACUUM (ANALYZE)").execute(&mut *conn).await?;
    sqlx::raw_sql("CHECKPOINT").execute(&mut *conn).await?;
    drop(conn);
    Ok(Setup {
        pool,
        url: benchmark_url,
        periods,
        library_tables,
        as_of,
        as_of_recent,
        version_rows,
        load_time: started.elapsed(),
        server_version,
        settings,
    })
}

/// The ordinary tables of schema `public`.
async fn public_tables(conn: &mut PgConnection) -> Result<BTreeSet<String>, BoxError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(names.into_iter().collect())
}

/// Fills immu's table with a history that already happened, in one `INSERT ... SELECT` ordered by
/// `valid_from`, between `immu.begin_import` and `immu.finish_import` (the owner's import: the
/// versions keep their own `valid_from`, and the insert trigger checks each one and keeps the
/// projection `accounts_current` in step, as for any write).
///
/// Entity `i` is created at a random instant in `[t0, t0 + 15 days)` and changes every `gap_i`
/// (random, up to `15 days / (versions - 1)`), so versions of different entities interleave on
/// disk as they would in a real table and current versions are scattered, not packed at the end.
/// Ids are UUIDv7 of the row's instant, as the library writes them. Balances are a hash of
/// `(i, version)`, uniform in `[0, 100000)`. Every 20th entity's last version is a tombstone
/// carrying the previous version's data.
async fn load_versions(
    conn: &mut PgConnection,
    t0: DateTime<Utc>,
    entities: u64,
    versions: u64,
) -> Result<(), BoxError> {
    let t0 = t0.to_rfc3339();
    let steps = versions - 1;
    let statements = [
        // A UUIDv7 of an instant: its milliseconds in the first 48 bits, version 7, random rest.
        r#"CREATE FUNCTION bench_uuid7(ts timestamptz) RETURNS uuid LANGUAGE sql VOLATILE AS $$
            SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                PLACING substring(int8send(floor(extract(epoch FROM ts) * 1000)::bigint) FROM 3) FROM 1 FOR 6),
                52, 1), 53, 1), 'hex')::uuid
        $$"#
        .to_owned(),
        "SELECT setseed(0.42)".to_owned(),
        format!(
            "CREATE TABLE bench_entities AS
             SELECT i::bigint AS i,
                    timestamptz '{t0}' + random() * interval '15 days' AS created,
                    interval '1 second' + random() * (interval '15 days' / {steps}) AS gap
             FROM generate_series(1, {entities}) AS i"
        ),
        "ALTER TABLE bench_entities ADD COLUMN entity_id uuid".to_owned(),
        "UPDATE bench_entities SET entity_id = bench_uuid7(created)".to_owned(),
        "BEGIN".to_owned(),
        "SELECT immu.begin_import('accounts')".to_owned(),
        format!(
            r#"INSERT INTO "accounts" ("id", "entity_id", "version", "valid_from", "deleted_at", "owner", "balance")
             SELECT bench_uuid7(t.valid_from), e.entity_id, v, t.valid_from,
                    CASE WHEN t.tombstone THEN t.valid_from END,
                    'owner-' || (e.i % 1000),
                    abs(hashint8(e.i * 100000 + CASE WHEN t.tombstone THEN v - 1 ELSE v END)::bigint) % {BALANCE_RANGE}
             FROM bench_entities AS e
             CROSS JOIN generate_series(1, {versions}) AS v
             CROSS JOIN LATERAL (SELECT e.created + (v - 1) * e.gap AS valid_from,
                                        e.i % {DELETED_EVERY} = 0 AND v = {versions} AS tombstone) AS t
             ORDER BY t.valid_from"#
        ),
        "SELECT immu.finish_import('accounts')".to_owned(),
        "COMMIT".to_owned(),
    ];
    for statement in statements {
        sqlx::raw_sql(AssertSqlSafe(statement)).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The floor: a plain mutable table holding what the current versions hold (live entities only).
async fn load_plain(conn: &mut PgConnection, versions: u64) -> Result<(), BoxError> {
    sqlx::raw_sql(
        "CREATE TABLE accounts_plain (id uuid PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    let fill = format!(
        r#"INSERT INTO accounts_plain (id, owner, balance)
           SELECT "entity_id", "owner", "balance" FROM "accounts"
           WHERE "version" = {versions} AND "deleted_at" IS NULL ORDER BY "entity_id""#
    );
    sqlx::raw_sql(AssertSqlSafe(fill)).execute(&mut *conn).await?;
    Ok(())
}

/// The peer: a table with the periods extension's system versioning, holding the same history.
///
/// The current rows go to the table, every earlier version to its `_history` table with
/// `system_time_end` = the next version's `valid_from` (a delete ends the last live version; a
/// tombstone is no row). The extension's triggers would stamp `now()`, so the load bypasses them
/// (`session_replication_role = replica`, which needs a superuser). The extension creates no index
/// on the history table and says to add one: `(entity_id, system_time_end, system_time_start)`
/// serves its as-of read of one entity.
async fn load_periods(conn: &mut PgConnection, versions: u64) -> Result<(), BoxError> {
    let statements = [
        "CREATE TABLE periods_accounts (entity_id uuid PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL)"
            .to_owned(),
        "SELECT periods.add_system_time_period('periods_accounts', 'system_time_start', 'system_time_end')".to_owned(),
        "SELECT periods.add_system_versioning('periods_accounts')".to_owned(),
        "SET session_replication_role = replica".to_owned(),
        format!(
            r#"INSERT INTO periods_accounts (entity_id, owner, balance, system_time_start, system_time_end)
               SELECT "entity_id", "owner", "balance", "valid_from", 'infinity' FROM "accounts"
               WHERE "version" = {versions} AND "deleted_at" IS NULL ORDER BY "entity_id""#
        ),
        r#"INSERT INTO periods_accounts_history (entity_id, owner, balance, system_time_start, system_time_end)
           SELECT a."entity_id", a."owner", a."balance", a."valid_from", n."valid_from"
           FROM "accounts" AS a JOIN "accounts" AS n ON n."entity_id" = a."entity_id" AND n."version" = a."version" + 1
           ORDER BY n."valid_from""#
            .to_owned(),
        "RESET session_replication_role".to_owned(),
        "CREATE INDEX periods_accounts_history_as_of_idx
             ON periods_accounts_history (entity_id, system_time_end, system_time_start)"
            .to_owned(),
    ];
    for statement in statements {
        if let Err(err) = sqlx::raw_sql(AssertSqlSafe(statement)).execute(&mut *conn).await {
            let _ = sqlx::raw_sql("RESET session_replication_role").execute(&mut *conn).await;
            return Err(err.into());
        }
    }
    Ok(())
}

/// What the scenarios read and write: the live entities, the as-of instant, the hot entity.
pub(crate) struct Ctx {
    /// The live entities (the plain table's rows): id and owner.
    pub(crate) live: Vec<(Uuid, String)>,
    /// The as-of instant.
    pub(crate) as_of: DateTime<Utc>,
    /// A recent as-of instant: 10% of the entities have changed since.
    pub(crate) as_of_recent: DateTime<Utc>,
    /// The entity the 32 read-modify-write clients share (balance 0 in both tables at the start).
    pub(crate) hot: Uuid,
}

impl Ctx {
    /// Reads the live entities and creates the hot entity (through the library, and the same id in
    /// the plain table).
    pub(crate) async fn load(setup: &Setup) -> Result<Ctx, BoxError> {
        let live = sqlx::query_as::<_, (Uuid, String)>("SELECT id, owner FROM accounts_plain ORDER BY id")
            .fetch_all(&setup.pool)
            .await?;
        let hot = Account::insert(&setup.pool, Account { owner: "hot".into(), balance: 0 }).await?.entity_id;
        sqlx::query("INSERT INTO accounts_plain (id, owner, balance) VALUES ($1, 'hot', 0)")
            .bind(hot)
            .execute(&setup.pool)
            .await?;
        Ok(Ctx { live, as_of: setup.as_of, as_of_recent: setup.as_of_recent, hot })
    }
}

/// Size of one relation.
pub(crate) struct Relation {
    /// Its name.
    pub(crate) name: String,
    /// Rows (tables) or entries (indexes: the table's rows).
    pub(crate) rows: i64,
    /// `pg_total_relation_size` for tables (heap, TOAST, indexes), `pg_relation_size` for indexes.
    pub(crate) bytes: i64,
    /// For tables, the heap alone (`pg_relation_size`); for indexes, the same as `bytes`.
    pub(crate) heap_bytes: i64,
    /// For indexes, `pg_get_indexdef`.
    pub(crate) definition: String,
}

/// Storage of the three contenders.
pub(crate) struct Storage {
    /// immu's tables (history table, projection table, ...).
    pub(crate) library: Vec<Relation>,
    /// Their indexes.
    pub(crate) library_indexes: Vec<Relation>,
    /// The plain table.
    pub(crate) plain: Relation,
    /// Its indexes.
    pub(crate) plain_indexes: Vec<Relation>,
    /// The periods table and its history table, if loaded.
    pub(crate) periods: Vec<Relation>,
    /// Their indexes.
    pub(crate) periods_indexes: Vec<Relation>,
}

impl Storage {
    /// Bytes per version of immu: every library table (indexes included) over the version rows.
    pub(crate) fn library_per_version(&self, version_rows: i64) -> f64 {
        self.library.iter().map(|r| r.bytes).sum::<i64>() as f64 / version_rows as f64
    }

    /// Bytes per row of the plain table, indexes included.
    pub(crate) fn plain_per_row(&self) -> f64 {
        self.plain.bytes as f64 / self.plain.rows as f64
    }

    /// Bytes per stored version of the periods peer (current and history rows), if loaded.
    pub(crate) fn periods_per_version(&self) -> Option<f64> {
        let rows: i64 = self.periods.iter().map(|r| r.rows).sum();
        (rows > 0).then(|| self.periods.iter().map(|r| r.bytes).sum::<i64>() as f64 / rows as f64)
    }
}

/// Measures every table and index (after `VACUUM ANALYZE`, before any scenario writes).
pub(crate) async fn storage(setup: &Setup) -> Result<Storage, BoxError> {
    let pool = &setup.pool;
    let mut library = Vec::new();
    let mut library_indexes = Vec::new();
    for table in &setup.library_tables {
        let (relation, indexes) = measure(pool, table).await?;
        library.push(relation);
        library_indexes.extend(indexes);
    }
    let (plain, plain_indexes) = measure(pool, "accounts_plain").await?;
    let mut periods = Vec::new();
    let mut periods_indexes = Vec::new();
    if setup.periods.is_ok() {
        for table in ["periods_accounts", "periods_accounts_history"] {
            let (relation, indexes) = measure(pool, table).await?;
            periods.push(relation);
            periods_indexes.extend(indexes);
        }
    }
    Ok(Storage { library, library_indexes, plain, plain_indexes, periods, periods_indexes })
}

/// One table's sizes and its indexes'.
async fn measure(pool: &PgPool, table: &str) -> Result<(Relation, Vec<Relation>), BoxError> {
    let quoted = format!("\"{}\"", table.replace('"', "\"\""));
    let rows: i64 =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {quoted}"))).fetch_one(pool).await?;
    let (bytes, heap_bytes): (i64, i64) =
        sqlx::query_as("SELECT pg_total_relation_size($1::regclass), pg_relation_size($1::regclass)")
            .bind(&quoted)
            .fetch_one(pool)
            .await?;
    let indexes = sqlx::query_as::<_, (String, i64, String)>(
        "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid), pg_get_indexdef(indexrelid)
         FROM pg_index WHERE indrelid = $1::regclass ORDER BY indexrelid::regclass::text",
    )
    .bind(&quoted)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(name, bytes, definition)| Relation { name, rows, bytes, heap_bytes: bytes, definition })
    .collect();
    Ok((Relation { name: table.to_owned(), rows, bytes, heap_bytes, definition: String::new() }, indexes))
}

/// Checks, before measuring, that the contenders hold the same data and the library reads it as
/// the floor and the peers do. Returns one line per check; fails on the first mismatch.
pub(crate) async fn checks(setup: &Setup) -> Result<Vec<String>, BoxError> {
    let pool = &setup.pool;
    let mut lines = Vec::new();
    let mut check = |what: String, library: i64, other: i64| -> Result<(), BoxError> {
        if library != other {
            return Err(
                format!("check failed: {what}: the library returns {library}, expected {other}").into()
            );
        }
        lines.push(format!("{what}: {library} = {other}"));
        Ok(())
    };

    let plain_live: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts_plain").fetch_one(pool).await?;
    check(
        "current entities (library count vs plain rows)".into(),
        Account::query().count(pool).await?,
        plain_live,
    )?;

    let plain_filtered: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts_plain WHERE balance < $1")
        .bind(FILTER_BELOW)
        .fetch_one(pool)
        .await?;
    let library_filtered = Account::query().filter(Account::BALANCE.lt(FILTER_BELOW)).fetch_all(pool).await?;
    check(
        format!("current, balance < {FILTER_BELOW} (library list vs plain)"),
        library_filtered.len() as i64,
        plain_filtered,
    )?;

    let plain_sum: i64 =
        sqlx::query_scalar("SELECT COALESCE(sum(balance), 0)::bigint FROM accounts_plain WHERE balance < $1")
            .bind(FILTER_BELOW)
            .fetch_one(pool)
            .await?;
    let library_sum: i64 = library_filtered.iter().map(|a| a.balance).sum();
    check(format!("current, balance < {FILTER_BELOW}, sum of balances"), library_sum, plain_sum)?;

    for (name, at) in [("as of", setup.as_of), ("as of recent", setup.as_of_recent)] {
        let group_by_as_of: i64 =
            sqlx::query_scalar(GROUP_BY_AS_OF_COUNT).bind(at).bind(FILTER_BELOW).fetch_one(pool).await?;
        let library_as_of =
            Account::query().as_of(at).filter(Account::BALANCE.lt(FILTER_BELOW)).count(pool).await?;
        check(
            format!("{name}, balance < {FILTER_BELOW} (library vs GROUP BY MAX)"),
            library_as_of,
            group_by_as_of,
        )?;
        if setup.periods.is_ok() {
            let periods_as_of: i64 =
                sqlx::query_scalar("SELECT count(*) FROM periods_accounts__as_of($1) WHERE balance < $2")
                    .bind(at)
                    .bind(FILTER_BELOW)
                    .fetch_one(pool)
                    .await?;
            check(
                format!("{name}, balance < {FILTER_BELOW} (library vs periods)"),
                library_as_of,
                periods_as_of,
            )?;
        }
    }

    let sample: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT id, balance FROM accounts_plain ORDER BY id LIMIT 50").fetch_all(pool).await?;
    let mut same = 0;
    for (id, balance) in &sample {
        if Account::find(pool, *id).await?.balance == *balance {
            same += 1;
        }
    }
    check("single reads matching the plain row (of 50)".into(), same, sample.len() as i64)?;
    Ok(lines)
}

/// `GROUP BY entity_id MAX(version)` as of `$1`, filtered on `balance < $2`: a count.
const GROUP_BY_AS_OF_COUNT: &str = r#"SELECT count(*) FROM "accounts" AS a
    JOIN (SELECT "entity_id", MAX("version") AS "version" FROM "accounts" WHERE "valid_from" <= $1 GROUP BY "entity_id") AS m
      ON m."entity_id" = a."entity_id" AND m."version" = a."version"
    WHERE a."deleted_at" IS NULL AND a."balance" < $2"#;

/// The final values after the hot-entity scenario: (library balance, library version, plain balance).
pub(crate) async fn hot_values(pool: &PgPool, hot: Uuid) -> Result<(i64, i64, i64), BoxError> {
    let library = Account::find(pool, hot).await?;
    let plain: i64 = sqlx::query_scalar("SELECT balance FROM accounts_plain WHERE id = $1")
        .bind(hot)
        .fetch_one(pool)
        .await?;
    Ok((library.balance, library.version, plain))
}

/// Drops the benchmark database (after the pools are closed).
pub(crate) async fn drop_database(admin_url: &str) -> Result<(), BoxError> {
    let mut admin = PgConnection::connect(admin_url).await?;
    sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    Ok(())
}

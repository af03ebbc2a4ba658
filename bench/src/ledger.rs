//! What tamper evidence costs: the server's time per version with the hash chain (release 4's
//! machinery) and without it (release 3's, the same insert trigger and write function but for the
//! chain), and how fast verification and a digest run over the data set.

use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};

use crate::BoxError;
use crate::run::median;

/// The last migration of release 3 (the machinery without the hash chain).
const RELEASE_3: i64 = 20261202000000;

/// Server time per version, with and without the hash chain.
pub(crate) struct HashCost {
    /// Versions per DO block.
    pub(crate) per_block: u32,
    /// Rounds (each runs both releases, alternating which goes first).
    pub(crate) rounds: usize,
    /// Median µs per raw insert through the trigger: release 3, release 4.
    pub(crate) insert_us: (f64, f64),
    /// Median µs per update through the write function: release 3, release 4.
    pub(crate) update_us: (f64, f64),
}

/// Verification and digest of the benchmark's table.
pub(crate) struct Verification {
    /// Versions checked.
    pub(crate) versions: u64,
    /// Entities checked.
    pub(crate) entities: u64,
    /// How long verification took.
    pub(crate) elapsed: Duration,
    /// How long a digest took.
    pub(crate) digest: Duration,
    /// Peak RSS growth during verification, in kB (`None`: the peak could not be reset).
    pub(crate) peak_growth_kb: Option<u64>,
}

impl Verification {
    /// Versions verified per second.
    pub(crate) fn per_second(&self) -> f64 {
        self.versions as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Verifies the benchmark's table (it must be intact: the load went through immu's import) and
/// takes a digest, timing both.
pub(crate) async fn verification(pool: &PgPool) -> Result<Verification, BoxError> {
    let reset = crate::scenarios::reset_peak();
    let base = crate::scenarios::status_kb("VmRSS");
    let started = Instant::now();
    let report = immu_core::ledger::verify_table(pool, "accounts").await?;
    let elapsed = started.elapsed();
    let peak_growth_kb = reset.then(|| crate::scenarios::status_kb("VmHWM").saturating_sub(base));
    if !report.is_intact() {
        return Err(format!("the benchmark's table does not verify: {report}").into());
    }
    let started = Instant::now();
    let digest = immu_core::ledger::digest_table(pool, "accounts").await?;
    let digest_time = started.elapsed();
    if digest.entities != report.entities {
        return Err(
            format!("digest of {} entities, verification saw {}", digest.entities, report.entities).into()
        );
    }
    Ok(Verification {
        versions: report.versions,
        entities: report.entities,
        elapsed,
        digest: digest_time,
        peak_growth_kb,
    })
}

/// Measures the server's time per version in two fresh databases on `server`:
/// one at release 3 (no hash chain), one at release 4, each with a versioned `accounts` table.
pub(crate) async fn hash_cost(server: &immu_testdb::TestDatabase, quick: bool) -> Result<HashCost, BoxError> {
    let admin_url = server.url();
    let (per_block, rounds) = if quick { (200u32, 2usize) } else { (5000, 5) };
    let mut pools = Vec::new();
    for (name, release) in [("immu_bench_r3", Some(RELEASE_3)), ("immu_bench_r4", None)] {
        let mut admin = sqlx::PgConnection::connect(admin_url).await?;
        for sql in [format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"), format!("CREATE DATABASE {name}")]
        {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await?;
        }
        admin.close().await?;
        let url = server.url_for(name);
        let pool = PgPoolOptions::new().max_connections(1).connect(&url).await?;
        match release {
            Some(version) => immu_core::MIGRATOR.run_to(version, &pool).await?,
            None => immu_core::MIGRATOR.run(&pool).await?,
        }
        sqlx::raw_sql(
            "CREATE TABLE accounts (owner text NOT NULL, balance bigint NOT NULL);
             SELECT immu.add_versioning('accounts');",
        )
        .execute(&pool)
        .await?;
        pools.push(pool);
    }
    let insert = format!(
        "DO $$ BEGIN FOR i IN 1..{per_block} LOOP
             INSERT INTO accounts (id, entity_id, version, owner, balance) VALUES (gen_random_uuid(), gen_random_uuid(), 1, 'owner ' || i, i);
         END LOOP; END $$"
    );
    let update = format!(
        "DO $$ DECLARE e uuid; BEGIN
             FOR e IN SELECT entity_id FROM accounts_current ORDER BY random() LIMIT {per_block} LOOP
                 PERFORM accounts_immu_write('update', gen_random_uuid(), e, owner => 'changed', balance => 7);
             END LOOP; END $$"
    );
    // One warm-up block each, then the rounds.
    for pool in &pools {
        sqlx::raw_sql(sqlx::AssertSqlSafe(insert.clone())).execute(pool).await?;
    }
    let mut times: [[Vec<f64>; 2]; 2] = Default::default();
    for round in 0..rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for (kind, sql) in [&insert, &update].into_iter().enumerate() {
            for &release in &order {
                let started = Instant::now();
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone())).execute(&pools[release]).await?;
                times[kind][release].push(started.elapsed().as_secs_f64() * 1e6 / per_block as f64);
            }
        }
    }
    for pool in pools {
        pool.close().await;
    }
    let mut admin = sqlx::PgConnection::connect(admin_url).await?;
    for name in ["immu_bench_r3", "immu_bench_r4"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&mut admin)
            .await?;
    }
    admin.close().await?;
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        median(v)
    };
    let [[mut i3, mut i4], [mut u3, mut u4]] = times;
    Ok(HashCost {
        per_block,
        rounds,
        insert_us: (med(&mut i3), med(&mut i4)),
        update_us: (med(&mut u3), med(&mut u4)),
    })
}

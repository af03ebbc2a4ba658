//! The sqlx CLI (`sqlx migrate run`, sqlx-cli) on immu's migrations and an application's, run
//! in-process through the `sqlx-cli` crate: the same code as the `sqlx` binary, with the same
//! arguments a user types.

use clap::Parser as _;
use immu_tests::harness::{Db, TestResult};
use sqlx::{ConnectOptions as _, PgPool};

immu_tests::tests![
    sqlx_cli_runs_immu_then_the_application_each_in_its_table,
    sqlx_cli_without_immus_config_mixes_the_tables,
];

/// immu's migrations and the settings `sqlx::migrate!` reads for them (`immu._migrations`).
const IMMU_MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
const IMMU_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../immu-core/sqlx.toml");
/// The application's migrations: the test tables' (they call `immu.add_versioning`).
const APP_MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");

/// `sqlx <args>`, as the `sqlx` binary runs it (without reading a `.env` file).
async fn sqlx(args: &[&str]) -> TestResult {
    sqlx::any::install_default_drivers();
    let opt = sqlx_cli::Opt::try_parse_from(std::iter::once("sqlx").chain(args.iter().copied()))?;
    sqlx_cli::run(opt).await?;
    Ok(())
}

/// `(version, checksum, success)` of every row of a migrations table.
async fn applied(pool: &PgPool, table: &str) -> sqlx::Result<Vec<(i64, Vec<u8>, bool)>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT version, checksum, success FROM {table} ORDER BY version"
    )))
    .fetch_all(pool)
    .await
}

/// What an embedded migrator would record.
fn expected(migrator: &sqlx::migrate::Migrator) -> Vec<(i64, Vec<u8>, bool)> {
    migrator.iter().map(|m| (m.version, m.checksum.to_vec(), true)).collect()
}

async fn sqlx_cli_runs_immu_then_the_application_each_in_its_table(db: Db) -> TestResult {
    let pool = db.empty_database().await?;
    let url = db.empty_database_options().to_url_lossy().to_string();

    // The documented commands: immu's with immu's config, then the application's with its own
    // (none here: `/dev/null` stands for "no sqlx.toml", whatever the current directory).
    let immu =
        ["migrate", "run", "--config", IMMU_CONFIG, "--source", IMMU_MIGRATIONS, "--database-url", &url];
    let app = ["migrate", "run", "--config", "/dev/null", "--source", APP_MIGRATIONS, "--database-url", &url];
    sqlx(&immu).await?;
    sqlx(&app).await?;

    // Each in its own table, with the same checksums `sqlx::migrate!` computes.
    assert_eq!(applied(&pool, "immu._migrations").await?, expected(&immu_core::MIGRATOR));
    assert_eq!(applied(&pool, "_sqlx_migrations").await?, expected(&immu_tests::MIGRATOR));
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT table_name::text FROM immu.versioned_tables ORDER BY 1")
            .fetch_all(&pool)
            .await?;
    assert!(tables.iter().any(|t| t == "accounts"), "the application's versioned tables: {tables:?}");

    // Both ways agree: running either again, with the CLI or embedded, has nothing to do.
    sqlx(&immu).await?;
    sqlx(&app).await?;
    immu_core::MIGRATOR.run(&pool).await?;
    immu_tests::MIGRATOR.run(&pool).await?;
    assert_eq!(applied(&pool, "immu._migrations").await?, expected(&immu_core::MIGRATOR));
    assert_eq!(applied(&pool, "_sqlx_migrations").await?, expected(&immu_tests::MIGRATOR));

    pool.close().await;
    db.drop_empty_database().await?;
    Ok(())
}

/// `sqlx migrate run --source <source>` with no `sqlx.toml`: tracked in `_sqlx_migrations`.
fn plain_run<'a>(source: &'a str, url: &'a str) -> [&'a str; 8] {
    ["migrate", "run", "--config", "/dev/null", "--source", source, "--database-url", url]
}

/// Without immu's config both folders share `_sqlx_migrations`, and the second run refuses the
/// first's versions unless told `--ignore-missing`: the reason the README's command passes
/// `--config`.
async fn sqlx_cli_without_immus_config_mixes_the_tables(db: Db) -> TestResult {
    let pool = db.empty_database().await?;
    let url = db.empty_database_options().to_url_lossy().to_string();

    sqlx(&plain_run(IMMU_MIGRATIONS, &url)).await?;
    let first = immu_core::MIGRATOR.iter().next().expect("an immu migration").version;
    let err =
        sqlx(&plain_run(APP_MIGRATIONS, &url)).await.expect_err("the application's run sees immu's versions");
    assert_eq!(
        err.to_string(),
        format!("migration {first} was previously applied but is missing in the resolved migrations")
    );

    let mut ignore_missing = plain_run(APP_MIGRATIONS, &url).to_vec();
    ignore_missing.push("--ignore-missing");
    sqlx(&ignore_missing).await?;
    let mut all = expected(&immu_core::MIGRATOR);
    all.extend(expected(&immu_tests::MIGRATOR));
    all.sort();
    assert_eq!(applied(&pool, "_sqlx_migrations").await?, all);

    pool.close().await;
    db.drop_empty_database().await?;
    Ok(())
}

//! A small test harness on libtest-mimic: one PostgreSQL server for the whole run (a throwaway
//! one unless `DATABASE_URL` is set), a migrated template database, and a fresh database cloned
//! from it for every test. The server is stopped and its directory removed when the run ends.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// What a test returns.
pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A registered test: its name and its body.
pub struct Test {
    /// `module::function`.
    pub name: &'static str,
    /// The test body, given a fresh database.
    pub run: fn(Db) -> Pin<Box<dyn Future<Output = TestResult> + Send>>,
}

/// Lists test functions `async fn(Db) -> TestResult` of a module as `pub fn tests() -> Vec<Test>`.
///
/// A function missing from the list is never called, so the compiler's dead-code lint (denied in
/// CI) flags it.
#[macro_export]
macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        /// The tests of this module.
        pub fn tests() -> Vec<$crate::harness::Test> {
            vec![$($crate::harness::Test {
                name: concat!(module_path!(), "::", stringify!($name)),
                run: |db| Box::pin($name(db)),
            }),*]
        }
    };
}

/// The application role the tests run as: the least privileges an application needs, as the
/// README's "Permissions" section grants them (see [`grant_application_role`]).
pub const APP_ROLE: &str = "immu_test_app";

/// A fresh database for one test.
///
/// [`pool`](Self::pool) (the field, and the method for a pool of another size) and [`connect`](Self::connect) act as the
/// application role [`APP_ROLE`], as an application would; [`owner`](Self::owner) and
/// [`connect_owner`](Self::connect_owner) as the tables' owner, for what only the owner may do
/// (raw `UPDATE`s to see the triggers refuse them, `ALTER TABLE`, ...).
#[derive(Clone, Debug)]
pub struct Db {
    /// A pool on the test's database, as the application role.
    pub pool: PgPool,
    /// A pool on the test's database, as the tables' owner.
    pub owner: PgPool,
    /// Connection options of the test's database, as the owner (the application role's
    /// connections take them and `SET ROLE`).
    pub options: PgConnectOptions,
    admin: PgConnectOptions,
    name: String,
}

impl Db {
    /// A new connection to the test's database, outside the pool, as the application role.
    pub async fn connect(&self) -> sqlx::Result<PgConnection> {
        let mut conn = self.options.connect().await?;
        set_app_role(&mut conn).await?;
        Ok(conn)
    }

    /// A new connection to the test's database, as the tables' owner.
    pub async fn connect_owner(&self) -> sqlx::Result<PgConnection> {
        self.options.connect().await
    }

    /// A pool on a second, empty database (no migrations applied), as its owner; dropped after
    /// the test, or by [`drop_empty_database`](Self::drop_empty_database).
    pub async fn empty_database(&self) -> sqlx::Result<PgPool> {
        let name = scratch_name(&self.name);
        let mut admin = self.admin.connect().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await?;
        admin.close().await?;
        PgPoolOptions::new().max_connections(4).connect_with(self.empty_database_options()).await
    }

    /// Connection options of the database of [`empty_database`](Self::empty_database).
    pub fn empty_database_options(&self) -> PgConnectOptions {
        self.admin.clone().database(&scratch_name(&self.name))
    }

    /// Drops the database of [`empty_database`](Self::empty_database) (close its pools first).
    pub async fn drop_empty_database(&self) -> sqlx::Result<()> {
        let mut admin = self.admin.connect().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            scratch_name(&self.name)
        )))
        .execute(&mut admin)
        .await?;
        admin.close().await
    }

    /// A pool of up to `max` connections on the test's database, as the application role.
    pub async fn pool(&self, max: u32) -> sqlx::Result<PgPool> {
        app_pool(&self.options, max).await
    }

    /// Runs `sql` as a superuser (the owner's connection, checked) with every trigger on the
    /// versioned table `table` and its projection disabled, then puts them back as immu keeps
    /// them, in one transaction: what an attacker with the keys to the server does (the tamper
    /// tests).
    pub async fn tamper(&self, table: &str, sql: &str) -> TestResult {
        let mut conn = self.connect_owner().await?;
        let is_super: bool = sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut conn)
            .await?;
        assert!(is_super, "tampering runs as a superuser");
        let mut tx = conn.begin().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE {table} DISABLE TRIGGER ALL; ALTER TABLE {table}_current DISABLE TRIGGER ALL; {sql}; \
             ALTER TABLE {table} ENABLE TRIGGER ALL, ENABLE ALWAYS TRIGGER immu_check_insert, \
                 ENABLE ALWAYS TRIGGER immu_append_only, ENABLE ALWAYS TRIGGER immu_append_only_rows; \
             ALTER TABLE {table}_current ENABLE TRIGGER ALL, ENABLE ALWAYS TRIGGER immu_projection;"
        )))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A pool whose connections act as [`APP_ROLE`].
async fn app_pool(options: &PgConnectOptions, max: u32) -> sqlx::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max)
        .after_connect(|conn, _| Box::pin(set_app_role(conn)))
        .connect_with(options.clone())
        .await
}

async fn set_app_role(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET ROLE {APP_ROLE}"))).execute(conn).await?;
    Ok(())
}

/// Creates [`APP_ROLE`] if it does not exist (roles belong to the server, not a database).
pub async fn create_application_role(admin: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DO $$ BEGIN CREATE ROLE {APP_ROLE} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )))
    .execute(admin)
    .await?;
    Ok(())
}

/// Grants `role` what the README's "Permissions" section says an application needs, on every
/// versioned table of the database: `USAGE` on the schema, `SELECT` and `INSERT` on each history
/// table, `SELECT` on each projection. (`EXECUTE` on the generated routines and `USAGE` on schema
/// `immu` are PostgreSQL's and immu's defaults for `PUBLIC`.)
pub async fn grant_application_role(conn: &mut PgConnection, role: &str) -> sqlx::Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT USAGE ON SCHEMA public TO {role};
         DO $$ DECLARE t record; BEGIN
             FOR t IN SELECT table_name, projection FROM immu.versioned_tables LOOP
                 EXECUTE format('GRANT SELECT, INSERT ON %s TO {role}', t.table_name);
                 EXECUTE format('GRANT SELECT ON %s TO {role}', t.projection);
             END LOOP;
         END $$;"
    )))
    .execute(conn)
    .await?;
    Ok(())
}

struct Context {
    admin: PgConnectOptions,
    counter: AtomicUsize,
    template: String,
}

const TEMPLATE: &str = "immu_test_template";

/// Runs `tests` under libtest-mimic's command line (`cargo test --test db -- <filter>`).
pub fn main(tests: Vec<Test>) -> ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    if args.list {
        let trials =
            tests.into_iter().map(|t| libtest_mimic::Trial::test(display_name(t.name), || Ok(()))).collect();
        return libtest_mimic::run(&args, trials).exit_code();
    }
    let builder = immu_testdb::TempPostgres::builder().setting("max_connections", "300");
    let server = match immu_testdb::TestDatabase::from_env_or(builder) {
        Ok(server) => server,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let url = server.url().to_owned();
    let context = match runtime().block_on(Context::new(&url)) {
        Ok(context) => Arc::new(context),
        Err(err) => {
            eprintln!("error: preparing the template database on {url}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let trials = tests
        .into_iter()
        .map(|test| {
            let context = Arc::clone(&context);
            libtest_mimic::Trial::test(display_name(test.name), move || {
                runtime().block_on(context.run(test)).map_err(|e| e.to_string().into())
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if let Err(err) = runtime().block_on(context.drop_template()) {
        eprintln!("warning: dropping the template database: {err}");
    }
    if let Err(err) = server.stop() {
        eprintln!("warning: stopping the test server: {err}");
    }
    conclusion.exit_code()
}

fn scratch_name(test_database: &str) -> String {
    format!("{test_database}_empty")
}

fn display_name(name: &str) -> String {
    name.split_once("::").map_or(name, |(_, rest)| rest).to_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

impl Context {
    async fn new(url: &str) -> Result<Context, Box<dyn std::error::Error>> {
        let admin: PgConnectOptions = url.parse()?;
        let template = format!("{TEMPLATE}_{}", std::process::id());
        let mut conn = admin.connect().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {template}")))
            .execute(&mut conn)
            .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {template}"))).execute(&mut conn).await?;
        conn.close().await?;
        let mut conn = admin.clone().database(&template).connect().await?;
        immu_core::MIGRATOR.run(&mut conn).await?;
        crate::MIGRATOR.run(&mut conn).await?;
        create_application_role(&mut conn).await?;
        grant_application_role(&mut conn, APP_ROLE).await?;
        conn.close().await?;
        Ok(Context { admin, counter: AtomicUsize::new(0), template })
    }

    async fn run(&self, test: Test) -> TestResult {
        let name = format!("{}_{}", self.template, self.counter.fetch_add(1, Ordering::Relaxed));
        let mut admin = self.admin.connect().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name} TEMPLATE {}", self.template)))
            .execute(&mut admin)
            .await?;
        let options = self.admin.clone().database(&name);
        let pool = app_pool(&options, 8).await?;
        let owner = PgPoolOptions::new().max_connections(4).connect_with(options.clone()).await?;
        let db = Db {
            pool: pool.clone(),
            owner: owner.clone(),
            options,
            admin: self.admin.clone(),
            name: name.clone(),
        };
        let outcome = (test.run)(db).await;
        pool.close().await;
        owner.close().await;
        for database in [name.clone(), scratch_name(&name)] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")))
                .execute(&mut admin)
                .await?;
        }
        outcome
    }

    async fn drop_template(&self) -> sqlx::Result<()> {
        let mut admin = self.admin.connect().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.template)))
            .execute(&mut admin)
            .await?;
        Ok(())
    }
}

/// A connection that counts the statements run through it: proves that a batch form is one
/// query, not one per entity.
///
/// ```ignore
/// let mut counted = Counted::new(&db).await?;
/// Account::query().ids(ids).fetch_all(counted.exec()).await?;
/// assert_eq!(counted.queries(), 1);
/// ```
pub struct Counted {
    conn: PgConnection,
    queries: AtomicUsize,
}

impl Counted {
    /// A new connection to the test's database, with the count at zero.
    pub async fn new(db: &Db) -> sqlx::Result<Counted> {
        Ok(Counted { conn: db.connect().await?, queries: AtomicUsize::new(0) })
    }

    /// An executor for one call; every statement it runs is counted.
    pub fn exec(&mut self) -> CountingExecutor<'_> {
        CountingExecutor { conn: &mut self.conn, queries: &self.queries }
    }

    /// Statements run so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// The executor of [`Counted::exec`].
#[derive(Debug)]
pub struct CountingExecutor<'c> {
    conn: &'c mut PgConnection,
    queries: &'c AtomicUsize,
}

impl<'c> sqlx::Executor<'c> for CountingExecutor<'c> {
    type Database = sqlx::Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures_util::stream::BoxStream<
        'e,
        Result<sqlx::Either<sqlx::postgres::PgQueryResult, sqlx::postgres::PgRow>, sqlx::Error>,
    >
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, sqlx::Postgres>,
    {
        self.queries.fetch_add(1, Ordering::SeqCst);
        self.conn.fetch_many(query)
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures_util::future::BoxFuture<'e, Result<Option<sqlx::postgres::PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, sqlx::Postgres>,
    {
        self.queries.fetch_add(1, Ordering::SeqCst);
        self.conn.fetch_optional(query)
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [sqlx::postgres::PgTypeInfo],
    ) -> futures_util::future::BoxFuture<'e, Result<sqlx::postgres::PgStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        self.conn.prepare_with(sql, parameters)
    }

    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> futures_util::future::BoxFuture<'e, Result<sqlx::Describe<sqlx::Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.conn.describe(sql)
    }
}

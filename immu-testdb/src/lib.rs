//! Throwaway PostgreSQL servers for tests, demos and benchmarks, started
//! from the locally installed PostgreSQL binaries: no Docker, no downloads.
//!
//! [`TempPostgres::start`] creates a fresh cluster in a new temporary
//! directory (`initdb`), starts a server on a free port of `127.0.0.1`
//! (`pg_ctl`) and returns once it accepts connections, typically in well
//! under a second. Dropping the [`TempPostgres`] stops the server and
//! removes the directory; a watchdog process does the same if the owning
//! process dies without dropping it (panic, `exit`, SIGKILL, Ctrl-C).
//!
//! It works when running as root, where PostgreSQL itself refuses to run:
//! the binaries are then run as the `postgres` OS user.
//!
//! [`TestDatabase::from_env`] uses the server named by `DATABASE_URL`
//! instead when that is set, so the same tests run against a CI service
//! container or a local throwaway server.
//!
//! # Example
//!
//! ```
//! use immu_testdb::TempPostgres;
//!
//! # fn main() -> Result<(), immu_testdb::Error> {
//! let pg = TempPostgres::start()?;
//! // postgres://postgres@127.0.0.1:PORT/postgres; trust authentication
//! let url = pg.url().to_owned();
//! assert!(url.starts_with("postgres://postgres@127.0.0.1:"));
//! // ... connect with sqlx, psql, ... ...
//! let data_dir = pg.data_dir().to_path_buf();
//! pg.stop()?; // or just drop it
//! assert!(!data_dir.exists());
//! # Ok(())
//! # }
//! ```
//!
//! Durable settings and extra server settings:
//!
//! ```no_run
//! # fn main() -> Result<(), immu_testdb::Error> {
//! let pg = immu_testdb::TempPostgres::builder()
//!     .fsync(true) // crash tests, benchmarks
//!     .setting("max_connections", "500")
//!     .start()?;
//! pg.pg_ctl(&["stop", "-m", "immediate"])?; // simulate a crash
//! pg.restart()?; // crash recovery, same port
//! # Ok(())
//! # }
//! ```
//!
//! # Requirements
//!
//! The PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`); see
//! [`TempPostgres`] for where they are looked for and the `IMMU_PG_BIN`
//! override. Without them, starting fails with [`Error::NotInstalled`],
//! which says how to install them.

mod database;
mod error;
mod locate;
mod server;
mod url;

pub use database::TestDatabase;
pub use error::Error;
pub use server::{Builder, TempPostgres};

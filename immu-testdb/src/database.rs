//! [`TestDatabase`]: an existing server from `DATABASE_URL`, or a throwaway one.

use crate::url::with_database;
use crate::{Builder, Error, TempPostgres};

/// The environment variable naming an existing server.
const DATABASE_URL: &str = "DATABASE_URL";

/// A database to run tests, demos or benchmarks against: the server named
/// by `DATABASE_URL` if that is set, otherwise a throwaway
/// [`TempPostgres`].
///
/// ```no_run
/// use immu_testdb::TestDatabase;
///
/// let db = TestDatabase::from_env()?;
/// println!("connect to {}", db.url());
/// // a throwaway server (if any) is stopped and removed when `db` is dropped
/// # Ok::<(), immu_testdb::Error>(())
/// ```
#[derive(Debug)]
pub enum TestDatabase {
    /// An existing server, from `DATABASE_URL`; nothing was started and
    /// nothing is cleaned up.
    External(String),
    /// A throwaway server started for this value.
    Temp(TempPostgres),
}

impl TestDatabase {
    /// `DATABASE_URL` if it is set and non-empty, otherwise a throwaway
    /// server with default settings.
    ///
    /// # Errors
    ///
    /// See [`Builder::start`].
    pub fn from_env() -> Result<Self, Error> {
        Self::from_env_or(TempPostgres::builder())
    }

    /// `DATABASE_URL` if it is set and non-empty, otherwise a throwaway
    /// server started from `builder`.
    ///
    /// # Errors
    ///
    /// See [`Builder::start`].
    pub fn from_env_or(builder: Builder) -> Result<Self, Error> {
        match std::env::var(DATABASE_URL) {
            Ok(url) if !url.trim().is_empty() => Ok(Self::External(url.trim().to_owned())),
            _ => builder.start().map(Self::Temp),
        }
    }

    /// The connection URL.
    pub fn url(&self) -> &str {
        match self {
            Self::External(url) => url,
            Self::Temp(pg) => pg.url(),
        }
    }

    /// The connection URL with the database replaced by `database` (same
    /// server, user and options). The database must exist.
    pub fn url_for(&self, database: &str) -> String {
        match self {
            Self::External(url) => with_database(url, database),
            Self::Temp(pg) => pg.url_for(database),
        }
    }

    /// The throwaway server, if one was started.
    pub fn temp(&self) -> Option<&TempPostgres> {
        match self {
            Self::External(_) => None,
            Self::Temp(pg) => Some(pg),
        }
    }

    /// Whether this is a throwaway server started for this value.
    pub fn is_temp(&self) -> bool {
        matches!(self, Self::Temp(_))
    }

    /// Stops and removes the throwaway server, if one was started, reporting
    /// any error (dropping does the same silently). Nothing happens for an
    /// external server.
    ///
    /// # Errors
    ///
    /// See [`TempPostgres::stop`].
    pub fn stop(self) -> Result<(), Error> {
        match self {
            Self::External(_) => Ok(()),
            Self::Temp(pg) => pg.stop(),
        }
    }
}

//! The crate's error type.

use std::fmt;
use std::io;

/// Everything that can go wrong while starting, controlling or stopping a
/// throwaway PostgreSQL server.
///
/// The [`Display`](fmt::Display) output is meant to be shown to a human as
/// is: it says what failed and, where possible, how to fix it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The PostgreSQL server binaries (`initdb`, `pg_ctl`) could not be
    /// found. Displayed as a single line that says how to install them.
    NotInstalled {
        /// Where the binaries were looked for, as a human readable phrase
        /// (for example `on PATH, in /usr/lib/postgresql/*/bin or in /usr/local/pgsql/bin`).
        searched: String,
    },
    /// The process runs as root (PostgreSQL refuses to run as root) and
    /// there is no way to run the server as the `postgres` OS user.
    NoPostgresUser {
        /// What exactly is missing.
        detail: String,
    },
    /// A setting passed to [`Builder::setting`](crate::Builder::setting) is
    /// not acceptable.
    InvalidSetting {
        /// The setting's name.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// An I/O operation failed (creating the temporary directory, spawning
    /// a process, ...).
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A helper program (`initdb`, `pg_ctl`, ...) exited unsuccessfully.
    Command {
        /// The command line that failed.
        command: String,
        /// How it exited.
        status: String,
        /// Its combined standard output and standard error.
        output: String,
    },
    /// The server did not start.
    StartFailed {
        /// How many times starting was attempted (a start is retried with a
        /// new port when the chosen port was taken in the meantime).
        attempts: u32,
        /// The output of the failed `pg_ctl start`.
        detail: String,
        /// The last lines of the server log.
        log_tail: String,
    },
    /// The server or its directory could not be cleaned up completely.
    Cleanup {
        /// What is left over and why.
        detail: String,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInstalled { searched } => write!(
                f,
                "PostgreSQL server binaries (initdb, pg_ctl) not found {searched}: install them \
                 (Debian/Ubuntu: apt-get install -y postgresql; macOS: brew install postgresql@16) \
                 or set IMMU_PG_BIN to their directory, or set DATABASE_URL to an existing server"
            ),
            Self::NoPostgresUser { detail } => write!(
                f,
                "running as root, but PostgreSQL refuses to run as root and {detail}; \
                 or set DATABASE_URL to an existing server"
            ),
            Self::InvalidSetting { name, reason } => {
                write!(f, "invalid PostgreSQL setting {name:?}: {reason}")
            }
            Self::Io { context, source } => write!(f, "{context}: {source}"),
            Self::Command { command, status, output } => {
                write!(f, "`{command}` failed ({status})")?;
                if !output.is_empty() {
                    write!(f, ":\n{output}")?;
                }
                Ok(())
            }
            Self::StartFailed { attempts, detail, log_tail } => {
                write!(
                    f,
                    "PostgreSQL server failed to start ({attempts} attempt{})",
                    if *attempts == 1 { "" } else { "s" }
                )?;
                if !detail.is_empty() {
                    write!(f, ":\n{detail}")?;
                }
                if !log_tail.is_empty() {
                    write!(f, "\n--- tail of the server log ---\n{log_tail}")?;
                }
                Ok(())
            }
            Self::Cleanup { detail } => {
                write!(f, "cleanup of the throwaway server failed: {detail}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

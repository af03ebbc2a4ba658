//! Errors: one enum for every way an immu call can fail.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The SQLSTATE raised by immu's append-only trigger (see `migrations/`).
pub const APPEND_ONLY_SQLSTATE: &str = "IMMU1";

/// The SQLSTATE raised by a versioned table's insert check (a row that would break the history).
pub const INVALID_HISTORY_SQLSTATE: &str = "IMMU2";

/// The SQLSTATE raised when a versioned table's columns or triggers no longer match the machinery
/// immu generated for it ([`Error::SchemaDrift`]).
pub const SCHEMA_DRIFT_SQLSTATE: &str = "IMMU3";

/// The SQLSTATE raised when immu refuses to write because another role could run code inside its
/// machinery ([`Error::UnsafeSetup`]).
pub const UNSAFE_SETUP_SQLSTATE: &str = "IMMU4";

/// The SQLSTATE raised when a version of a table that requires an actor has none
/// ([`Error::ActorRequired`]).
pub const ACTOR_REQUIRED_SQLSTATE: &str = "IMMU5";

/// Everything that can go wrong in an immu call.
///
/// A failed call writes nothing: writes run in their own transaction (or a savepoint of yours),
/// which is rolled back on any error. The one exception says so: [`Error::OutcomeUnknown`], a
/// write whose connection broke before immu could learn whether it committed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The entity never existed (or, for as-of reads, did not exist yet at that instant; for
    /// [`find_version`](crate::Immutable::find_version), that version does not exist).
    #[error("{table}: no entity {entity_id}{}", version.map(|v| format!(" at version {v}")).unwrap_or_default())]
    NotFound {
        /// Table of the entity.
        table: &'static str,
        /// The entity looked for.
        entity_id: Uuid,
        /// The version asked for, if a specific one was.
        version: Option<i64>,
    },

    /// The entity is deleted (at the instant asked for): its latest version is a tombstone.
    /// Reads report it instead of returning the tombstone's data; update and delete refuse it.
    #[error("{table}: entity {entity_id} is deleted (tombstone version {version}, deleted at {deleted_at})")]
    Deleted {
        /// Table of the entity.
        table: &'static str,
        /// The deleted entity.
        entity_id: Uuid,
        /// Version number of the tombstone.
        version: i64,
        /// When it was deleted.
        deleted_at: DateTime<Utc>,
    },

    /// `undelete` of an entity that is not deleted.
    #[error(
        "{table}: entity {entity_id} is not deleted (current version {version}); only a deleted entity can be undeleted"
    )]
    NotDeleted {
        /// Table of the entity.
        table: &'static str,
        /// The live entity.
        entity_id: Uuid,
        /// Its current version.
        version: i64,
    },

    /// The entity's current version is not the one the write was based on: another writer
    /// appended a version first. Nothing was written; re-read and retry.
    ///
    /// Raised by optimistic writes ([`update_if_version`](crate::Immutable::update_if_version),
    /// [`Versioned::save`](crate::Versioned::save)) when the version moved, and by any write
    /// whose version number was taken meanwhile (`actual` is `None` then): for example a write
    /// inside a `REPEATABLE READ` or `SERIALIZABLE` transaction whose snapshot predates another
    /// writer's commit. Retry the whole transaction in that case.
    #[error(
        "{table}: version conflict on entity {entity_id}: {}",
        match (expected, actual) {
            (Some(expected), Some(actual)) => format!("the write expected version {expected} to be current, but it is {actual}"),
            (_, Some(actual)) => format!("the current version changed to {actual} under the write"),
            (_, None) => "a newer version was committed concurrently (by another transaction after this transaction's REPEATABLE READ or SERIALIZABLE snapshot was taken, or by a writer that bypassed the entity lock); retry the transaction".to_owned(),
        }
    )]
    VersionConflict {
        /// Table of the entity.
        table: &'static str,
        /// The entity written to.
        entity_id: Uuid,
        /// The version the write expected to be current, for optimistic writes.
        expected: Option<i64>,
        /// The actual current version, when this transaction can see it.
        actual: Option<i64>,
    },

    /// The database refused an `UPDATE`, `DELETE` or `TRUNCATE` of a versioned table, or any
    /// direct change of its projection table (`<table>_current`), which only the versioned
    /// table's trigger writes (SQLSTATE `IMMU1` for both).
    ///
    /// Converting a [`sqlx::Error`] with `Error::from` recognizes this refusal, so raw SQL run
    /// through sqlx can report it too.
    #[error("{operation} on {table:?} refused: the table is append-only (immu keeps every version)")]
    AppendOnly {
        /// The table, as the database reported it.
        table: String,
        /// `UPDATE`, `DELETE` or `TRUNCATE` (or `INSERT`, for a projection table).
        operation: String,
    },

    /// A table or column name that immu cannot use.
    #[error("invalid identifier {name:?}: {reason}")]
    InvalidIdentifier {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// The database refused a reference to an entity that does not exist: a foreign key
    /// (`#[immu(references = ...)]`) to the referenced entity's projection table.
    #[error("{table}: {constraint} refused the reference: {detail}")]
    UnknownReference {
        /// The referring table.
        table: String,
        /// The foreign key constraint.
        constraint: String,
        /// PostgreSQL's detail, naming the missing entity id.
        detail: String,
    },

    /// The entity's write lock could not be taken in time: the wait ran into `lock_timeout` or
    /// `statement_timeout`. Nothing was written (immu checked: a write that committed before the
    /// timeout hit is reported as written); another writer held the entity that long.
    #[error(
        "{table}: timed out waiting for the write lock of entity {entity_id} (lock_timeout or statement_timeout); nothing was written"
    )]
    LockTimeout {
        /// Table of the entity.
        table: &'static str,
        /// The entity.
        entity_id: Uuid,
    },

    /// A statement was canceled: `statement_timeout` expired, or someone called
    /// `pg_cancel_backend`. Nothing of the failed call was written (for a write, immu checked: one
    /// that committed before the cancel hit is reported as written).
    #[error("statement canceled: {message}")]
    Canceled {
        /// PostgreSQL's message.
        message: String,
    },

    /// PostgreSQL refused a value (SQLSTATE class 22, data exception): a NUL byte in text, a
    /// number or timestamp out of range, a string too long for its column, ...
    #[error("invalid value: {message}")]
    InvalidValue {
        /// The SQLSTATE.
        code: String,
        /// PostgreSQL's message.
        message: String,
    },

    /// The database refused a version row that would break the history: a skipped or repeated
    /// version number, a `valid_from` earlier than the previous version's, infinite or beyond
    /// year 262142 (chrono's range), a tombstone not stamped at its `valid_from`. Only raw SQL
    /// that bypasses immu can cause it.
    #[error("{table}: {message}")]
    InvalidHistory {
        /// The versioned table.
        table: String,
        /// What is wrong, as the database's check reported it.
        message: String,
    },

    /// The caller's transaction conflicted with a concurrent one: a serialization failure under
    /// `SERIALIZABLE` or `REPEATABLE READ` (SQLSTATE 40001) or a deadlock (40P01). Roll the whole
    /// transaction back and retry it.
    #[error("transaction conflict ({code}): {message}; roll back and retry the transaction")]
    SerializationFailure {
        /// The SQLSTATE.
        code: String,
        /// PostgreSQL's message.
        message: String,
    },

    /// A column name given at runtime (for example to
    /// [`Query::order_by_name`](crate::Query::order_by_name)) that the entity does not have.
    #[error("{table} has no column {column:?}")]
    UnknownColumn {
        /// Table of the entity.
        table: &'static str,
        /// The name given.
        column: String,
    },

    /// The versioned table does not exist: its migration has not run.
    #[error(
        "table {table:?} does not exist: create it with the DDL from immu_core::schema::create_table::<T>() in a migration"
    )]
    MissingTable {
        /// The missing table.
        table: String,
    },

    /// A write whose outcome immu cannot know: its connection broke (or its check was cut short)
    /// after the write was sent, and the write may or may not have committed. It is never
    /// reported as "nothing written", and retrying it blindly could store it twice.
    ///
    /// Find out with [`Immutable::find_write`](crate::Immutable::find_write)`(db, entity_id,
    /// version_id)`: the version row id is the one the write carried. After a broken connection
    /// the server may still be finishing the write for a moment (until it notices the client is
    /// gone), so a "not stored" answer is final only once that session has ended.
    #[error(
        "{table}: the outcome of the write of version row {version_id} (entity {entity_id}) is unknown: {source}; it may or may not be stored, look it up with find_write"
    )]
    OutcomeUnknown {
        /// Table of the entity.
        table: &'static str,
        /// The entity written to.
        entity_id: Uuid,
        /// The id of the version row the write appends, if it committed.
        version_id: Uuid,
        /// What went wrong.
        source: Box<sqlx::Error>,
    },

    /// A versioned table's columns or triggers no longer match its machinery, or the entity's
    /// struct no longer matches the table: the database refused to write (SQLSTATE `IMMU3`, after
    /// an `ALTER TABLE` without `immu.sync_versioning`), or
    /// [`schema::check`](crate::schema::check) found a difference. Each difference comes with
    /// the SQL that fixes it.
    #[error("{table}: schema drift: {}", differences.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    SchemaDrift {
        /// The versioned table.
        table: String,
        /// What differs, and how to fix it.
        differences: Vec<crate::schema::Difference>,
    },

    /// immu refused to write because a role other than the table's owner could run code inside
    /// its machinery: it may create triggers on the table or its projection (the TRIGGER
    /// privilege, often granted by `GRANT ALL`), or a trigger that is not immu's could change the
    /// rows immu writes (SQLSTATE `IMMU4`). `problems` says what, `fix` the SQL that fixes it all.
    #[error("{table}: immu refuses to write: {}. {fix}", problems.join("; "))]
    UnsafeSetup {
        /// The versioned table.
        table: String,
        /// What is unsafe, one line each.
        problems: Vec<String>,
        /// What to do about it: the statements to run as the table's owner.
        fix: String,
    },

    /// A write routine immu generates for the table does not exist with the arguments immu
    /// passes: the table was never made versioned, its machinery is from another release of
    /// immu, or its columns differ from the struct's. [`schema::check`](crate::schema::check)
    /// says which, with the fix.
    #[error(
        "{table}: immu's write routines do not match this table ({message}); run immu_core::schema::check to see why"
    )]
    MachineryMismatch {
        /// The versioned table.
        table: &'static str,
        /// PostgreSQL's message.
        message: String,
    },

    /// The database refused the statement for lack of a privilege (SQLSTATE 42501): for example
    /// an application role writing the projection, or updating a versioned table, which it has no
    /// privilege to do (see the README's "Permissions").
    #[error("permission denied: {message}")]
    PermissionDenied {
        /// PostgreSQL's message (`permission denied for table accounts_current`).
        message: String,
    },

    /// The table requires an actor on every version
    /// (`immu.configure_versioning(t, require_actor => true)`), and the write gave none: no
    /// [`Audit`](crate::Audit) actor in scope and no `immu.actor` setting in its transaction.
    /// Nothing was written.
    #[error("{table} requires an actor on every version, and the write has none: {message}")]
    ActorRequired {
        /// The table.
        table: String,
        /// PostgreSQL's message.
        message: String,
    },

    /// Any other database or driver error.
    #[error(transparent)]
    Database(sqlx::Error),
}

impl Error {
    /// Whether retrying the operation (or the caller's whole transaction) may succeed: version
    /// conflicts, lock and statement timeouts, cancels, serialization failures and deadlocks;
    /// each guarantees that the failed call wrote nothing. [`Error::OutcomeUnknown`] is not
    /// retryable: find out first ([`Immutable::find_write`](crate::Immutable::find_write)).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::VersionConflict { .. }
                | Error::LockTimeout { .. }
                | Error::Canceled { .. }
                | Error::SerializationFailure { .. }
        )
    }

    /// Whether this is [`Error::OutcomeUnknown`]: a write that may or may not have been stored.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown { .. })
    }

    /// Whether this is [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// Whether this is [`Error::Deleted`].
    pub fn is_deleted(&self) -> bool {
        matches!(self, Error::Deleted { .. })
    }

    /// Reports a missing projection table (`<table>_current`) of versioned table `table` as
    /// `table` missing: both come from the same DDL, and the user knows the versioned one.
    pub(crate) fn missing_projection_of(self, table: &'static str) -> Error {
        match self {
            Error::MissingTable { table: missing } if missing == crate::sql::current_table_name(table) => {
                Error::MissingTable { table: table.to_owned() }
            }
            other => other,
        }
    }
}

impl From<sqlx::Error> for Error {
    /// Wraps a sqlx error, recognizing immu's append-only refusal and missing tables.
    fn from(err: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &err {
            let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
            match db.code().as_deref() {
                Some(APPEND_ONLY_SQLSTATE) => {
                    let table = pg.and_then(|e| e.table()).unwrap_or_default().to_owned();
                    let operation = db.message().split_whitespace().next().unwrap_or_default().to_owned();
                    return Error::AppendOnly { table, operation };
                }
                Some(INVALID_HISTORY_SQLSTATE) => {
                    let table = pg.and_then(|e| e.table()).unwrap_or_default().to_owned();
                    return Error::InvalidHistory { table, message: db.message().to_owned() };
                }
                Some(ACTOR_REQUIRED_SQLSTATE) => {
                    let table = pg.and_then(|e| e.table()).unwrap_or_default().to_owned();
                    return Error::ActorRequired { table, message: db.message().to_owned() };
                }
                Some(SCHEMA_DRIFT_SQLSTATE) => {
                    let table = pg.and_then(|e| e.table()).unwrap_or_default().to_owned();
                    let fix = pg.and_then(|e| e.hint()).unwrap_or_default();
                    let differences = pg
                        .and_then(|e| e.detail())
                        .unwrap_or(db.message())
                        .lines()
                        .map(|line| crate::schema::Difference::new(line, fix))
                        .collect();
                    return Error::SchemaDrift { table, differences };
                }
                Some(UNSAFE_SETUP_SQLSTATE) => {
                    let table = pg.and_then(|e| e.table()).unwrap_or_default().to_owned();
                    let problems = pg
                        .and_then(|e| e.detail())
                        .unwrap_or(db.message())
                        .lines()
                        .map(str::to_owned)
                        .collect();
                    let fix = pg.and_then(|e| e.hint()).unwrap_or_default().to_owned();
                    return Error::UnsafeSetup { table, problems, fix };
                }
                Some("57014") => return Error::Canceled { message: db.message().to_owned() },
                Some(code @ ("40001" | "40P01")) => {
                    return Error::SerializationFailure {
                        code: code.to_owned(),
                        message: db.message().to_owned(),
                    };
                }
                Some("23514") if db.constraint().is_some_and(|c| c.starts_with("immu_")) => {
                    let table = pg.and_then(|e| e.table()).unwrap_or_default().to_owned();
                    let constraint = db.constraint().unwrap_or_default();
                    return Error::InvalidHistory {
                        table,
                        message: format!("{} ({constraint})", db.message()),
                    };
                }
                Some(code) if code.starts_with("22") => {
                    return Error::InvalidValue { code: code.to_owned(), message: db.message().to_owned() };
                }
                Some("23503") => {
                    return Error::UnknownReference {
                        table: db.table().unwrap_or_default().to_owned(),
                        constraint: db.constraint().unwrap_or_default().to_owned(),
                        detail: pg.and_then(|e| e.detail()).unwrap_or_default().to_owned(),
                    };
                }
                Some("42501") => return Error::PermissionDenied { message: db.message().to_owned() },
                // A TRUNCATE stopped by the anchor of a versioned table (an empty table of schema
                // immu whose foreign keys keep the history and the projection from being truncated).
                Some("0A000")
                    if db.message().starts_with("cannot truncate a table referenced in a foreign key")
                        && pg.and_then(|e| e.detail()).is_some_and(|d| d.starts_with("Table \"anchor_")) =>
                {
                    let table =
                        pg.and_then(|e| e.detail()).and_then(|d| d.split('"').nth(3)).unwrap_or_default();
                    return Error::AppendOnly { table: table.to_owned(), operation: "TRUNCATE".to_owned() };
                }
                Some("42P01") => {
                    // undefined_table: `relation "accounts" does not exist`
                    let table = db.message().split('"').nth(1).unwrap_or_default().to_owned();
                    return Error::MissingTable { table };
                }
                _ => {}
            }
        }
        Error::Database(err)
    }
}

/// Turns "not found" and "deleted" into `Ok(None)`, like diesel's `OptionalExtension`.
///
/// ```no_run
/// # use immu_core::{Immutable, OptionalExt};
/// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String }
/// # async fn demo(pool: sqlx::PgPool, id: uuid::Uuid) -> immu_core::Result<()> {
/// match Account::find(&pool, id).await.optional()? {
///     Some(account) => println!("{} at version {}", account.owner, account.version),
///     None => println!("no such account (or deleted)"),
/// }
/// # Ok(()) }
/// ```
pub trait OptionalExt<T> {
    /// `Ok(None)` for [`Error::NotFound`] and [`Error::Deleted`]; other errors pass through.
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExt<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(Error::NotFound { .. } | Error::Deleted { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }
}

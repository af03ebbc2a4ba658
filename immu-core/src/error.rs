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
///
/// Which calls answer [`NotFound`](Error::NotFound) and [`Deleted`](Error::Deleted), and which
/// answer with an empty list or `None` instead, is one rule: the crate docs'
/// [Answers](crate#answers). Whether to try again is one question:
/// [`is_retryable`](Error::is_retryable).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The entity never existed (or, for as-of reads, did not exist yet at that instant; for
    /// [`find_version`](crate::Immutable::find_version), that version does not exist). Only
    /// calls that name one entity answer it (see [Answers](crate#answers)); lists leave the
    /// entity out.
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
    /// Reads of one entity at an instant report it instead of returning the tombstone's data;
    /// update and delete refuse it. Lists leave the entity out unless
    /// [`with_deleted`](crate::Query::with_deleted) (see [Answers](crate#answers)).
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
    /// whose version number was taken meanwhile by a writer that bypassed the entity's lock (raw
    /// SQL; `actual` is `None` then). A write inside a `REPEATABLE READ` or `SERIALIZABLE`
    /// transaction whose snapshot predates another writer's commit is
    /// [`SerializationFailure`](Error::SerializationFailure) instead, like every SQLSTATE 40001.
    #[error(
        "{table}: version conflict on entity {entity_id}: {}",
        match (expected, actual) {
            (Some(expected), Some(actual)) => format!("the write expected version {expected} to be current, but it is {actual}"),
            (_, Some(actual)) => format!("the current version changed to {actual} under the write"),
            (_, None) => "a newer version was committed concurrently (by a writer that bypassed the entity lock); re-read and retry".to_owned(),
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

    /// The transaction conflicted with a concurrent one: a serialization failure under
    /// `SERIALIZABLE` or `REPEATABLE READ` (SQLSTATE 40001, every one of them, including a write
    /// whose snapshot predates another writer's version of the entity) or a deadlock (40P01).
    /// Roll the whole transaction back and retry it (a write outside a transaction of yours was
    /// its own transaction: retry the call).
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

    /// A partial update ([`patch`](crate::Immutable::patch)) of an entity whose latest version was
    /// written by an older shape of an entity that upcasts it: patching columns in place would
    /// change columns that version is not read by. Nothing was written; read, convert and write it
    /// with [`modify`](crate::Immutable::modify) (or [`update`](crate::Immutable::update)), which
    /// writes the current shape, then patch.
    #[error(
        "{table}: version {version} of entity {entity_id} has shape {shape}, older than the entity's; patch it after a modify or update writes the current shape"
    )]
    OlderShape {
        /// Table of the entity.
        table: &'static str,
        /// The entity.
        entity_id: Uuid,
        /// Its latest version.
        version: i64,
        /// The shape that wrote it.
        shape: i32,
    },

    /// A change feed refused a cursor or a server ([`FeedError`](crate::feed::FeedError)):
    /// a cursor text that does not parse, a cursor from another server, a standby.
    #[error(transparent)]
    Feed(#[from] crate::feed::FeedError),

    /// A [digest](crate::ledger::Digest) that cannot be checked: not a digest's text, of another
    /// table, or of a hash encoding this immu_core does not know.
    #[error("invalid digest: {reason}")]
    InvalidDigest {
        /// What is wrong with it.
        reason: String,
    },

    /// A call that reads in a transaction of its own (a `REPEATABLE READ` snapshot:
    /// [`Immutable::verify`](crate::Immutable::verify), [`Immutable::digest`](crate::Immutable::digest))
    /// was given a connection inside a transaction. Nothing was read, and the caller's
    /// transaction is untouched: call it on a pool, or on a connection outside a transaction.
    #[error(
        "{operation} reads in a transaction of its own: call it on a pool or a connection outside a transaction"
    )]
    InTransaction {
        /// What was called.
        operation: &'static str,
    },

    /// Text that is not a PostgreSQL snapshot (`xmin:xmax:xip,...`, see
    /// [`PgSnapshot`](crate::PgSnapshot)).
    #[error("not a PostgreSQL snapshot (xmin:xmax:xip,...): {text:?}")]
    InvalidSnapshot {
        /// The text.
        text: String,
    },

    /// Any other database or driver error.
    #[error(transparent)]
    Database(sqlx::Error),
}

impl Error {
    /// Whether trying again may succeed: the failed call wrote nothing, and the cause can pass.
    /// The one question to ask of any error before retrying; `true` for exactly these:
    ///
    /// | error | cause | retry |
    /// |-------|-------|-------|
    /// | [`VersionConflict`](Error::VersionConflict) | another writer moved the entity first | re-read the entity, then the call (an optimistic write with a fresh expected version) |
    /// | [`LockTimeout`](Error::LockTimeout) | the entity's lock was held past `lock_timeout` / `statement_timeout` | the call |
    /// | [`Canceled`](Error::Canceled) | `statement_timeout` or `pg_cancel_backend` | the call |
    /// | [`SerializationFailure`](Error::SerializationFailure) | SQLSTATE 40001 or 40P01 | your whole transaction |
    /// | [`Database`](Error::Database)`(`[`sqlx::Error::PoolTimedOut`]`)` | no connection became free in time; nothing was sent | the call |
    ///
    /// "The call" is the call outside a transaction of yours. When the call ran inside your
    /// transaction, a failed write rolled back only its own savepoint, so your transaction is
    /// usable and the call can be retried in it; but a read that failed there (or any
    /// [`SerializationFailure`](Error::SerializationFailure)) aborted your transaction: roll it
    /// back and run it again, which is always a correct retry of any of the above.
    ///
    /// Everything else is `false`, in particular [`Error::OutcomeUnknown`]: the write may have
    /// been stored, so find out first ([`Immutable::find_write`](crate::Immutable::find_write));
    /// and [`NotFound`](Error::NotFound), [`Deleted`](Error::Deleted),
    /// [`NotDeleted`](Error::NotDeleted), which are answers, not failures of the moment.
    /// Connection errors other than the pool's timeout are `false`: immu cannot tell from them
    /// alone whether something was sent.
    ///
    /// ```no_run
    /// # use immu_core::Immutable;
    /// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
    /// # async fn demo(pool: sqlx::PgPool, id: uuid::Uuid) -> immu_core::Result<()> {
    /// let mut attempts = 0;
    /// let saved = loop {
    ///     let mut account = Account::find(&pool, id).await?;
    ///     account.balance += 10;
    ///     match account.save(&pool).await {
    ///         Err(err) if err.is_retryable() && attempts < 3 => attempts += 1,
    ///         other => break other?,
    ///     }
    /// };
    /// # Ok(()) }
    /// ```
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::VersionConflict { .. }
                | Error::LockTimeout { .. }
                | Error::Canceled { .. }
                | Error::SerializationFailure { .. }
                | Error::Database(sqlx::Error::PoolTimedOut)
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
                // undefined_table: `relation "accounts" does not exist` (not `missing FROM-clause
                // entry for table "customers"`, a statement naming a table it does not select from).
                Some("42P01")
                    if db.message().starts_with("relation \"")
                        && db.message().ends_with("does not exist") =>
                {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    /// A database error with a SQLSTATE, as a server would report it (without a server).
    #[derive(Debug)]
    struct Refusal {
        code: &'static str,
        message: &'static str,
    }

    impl std::fmt::Display for Refusal {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.message)
        }
    }

    impl std::error::Error for Refusal {}

    impl sqlx::error::DatabaseError for Refusal {
        fn message(&self) -> &str {
            self.message
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.code))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn refused(code: &'static str, message: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(Refusal { code, message }))
    }

    /// One error of every variant (the `match` in [`is_retryable_answers_each_variant`] makes a new
    /// variant a compile error until it is listed here and there).
    fn one_of_each() -> Vec<Error> {
        let id = Uuid::nil();
        vec![
            Error::NotFound { table: "t", entity_id: id, version: None },
            Error::Deleted { table: "t", entity_id: id, version: 2, deleted_at: DateTime::<Utc>::MIN_UTC },
            Error::NotDeleted { table: "t", entity_id: id, version: 1 },
            Error::VersionConflict { table: "t", entity_id: id, expected: Some(1), actual: Some(2) },
            Error::VersionConflict { table: "t", entity_id: id, expected: None, actual: None },
            Error::AppendOnly { table: "t".into(), operation: "UPDATE".into() },
            Error::InvalidIdentifier { name: "x y".into(), reason: "space" },
            Error::UnknownReference { table: "t".into(), constraint: "c".into(), detail: "d".into() },
            Error::LockTimeout { table: "t", entity_id: id },
            Error::Canceled { message: "canceling statement due to user request".into() },
            Error::InvalidValue { code: "22021".into(), message: "NUL".into() },
            Error::InvalidHistory { table: "t".into(), message: "skip".into() },
            Error::SerializationFailure { code: "40001".into(), message: "could not serialize".into() },
            Error::SerializationFailure { code: "40P01".into(), message: "deadlock detected".into() },
            Error::UnknownColumn { table: "t", column: "c".into() },
            Error::MissingTable { table: "t".into() },
            Error::OutcomeUnknown {
                table: "t",
                entity_id: id,
                version_id: id,
                source: Box::new(sqlx::Error::PoolTimedOut),
            },
            Error::SchemaDrift { table: "t".into(), differences: Vec::new() },
            Error::UnsafeSetup { table: "t".into(), problems: Vec::new(), fix: String::new() },
            Error::MachineryMismatch { table: "t", message: "m".into() },
            Error::PermissionDenied { message: "permission denied".into() },
            Error::ActorRequired { table: "t".into(), message: "no actor".into() },
            Error::OlderShape { table: "t", entity_id: id, version: 1, shape: 1 },
            Error::Feed(crate::feed::FeedError::Standby),
            Error::InvalidDigest { reason: "not JSON".into() },
            Error::InvalidSnapshot { text: "x".into() },
            Error::InTransaction { operation: "verify" },
            Error::Database(sqlx::Error::PoolTimedOut),
            Error::Database(sqlx::Error::PoolClosed),
            Error::Database(sqlx::Error::RowNotFound),
            Error::Database(sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset))),
            Error::Database(refused("XX000", "internal error")),
        ]
    }

    #[test]
    fn is_retryable_answers_each_variant() {
        for err in one_of_each() {
            let expected = match &err {
                Error::VersionConflict { .. }
                | Error::LockTimeout { .. }
                | Error::Canceled { .. }
                | Error::SerializationFailure { .. } => true,
                Error::Database(sqlx::Error::PoolTimedOut) => true,
                Error::Database(_) => false,
                // Answers about the entity, refusals that repeat, and a write that may be stored.
                Error::NotFound { .. }
                | Error::Deleted { .. }
                | Error::NotDeleted { .. }
                | Error::AppendOnly { .. }
                | Error::InvalidIdentifier { .. }
                | Error::UnknownReference { .. }
                | Error::InvalidValue { .. }
                | Error::InvalidHistory { .. }
                | Error::UnknownColumn { .. }
                | Error::MissingTable { .. }
                | Error::OutcomeUnknown { .. }
                | Error::SchemaDrift { .. }
                | Error::UnsafeSetup { .. }
                | Error::MachineryMismatch { .. }
                | Error::PermissionDenied { .. }
                | Error::ActorRequired { .. }
                | Error::OlderShape { .. }
                | Error::Feed(_)
                | Error::InvalidDigest { .. }
                | Error::InvalidSnapshot { .. }
                | Error::InTransaction { .. } => false,
            };
            assert_eq!(err.is_retryable(), expected, "{err:?}");
        }
    }

    #[test]
    fn every_40001_and_40p01_is_a_retryable_serialization_failure() {
        for (code, message) in [
            ("40001", "could not serialize access due to concurrent update"),
            ("40001", "accounts: the version of entity x was computed from a stale snapshot"),
            ("40001", "could not serialize access due to read/write dependencies among transactions"),
            ("40P01", "deadlock detected"),
        ] {
            let err = Error::from(refused(code, message));
            assert!(
                matches!(&err, Error::SerializationFailure { code: c, .. } if c == code),
                "{code} {message}: {err:?}"
            );
            assert!(err.is_retryable(), "{err:?}");
        }
        let canceled = Error::from(refused("57014", "canceling statement due to statement timeout"));
        assert!(matches!(canceled, Error::Canceled { .. }) && canceled.is_retryable());
        let other = Error::from(refused("XX000", "internal error"));
        assert!(matches!(other, Error::Database(_)) && !other.is_retryable());
    }

    #[test]
    fn optional_turns_only_not_found_and_deleted_into_none() {
        for err in one_of_each() {
            let absent = matches!(err, Error::NotFound { .. } | Error::Deleted { .. });
            let answer = Err::<(), _>(err).optional();
            assert_eq!(matches!(answer, Ok(None)), absent, "{answer:?}");
        }
    }

    /// The crate docs' error list names every variant.
    #[test]
    fn the_crate_docs_name_every_variant() {
        let docs = include_str!("lib.rs");
        for err in one_of_each() {
            let debug = format!("{err:?}");
            let variant = debug.split([' ', '(']).next().unwrap_or_default();
            assert!(docs.contains(&format!("(Error::{variant})")), "lib.rs does not list Error::{variant}");
        }
    }

    /// The crate docs' derive table lists every attribute the derive accepts (the keys of
    /// `immu-derive/src/attr.rs`, each field documented there as `` /// `key ...` ``).
    #[test]
    fn the_crate_docs_list_every_derive_attribute() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../immu-derive/src/attr.rs");
        let Ok(attrs) = std::fs::read_to_string(path) else { return };
        let fields =
            attrs.lines().filter(|l| l.trim_start().starts_with("pub(crate) ") && l.ends_with(',')).count();
        let keys: Vec<&str> = attrs
            .lines()
            .filter_map(|l| l.strip_prefix("    /// `"))
            .filter_map(|l| l.split(['`', ' ']).next())
            .collect();
        assert_eq!(keys.len(), fields, "one documented key per attribute field: {keys:?}");
        let docs = include_str!("lib.rs");
        for key in keys {
            assert!(docs.contains(&format!("`#[immu({key}")), "lib.rs's derive table misses `{key}`");
        }
    }
}

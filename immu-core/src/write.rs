//! The write path: every change appends a row.
//!
//! A write to an existing entity is one statement ([`Sql`](crate::sql::Sql) holds the text):
//! 1. the table's `<table>_immu_latest(entity, key)` function takes
//!    `pg_advisory_xact_lock(`[`lock_key`](crate::lock_key)`(table, entity))`, which queues the
//!    write behind other writers of that entity, then reads the latest version in a statement of
//!    its own, so that under READ COMMITTED it sees every earlier writer's commit;
//! 2. the same statement appends the next version when the latest one allows it, with
//!    `valid_from = GREATEST(clock_timestamp(), latest.valid_from)`, and returns the appended row
//!    with the latest version's number and tombstone, which explain a refusal (deleted, not
//!    deleted, version moved) without another query;
//! 3. the lock is held until the transaction ends: outside a caller's transaction the statement
//!    runs in a procedure of the table that commits before it returns (see [`run_write`] for
//!    why not a bare autocommit statement), inside one in a savepoint, so that a failure leaves
//!    that transaction usable;
//! 4. the table's insert trigger makes the new version the entity's row in `<table>_current`,
//!    replacing the version it follows; if another writer took the version number first (a stale
//!    `REPEATABLE READ`/`SERIALIZABLE` snapshot, or a writer that bypassed the lock), that fails
//!    and is reported as [`Error::VersionConflict`]: a version is never written twice.
//!
//! Read-modify-write takes the lock and reads with the same function, runs the closure, and
//! appends expecting the version it read, in one transaction.

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Acquire, Arguments, Connection, PgConnection, Postgres, Row, ValueRef};
use uuid::Uuid;

use crate::lock::lock_key;
use crate::sql::latest_version_index;
use crate::{Error, Immutable, Result, Versioned};

/// Inserts a new entity at version 1: one statement (see [`run_write`]).
#[tracing::instrument(level = "debug", skip_all, fields(table = T::TABLE.name))]
pub(crate) async fn insert<'c, T, A>(db: A, value: T) -> Result<Versioned<T>>
where
    T: Immutable,
    A: Acquire<'c, Database = Postgres> + Send + 'c,
{
    let (id, entity_id) = (Uuid::now_v7(), Uuid::now_v7());
    let args = || {
        let mut args = PgArguments::default();
        args.add(id).map_err(sqlx::Error::Encode)?;
        args.add(entity_id).map_err(sqlx::Error::Encode)?;
        value.__encode(&mut args).map_err(sqlx::Error::Encode)?;
        Ok(args)
    };
    let mut conn = db.acquire().await?;
    let sql = T::__sql();
    let row =
        run_write(&mut conn, Write { statement: &sql.insert, call: &sql.insert_call, latest: None }, args)
            .await
            .map_err(|e| write_error::<T>(e, entity_id, Intent::Insert))?;
    let row = row.ok_or(Error::Database(sqlx::Error::RowNotFound))?;
    tracing::debug!(%entity_id, "inserted version 1");
    // What was stored, as PostgreSQL returns it (timestamps at microseconds, ...).
    Ok(Versioned::decode(&row)?)
}

/// Appends `value` as the next version, optionally only if the current version is `expected`.
#[tracing::instrument(level = "debug", skip(db, value), fields(table = T::TABLE.name))]
pub(crate) async fn update<'c, T, A>(
    db: A,
    entity_id: Uuid,
    expected: Option<i64>,
    value: T,
) -> Result<Versioned<T>>
where
    T: Immutable,
    A: Acquire<'c, Database = Postgres> + Send + 'c,
{
    let mut conn = db.acquire().await?;
    let args = || append_args(entity_id, expected, &value);
    let intent = Intent::Update { expected };
    let sql = T::__sql();
    let row = run_write(
        &mut conn,
        Write {
            statement: &sql.append,
            call: &sql.append_call,
            latest: Some(latest_version_index(&T::TABLE)),
        },
        args,
    )
    .await
    .map_err(|e| write_error::<T>(e, entity_id, intent))?;
    written(row, entity_id, intent)
}

/// Read-modify-write under the entity's lock.
#[tracing::instrument(level = "debug", skip(db, f), fields(table = T::TABLE.name))]
pub(crate) async fn modify<'c, T, A, F, E>(
    db: A,
    entity_id: Uuid,
    f: F,
) -> std::result::Result<Versioned<T>, E>
where
    T: Immutable,
    A: Acquire<'c, Database = Postgres> + Send + 'c,
    F: FnOnce(&mut T) -> std::result::Result<(), E> + Send,
    E: From<Error>,
{
    let mut tx = db.begin().await.map_err(Error::from)?;
    let latest = sqlx::query(T::__sql().lock_latest.as_str())
        .bind(entity_id)
        .bind(lock_key(T::TABLE.name, entity_id))
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| write_error::<T>(e, entity_id, Intent::Update { expected: None }))?;
    let current = crate::read::live::<T>(latest, entity_id)?;
    let expected = Some(current.version);
    let mut value = current.data;
    f(&mut value)?;
    let args = append_args(entity_id, expected, &value).map_err(Error::from)?;
    let intent = Intent::Update { expected };
    let row = sqlx::query_with(T::__sql().append.as_str(), args)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| write_error::<T>(e, entity_id, intent))?;
    let appended = written(row, entity_id, intent)?;
    tx.commit().await.map_err(Error::from)?;
    Ok(appended)
}

/// Appends a tombstone carrying the latest data.
#[tracing::instrument(level = "debug", skip(db), fields(table = T::TABLE.name))]
pub(crate) async fn delete<'c, T, A>(db: A, entity_id: Uuid) -> Result<Versioned<T>>
where
    T: Immutable,
    A: Acquire<'c, Database = Postgres> + Send + 'c,
{
    copy_latest(db, entity_id, Intent::Delete).await
}

/// Appends a live copy of a tombstone's data.
#[tracing::instrument(level = "debug", skip(db), fields(table = T::TABLE.name))]
pub(crate) async fn undelete<'c, T, A>(db: A, entity_id: Uuid) -> Result<Versioned<T>>
where
    T: Immutable,
    A: Acquire<'c, Database = Postgres> + Send + 'c,
{
    copy_latest(db, entity_id, Intent::Undelete).await
}

/// What a write to an existing entity meant to do; decides which error explains a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    Insert,
    Update { expected: Option<i64> },
    Delete,
    Undelete,
}

/// Delete or undelete: one statement appending a copy of the latest version's data.
async fn copy_latest<'c, T, A>(db: A, entity_id: Uuid, intent: Intent) -> Result<Versioned<T>>
where
    T: Immutable,
    A: Acquire<'c, Database = Postgres> + Send + 'c,
{
    let sql = T::__sql();
    let write = if intent == Intent::Delete {
        Write {
            statement: &sql.delete,
            call: &sql.delete_call,
            latest: Some(latest_version_index(&T::TABLE)),
        }
    } else {
        Write {
            statement: &sql.undelete,
            call: &sql.undelete_call,
            latest: Some(latest_version_index(&T::TABLE)),
        }
    };
    let args = || {
        let mut args = PgArguments::default();
        args.add(Uuid::now_v7()).map_err(sqlx::Error::Encode)?;
        args.add(entity_id).map_err(sqlx::Error::Encode)?;
        args.add(lock_key(T::TABLE.name, entity_id)).map_err(sqlx::Error::Encode)?;
        Ok(args)
    };
    let mut conn = db.acquire().await?;
    let row = run_write(&mut conn, write, args).await.map_err(|e| write_error::<T>(e, entity_id, intent))?;
    written(row, entity_id, intent)
}

/// The bind arguments of the append statement.
fn append_args<T: Immutable>(entity_id: Uuid, expected: Option<i64>, value: &T) -> sqlx::Result<PgArguments> {
    let mut args = PgArguments::default();
    args.add(Uuid::now_v7()).map_err(sqlx::Error::Encode)?;
    args.add(entity_id).map_err(sqlx::Error::Encode)?;
    args.add(lock_key(T::TABLE.name, entity_id)).map_err(sqlx::Error::Encode)?;
    args.add(expected).map_err(sqlx::Error::Encode)?;
    value.__encode(&mut args).map_err(sqlx::Error::Encode)?;
    Ok(args)
}

/// A write statement, and the `CALL` of the table's procedure that runs and commits it.
#[derive(Clone, Copy)]
struct Write {
    statement: &'static str,
    call: &'static str,
    /// Index of the latest version's number in the row (see [`latest_version_index`]); None for
    /// inserts, which return the new version only.
    latest: Option<usize>,
}

/// Runs one write: in the caller's transaction, the statement in a savepoint (so that a failure
/// leaves that transaction usable); otherwise the `CALL` of the table's procedure, which runs the
/// statement and commits before it returns: one round trip.
///
/// Not a bare autocommit statement, which would also be one round trip: with sqlx 0.9.0 a `BEGIN`
/// whose future is dropped mid-flight leaves the pooled connection inside a transaction that
/// sqlx does not know about (launchbadge/sqlx#4393), and an autocommit write on that connection
/// would be acknowledged and then never committed. The reliability suite's `cancelled-writes`
/// scenario caught this. A procedure's `COMMIT` is refused inside a transaction block (SQLSTATE
/// 2D000), so on such a connection the `CALL` fails and writes nothing: immu rolls the unknown
/// transaction back, which returns the connection to the state sqlx believes it is in, and
/// calls again.
///
/// `args` builds the bind arguments (twice in that case, rather than copying them on every write).
/// The row, if any: the statement's, or for a `CALL` (which always returns one) `None` when the
/// latest version's number is NULL, i.e. the entity does not exist.
async fn run_write<F>(conn: &mut PgConnection, write: Write, args: F) -> sqlx::Result<Option<PgRow>>
where
    F: Fn() -> sqlx::Result<PgArguments> + Send,
{
    if conn.is_in_transaction() {
        let mut tx = Connection::begin(&mut *conn).await?;
        let row = sqlx::query_with(write.statement, args()?).fetch_optional(&mut *tx).await?;
        tx.commit().await?;
        return Ok(row);
    }
    let row = match sqlx::query_with(write.call, args()?).fetch_one(&mut *conn).await {
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("2D000") => {
            tracing::warn!(
                "the connection was inside a transaction sqlx does not track (a cancelled BEGIN, \
                 launchbadge/sqlx#4393, or a BEGIN run by hand): rolled it back before writing"
            );
            sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
            sqlx::query_with(write.call, args()?).fetch_one(&mut *conn).await?
        }
        other => other?,
    };
    match write.latest {
        Some(at) if row.try_get_raw(at)?.is_null() => Ok(None),
        _ => Ok(Some(row)),
    }
}

/// The outcome of a write statement's row (see [`latest_version_index`]): the appended version,
/// or the error the latest version explains.
fn written<T: Immutable>(row: Option<PgRow>, entity_id: Uuid, intent: Intent) -> Result<Versioned<T>> {
    let table = T::TABLE.name;
    let Some(row) = row else {
        return Err(Error::NotFound { table, entity_id, version: None });
    };
    if row.try_get::<Option<Uuid>, _>(0)?.is_some() {
        let appended = Versioned::decode(&row)?;
        tracing::debug!(%entity_id, version = appended.version, ?intent, "appended version");
        return Ok(appended);
    }
    let at = latest_version_index(&T::TABLE);
    let version: i64 = row.try_get(at)?;
    let deleted_at: Option<DateTime<Utc>> = row.try_get(at + 1)?;
    Err(match (intent, deleted_at) {
        (Intent::Update { .. } | Intent::Delete, Some(deleted_at)) => {
            Error::Deleted { table, entity_id, version, deleted_at }
        }
        (Intent::Undelete, None) => Error::NotDeleted { table, entity_id, version },
        (Intent::Update { expected }, None) => {
            Error::VersionConflict { table, entity_id, expected, actual: Some(version) }
        }
        // Undelete of a tombstone and delete of a live version always append; an insert returns
        // its row.
        (Intent::Undelete, Some(_)) | (Intent::Delete, None) | (Intent::Insert, _) => {
            Error::VersionConflict { table, entity_id, expected: None, actual: Some(version) }
        }
    })
}

/// Maps a write statement's failure. Another writer took the version number first when:
///
/// * the projection row the insert trigger replaces was changed by a transaction that committed
///   after this one's `REPEATABLE READ`/`SERIALIZABLE` snapshot (SQLSTATE 40001, "could not
///   serialize access due to concurrent update"): the stale snapshot showed an old latest version;
/// * the trigger found the version taken (IMMU2, "would skip or repeat a version"), which only a
///   writer that bypassed the advisory lock can cause;
/// * a unique violation on the table's primary key;
///
/// and each is [`Error::VersionConflict`]. A lock wait cut short by `lock_timeout` or
/// `statement_timeout` is [`Error::LockTimeout`]; anything else converts as usual.
fn write_error<T: Immutable>(err: sqlx::Error, entity_id: Uuid, intent: Intent) -> Error {
    if let sqlx::Error::Database(db) = &err {
        let table = T::TABLE.name;
        let code = db.code();
        // A routine of the table's DDL is missing: the DDL was not run (or is from an older immu).
        let routine = format!("{table}_immu_");
        if code.as_deref() == Some("42883")
            && (db.message().starts_with(&format!("procedure {routine}"))
                || db.message().starts_with(&format!("function {routine}")))
        {
            return Error::MissingTable { table: table.to_owned() };
        }
        let pkey = db.constraint().is_some_and(|c| c.strip_suffix("_pkey") == Some(table));
        let taken = (db.is_unique_violation() && pkey)
            || (code.as_deref() == Some("40001") && db.message().contains("concurrent update"))
            || (code.as_deref() == Some(crate::error::INVALID_HISTORY_SQLSTATE)
                && db.message().contains("skip or repeat"));
        if taken {
            let expected = match intent {
                Intent::Update { expected } => expected,
                Intent::Insert | Intent::Delete | Intent::Undelete => None,
            };
            return Error::VersionConflict { table, entity_id, expected, actual: None };
        }
        if code.as_deref() == Some("55P03")
            || (code.as_deref() == Some("57014") && db.message().contains("statement timeout"))
        {
            return Error::LockTimeout { table, entity_id };
        }
    }
    err.into()
}

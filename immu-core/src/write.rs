//! The write path: every change appends a row.
//!
//! A write to an existing entity runs in a transaction (a savepoint inside the caller's):
//! 1. `pg_advisory_xact_lock(lock_key(table, entity))` queues it behind other writers of that
//!    entity ([`lock`](crate::lock));
//! 2. one `INSERT ... SELECT` statement, issued after the lock so that (in READ COMMITTED) its
//!    snapshot sees every earlier writer's commit, reads the latest version and appends the next
//!    one with `valid_from = GREATEST(clock_timestamp(), latest.valid_from)`
//!    ([`Sql`](crate::sql::Sql) holds the text);
//! 3. if it inserted nothing, the latest version explains why (not found, deleted, not deleted,
//!    version moved) and the transaction rolls back;
//! 4. a unique violation on `(entity_id, version)` means another writer took the version number
//!    first (a stale `REPEATABLE READ`/`SERIALIZABLE` snapshot, or a writer that bypassed the
//!    lock): it is reported as [`Error::VersionConflict`], never written twice.

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Acquire, Arguments, Connection, PgConnection, Postgres, Row};
use uuid::Uuid;

use crate::lock::lock_entity;
use crate::{Error, Immutable, Result, Versioned};

/// Inserts a new entity at version 1. One statement; in a caller's transaction it runs in a
/// savepoint so that a failure leaves that transaction usable.
#[tracing::instrument(level = "debug", skip_all, fields(table = T::TABLE.name))]
pub(crate) async fn insert<'c, T, A>(db: A, value: T) -> Result<Versioned<T>>
where
    T: Immutable,
    A: Acquire<'c, Database = Postgres> + Send + 'c,
{
    let (id, entity_id) = (Uuid::now_v7(), Uuid::now_v7());
    let mut args = PgArguments::default();
    args.add(id).map_err(sqlx::Error::Encode)?;
    args.add(entity_id).map_err(sqlx::Error::Encode)?;
    value.__encode(&mut args).map_err(sqlx::Error::Encode)?;
    let query = sqlx::query_with(T::__sql().insert.as_str(), args);

    let mut conn = db.acquire().await?;
    let row = if conn.is_in_transaction() {
        let mut savepoint = Connection::begin(&mut *conn).await?;
        let row = query.fetch_one(&mut *savepoint).await?;
        savepoint.commit().await?;
        row
    } else {
        query.fetch_one(&mut *conn).await?
    };
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
    let mut tx = db.begin().await?;
    lock_entity(&mut tx, T::TABLE.name, entity_id).await?;
    let appended = append(&mut tx, entity_id, expected, &value).await?;
    tx.commit().await?;
    Ok(appended)
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
    lock_entity(&mut tx, T::TABLE.name, entity_id).await?;
    let row = sqlx::query(T::__sql().current.as_str())
        .bind(entity_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::from)?;
    let current = crate::read::live::<T>(row, entity_id)?;
    let expected = current.version;
    let mut value = current.data;
    f(&mut value)?;
    let appended = append(&mut tx, entity_id, Some(expected), &value).await?;
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
    Update { expected: Option<i64> },
    Delete,
    Undelete,
}

/// Runs the append statement (the caller holds the entity's lock) and returns the new version.
async fn append<T: Immutable>(
    conn: &mut PgConnection,
    entity_id: Uuid,
    expected: Option<i64>,
    value: &T,
) -> Result<Versioned<T>> {
    let id = Uuid::now_v7();
    let mut args = PgArguments::default();
    args.add(id).map_err(sqlx::Error::Encode)?;
    args.add(entity_id).map_err(sqlx::Error::Encode)?;
    args.add(expected).map_err(sqlx::Error::Encode)?;
    value.__encode(&mut args).map_err(sqlx::Error::Encode)?;
    let intent = Intent::Update { expected };
    let row = sqlx::query_with(T::__sql().append.as_str(), args)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| conflict_or::<T>(e, entity_id, intent))?;
    let Some(row) = row else {
        return Err(refusal::<T>(conn, entity_id, intent).await);
    };
    let appended = Versioned::decode(&row)?;
    tracing::debug!(%entity_id, version = appended.version, "appended version");
    Ok(appended)
}

/// Delete or undelete: lock, then append a copy of the latest version's data.
async fn copy_latest<'c, T, A>(db: A, entity_id: Uuid, intent: Intent) -> Result<Versioned<T>>
where
    T: Immutable,
    A: Acquire<'c, Database = Postgres> + Send + 'c,
{
    let sql = T::__sql();
    let statement = if intent == Intent::Delete { &sql.delete } else { &sql.undelete };
    let mut tx = db.begin().await?;
    lock_entity(&mut tx, T::TABLE.name, entity_id).await?;
    let row = sqlx::query(statement.as_str())
        .bind(Uuid::now_v7())
        .bind(entity_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| conflict_or::<T>(e, entity_id, intent))?;
    let Some(row) = row else {
        return Err(refusal::<T>(&mut tx, entity_id, intent).await);
    };
    let version = Versioned::decode(&row)?;
    tx.commit().await?;
    tracing::debug!(%entity_id, version = version.version, ?intent, "appended version");
    Ok(version)
}

/// Explains why an append statement inserted nothing, from the latest version (still under the
/// entity's lock, so the answer is the one the statement saw).
async fn refusal<T: Immutable>(conn: &mut PgConnection, entity_id: Uuid, intent: Intent) -> Error {
    let table = T::TABLE.name;
    let latest: Option<PgRow> =
        match sqlx::query(T::__sql().current.as_str()).bind(entity_id).fetch_optional(&mut *conn).await {
            Ok(row) => row,
            Err(err) => return err.into(),
        };
    let Some(latest) = latest else {
        return Error::NotFound { table, entity_id, version: None };
    };
    let meta = latest
        .try_get::<i64, _>(2)
        .and_then(|version| Ok((version, latest.try_get::<Option<chrono::DateTime<chrono::Utc>>, _>(4)?)));
    let (version, deleted_at) = match meta {
        Ok(meta) => meta,
        Err(err) => return err.into(),
    };
    match (intent, deleted_at) {
        (Intent::Update { .. } | Intent::Delete, Some(deleted_at)) => {
            Error::Deleted { table, entity_id, version, deleted_at }
        }
        (Intent::Undelete, None) => Error::NotDeleted { table, entity_id, version },
        (Intent::Update { expected: Some(expected) }, None) => {
            Error::VersionConflict { table, entity_id, expected: Some(expected), actual: Some(version) }
        }
        // The statement saw a state that the re-read does not show: only possible if the
        // snapshot moved, i.e. someone wrote without the lock. Report it as a conflict.
        _ => Error::VersionConflict { table, entity_id, expected: None, actual: Some(version) },
    }
}

/// A unique violation on the table's primary key `(entity_id, version)` is a version conflict;
/// any other error converts as usual.
fn conflict_or<T: Immutable>(err: sqlx::Error, entity_id: Uuid, intent: Intent) -> Error {
    if let sqlx::Error::Database(db) = &err {
        let pkey = db.constraint().is_some_and(|c| c.strip_suffix("_pkey") == Some(T::TABLE.name));
        if db.is_unique_violation() && pkey {
            let expected = match intent {
                Intent::Update { expected } => expected,
                Intent::Delete | Intent::Undelete => None,
            };
            return Error::VersionConflict { table: T::TABLE.name, entity_id, expected, actual: None };
        }
    }
    err.into()
}

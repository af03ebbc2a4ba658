//! Single-entity reads: current, as of an instant, one version, full history.
//!
//! Each is one round trip and one index probe (see [`resolve`](crate::resolve) for the SQL).

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{Executor, Postgres, Row};
use uuid::Uuid;

use crate::{Error, Immutable, Result, Versioned};

/// The entity's current version.
pub(crate) async fn current<'c, T, E>(db: E, entity_id: Uuid) -> Result<Versioned<T>>
where
    T: Immutable,
    E: Executor<'c, Database = Postgres>,
{
    let row = sqlx::query(T::__sql().current.as_str())
        .bind(entity_id)
        .fetch_optional(db)
        .await
        .map_err(|e| Error::from(e).missing_projection_of(T::TABLE.name))?;
    live(row, entity_id)
}

/// The version that was current at `at`.
pub(crate) async fn as_of<'c, T, E>(db: E, entity_id: Uuid, at: DateTime<Utc>) -> Result<Versioned<T>>
where
    T: Immutable,
    E: Executor<'c, Database = Postgres>,
{
    let row = sqlx::query(T::__sql().as_of.as_str())
        .bind(entity_id)
        .bind(crate::sql::pg_instant(at))
        .fetch_optional(db)
        .await?;
    live(row, entity_id)
}

/// One exact version, tombstone or not.
pub(crate) async fn version<'c, T, E>(db: E, entity_id: Uuid, version: i64) -> Result<Versioned<T>>
where
    T: Immutable,
    E: Executor<'c, Database = Postgres>,
{
    let row =
        sqlx::query(T::__sql().version.as_str()).bind(entity_id).bind(version).fetch_optional(db).await?;
    match row {
        Some(row) => Ok(Versioned::decode(&row)?),
        None => Err(Error::NotFound { table: T::TABLE.name, entity_id, version: Some(version) }),
    }
}

/// The version whose version row id is `id`, if stored.
pub(crate) async fn by_id<'c, T, E>(db: E, entity_id: Uuid, id: Uuid) -> Result<Option<Versioned<T>>>
where
    T: Immutable,
    E: Executor<'c, Database = Postgres>,
{
    let row = sqlx::query(T::__sql().by_id.as_str()).bind(entity_id).bind(id).fetch_optional(db).await?;
    Ok(row.as_ref().map(Versioned::decode).transpose()?)
}

/// Every version in version order.
pub(crate) async fn history<'c, T, E>(db: E, entity_id: Uuid) -> Result<Vec<Versioned<T>>>
where
    T: Immutable,
    E: Executor<'c, Database = Postgres>,
{
    let rows = sqlx::query(T::__sql().history.as_str()).bind(entity_id).fetch_all(db).await?;
    if rows.is_empty() {
        return Err(Error::NotFound { table: T::TABLE.name, entity_id, version: None });
    }
    rows.iter().map(|row| Ok(Versioned::decode(row)?)).collect()
}

/// Each referenced entity as of its own instant, aligned with the input: `None` where
/// [`as_of`] fails with `NotFound` or `Deleted` (the crate docs' "Answers").
pub(crate) async fn each_as_of<'c, T, E>(
    db: E,
    (ids, instants): (Vec<Uuid>, Vec<DateTime<Utc>>),
) -> Result<Vec<Option<Versioned<T>>>>
where
    T: Immutable,
    E: Executor<'c, Database = Postgres> + 'c,
{
    let mut found: Vec<Option<Versioned<T>>> = ids.iter().map(|_| None).collect();
    let instants: Vec<DateTime<Utc>> = instants.into_iter().map(crate::sql::pg_instant).collect();
    let rows = sqlx::query(T::__sql().each_as_of.as_str()).bind(ids).bind(instants).fetch_all(db).await?;
    for row in rows {
        let ordinality: i64 = row.try_get(0)?;
        let slot = usize::try_from(ordinality - 1).ok().and_then(|i| found.get_mut(i));
        if let Some(slot) = slot {
            let version: Versioned<T> = Versioned::decode_at(&row, 1)?;
            // Deleted at that instant: what `find_as_of(..).optional()` answers, not its tombstone.
            if !version.is_deleted() {
                *slot = Some(version);
            }
        }
    }
    Ok(found)
}

/// A resolved version as a read reports it: missing is [`Error::NotFound`], a tombstone is
/// [`Error::Deleted`].
pub(crate) fn live<T: Immutable>(row: Option<PgRow>, entity_id: Uuid) -> Result<Versioned<T>> {
    let Some(row) = row else {
        return Err(Error::NotFound { table: T::TABLE.name, entity_id, version: None });
    };
    let version = Versioned::<T>::decode(&row)?;
    match version.deleted_at {
        Some(deleted_at) => {
            Err(Error::Deleted { table: T::TABLE.name, entity_id, version: version.version, deleted_at })
        }
        None => Ok(version),
    }
}

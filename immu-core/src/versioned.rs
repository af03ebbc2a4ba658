//! `Versioned<T>`: one stored version of an entity.

use std::future::Future;
use std::ops::{Deref, DerefMut};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::{Acquire, Postgres, Row};
use uuid::Uuid;

use crate::{Immutable, Result};

/// One version of an entity: the version metadata plus the entity's own data.
///
/// Derefs to the data, so `account.balance` reads the field of the stored `Account`.
/// Serializes flat: `{"id": ..., "entity_id": ..., "version": 2, "valid_from": ...,
/// "deleted_at": null, "owner": ..., "balance": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned<T> {
    /// Unique identifier of this version row (a UUIDv7).
    pub id: Uuid,
    /// Stable identity of the entity across all its versions.
    pub entity_id: Uuid,
    /// Version number: 1 for the first version, then 2, 3, ... without gaps.
    pub version: i64,
    /// When this version became current (the database clock, after the entity's lock was taken).
    pub valid_from: DateTime<Utc>,
    /// Set on a tombstone (the version a delete appended), to the same instant as `valid_from`.
    pub deleted_at: Option<DateTime<Utc>>,
    /// The entity's own data.
    #[serde(flatten)]
    pub data: T,
}

impl<T> Versioned<T> {
    /// Whether this version is a tombstone (the entity was deleted by it).
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }

    /// Drops the metadata and returns the data.
    pub fn into_inner(self) -> T {
        self.data
    }

    /// Maps the data, keeping the metadata.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Versioned<U> {
        Versioned {
            id: self.id,
            entity_id: self.entity_id,
            version: self.version,
            valid_from: self.valid_from,
            deleted_at: self.deleted_at,
            data: f(self.data),
        }
    }
}

impl<T: Immutable> Versioned<T> {
    /// Appends the (modified) data as the next version, but only if this version is still the
    /// entity's current one: optimistic concurrency for read, edit, save flows.
    ///
    /// Equivalent to [`T::update_if_version(db, self.entity_id, self.version, self.data)`](Immutable::update_if_version).
    ///
    /// ```no_run
    /// # use immu_core::Immutable;
    /// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
    /// # async fn demo(pool: sqlx::PgPool, id: uuid::Uuid) -> immu_core::Result<()> {
    /// let mut account = Account::find(&pool, id).await?;
    /// account.balance += 100;
    /// let saved = account.save(&pool).await?; // Err(VersionConflict) if someone wrote in between
    /// # Ok(()) }
    /// ```
    pub fn save<'c, A>(self, db: A) -> impl Future<Output = Result<Versioned<T>>> + Send + 'c
    where
        A: Acquire<'c, Database = Postgres> + Send + 'c,
    {
        T::update_if_version(db, self.entity_id, self.version, self.data)
    }

    /// Decodes a row laid out as the reserved columns followed by the entity's own columns.
    pub(crate) fn decode(row: &PgRow) -> std::result::Result<Self, sqlx::Error> {
        Self::decode_at(row, 0)
    }

    /// [`decode`](Self::decode), for a row whose first `first` columns are something else.
    pub(crate) fn decode_at(row: &PgRow, first: usize) -> std::result::Result<Self, sqlx::Error> {
        Ok(Versioned {
            id: row.try_get(first)?,
            entity_id: row.try_get(first + 1)?,
            version: row.try_get(first + 2)?,
            valid_from: row.try_get(first + 3)?,
            deleted_at: row.try_get(first + 4)?,
            data: T::__decode(row, crate::RowLayout::At(first + crate::entity::RESERVED_COLUMNS.len()))?,
        })
    }

    /// Decodes a row that names every column of the table (the row of a write procedure), in any
    /// order.
    pub(crate) fn decode_named(row: &PgRow) -> std::result::Result<Self, sqlx::Error> {
        use crate::sql::{DELETED_AT, ENTITY_ID, ID, VALID_FROM, VERSION};
        Ok(Versioned {
            id: row.try_get(ID)?,
            entity_id: row.try_get(ENTITY_ID)?,
            version: row.try_get(VERSION)?,
            valid_from: row.try_get(VALID_FROM)?,
            deleted_at: row.try_get(DELETED_AT)?,
            data: T::__decode(row, crate::RowLayout::Named)?,
        })
    }
}

impl<T> Deref for Versioned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.data
    }
}

impl<T> DerefMut for Versioned<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.data
    }
}

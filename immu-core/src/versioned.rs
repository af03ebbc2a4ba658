//! `Versioned<T>`: one stored version of an entity.

use std::future::Future;
use std::ops::{Deref, DerefMut};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::{Acquire, Postgres, Row};
use uuid::Uuid;

use crate::{Immutable, Provenance, Result};

/// One version of an entity: the version metadata plus the entity's own data.
///
/// Derefs to the data, so `account.balance` reads the field of the stored `Account`.
/// Serializes flat, with the provenance as an object: `{"id": ..., "entity_id": ..., "version": 2,
/// "valid_from": ..., "deleted_at": null, "provenance": {"actor": "ada", ...}, "owner": ...,
/// "balance": ...}`.
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
    /// Who wrote this version and why (see [`Audit`](crate::Audit)).
    #[serde(default)]
    pub provenance: Provenance,
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
            provenance: self.provenance,
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
    pub fn save<'c, A>(self, db: A) -> impl Future<Output = Result<Written<T>>> + Send + 'c
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
            provenance: Provenance {
                actor: row.try_get(first + 5)?,
                reason: row.try_get(first + 6)?,
                context: row.try_get(first + 7)?,
                db_user: row.try_get(first + 8)?,
                application: row.try_get(first + 9)?,
                revert_of: row.try_get(first + 10)?,
            },
            data: T::__decode(row, crate::RowLayout::At(first + crate::entity::RESERVED_COLUMNS.len()))?,
        })
    }

    /// Decodes a row that names every column of the table (the row of a write procedure), in any
    /// order.
    pub(crate) fn decode_named(row: &PgRow) -> std::result::Result<Self, sqlx::Error> {
        use crate::sql::{
            ACTOR, APPLICATION, CONTEXT, DB_USER, DELETED_AT, ENTITY_ID, ID, REASON, REVERT_OF, VALID_FROM,
            VERSION,
        };
        Ok(Versioned {
            id: row.try_get(ID)?,
            entity_id: row.try_get(ENTITY_ID)?,
            version: row.try_get(VERSION)?,
            valid_from: row.try_get(VALID_FROM)?,
            deleted_at: row.try_get(DELETED_AT)?,
            provenance: Provenance {
                actor: row.try_get(ACTOR)?,
                reason: row.try_get(REASON)?,
                context: row.try_get(CONTEXT)?,
                db_user: row.try_get(DB_USER)?,
                application: row.try_get(APPLICATION)?,
                revert_of: row.try_get(REVERT_OF)?,
            },
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

/// What a write that may append nothing did: [`update`](Immutable::update),
/// [`modify`](Immutable::modify), [`patch`](Immutable::patch), [`revert`](Immutable::revert) and
/// [`save`](Versioned::save).
///
/// A write whose data equals the entity's latest version's (every column, and the shape) appends
/// nothing and says so: [`Unchanged`](Written::Unchanged), with that latest version. (A table can
/// record identical versions instead: `SELECT immu.configure_versioning('accounts',
/// record_identical => true);`.) Either way it derefs to the entity's current version, so
/// `written.version` and `written.balance` read it.
///
/// ```no_run
/// # use immu_core::{Immutable, Written};
/// # #[derive(Clone, Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
/// # async fn demo(pool: sqlx::PgPool, id: uuid::Uuid) -> immu_core::Result<()> {
/// let current = Account::find(&pool, id).await?;
/// let again = Account::update(&pool, id, current.data.clone()).await?;
/// assert!(!again.is_appended());
/// assert_eq!(again.version, current.version); // nothing appended
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "version", rename_all = "snake_case")]
pub enum Written<T> {
    /// The write appended this version.
    Appended(Versioned<T>),
    /// The write's data equals the latest version's: it appended nothing. This is that version.
    Unchanged(Versioned<T>),
}

impl<T> Written<T> {
    /// Whether the write appended a version.
    pub fn is_appended(&self) -> bool {
        matches!(self, Written::Appended(_))
    }

    /// The entity's current version: the appended one, or the unchanged latest one.
    pub fn into_versioned(self) -> Versioned<T> {
        match self {
            Written::Appended(v) | Written::Unchanged(v) => v,
        }
    }

    /// The appended version, or `None` when nothing was appended.
    pub fn appended(self) -> Option<Versioned<T>> {
        match self {
            Written::Appended(v) => Some(v),
            Written::Unchanged(_) => None,
        }
    }
}

impl<T> Deref for Written<T> {
    type Target = Versioned<T>;
    fn deref(&self) -> &Versioned<T> {
        match self {
            Written::Appended(v) | Written::Unchanged(v) => v,
        }
    }
}

impl<T> From<Written<T>> for Versioned<T> {
    fn from(written: Written<T>) -> Versioned<T> {
        written.into_versioned()
    }
}

impl<T: PartialEq> PartialEq<Written<T>> for Versioned<T> {
    /// Whether `other`'s version is this one.
    fn eq(&self, other: &Written<T>) -> bool {
        self == &**other
    }
}

impl<T: PartialEq> PartialEq<Versioned<T>> for Written<T> {
    /// Whether this write's version is `other`.
    fn eq(&self, other: &Versioned<T>) -> bool {
        &**self == other
    }
}

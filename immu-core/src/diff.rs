//! Field-level differences between versions of an entity: [`Diff`].
//!
//! Values are compared as PostgreSQL's JSON rendering of each column (`to_jsonb` of the version
//! row), exactly (as text: `1.0` and `1.00` differ), so every column type diffs the same way and a
//! diff serializes as is for an API. Every column of the table counts, including those the struct
//! does not name; immu's own columns do not (a tombstone, an undelete and a revert say so in
//! [`Diff::change`]).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::{Executor, Postgres, Row};
use uuid::Uuid;

use crate::{Column, Error, Immutable, Result, Versioned};

/// What kind of change a version is, relative to the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// Version 1.
    Created,
    /// New data.
    Updated,
    /// A tombstone.
    Deleted,
    /// The live version after a tombstone.
    Undeleted,
    /// A revert to the data of version `to`.
    Reverted {
        /// The version whose data was restored.
        to: i64,
    },
}

/// One column that differs between two versions, with its values as PostgreSQL renders them in
/// JSON: numbers as JSON numbers (read into `f64`: a `numeric` beyond its precision is shown
/// rounded, though the difference is detected exactly), `bytea` as a `"\\x..."` string, an enum
/// as its label, a timestamp as an ISO 8601 string. [`from_as`](Self::from_as) reads such a value
/// through serde; for typed values of every field, use the versions themselves
/// ([`history_with_diffs`](crate::Immutable::history_with_diffs) returns them too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    /// The column's name.
    pub column: String,
    /// The Rust field it maps to, when the struct names the column.
    pub field: Option<String>,
    /// Its value in the older version (JSON `null` when absent or NULL).
    pub from: serde_json::Value,
    /// Its value in the newer version.
    pub to: serde_json::Value,
}

impl FieldChange {
    /// The old value as `V` (`from_as::<i64>()`).
    pub fn from_as<V: DeserializeOwned>(&self) -> Result<V> {
        decode(&self.column, &self.from)
    }

    /// The new value as `V`.
    pub fn to_as<V: DeserializeOwned>(&self) -> Result<V> {
        decode(&self.column, &self.to)
    }
}

/// The field-level difference between two versions of one entity: which columns changed, from
/// what, to what, in the table's column order. Serializes for an API:
/// `{"entity_id": ..., "from_version": 1, "to_version": 2, "change": {"kind": "updated"},
/// "fields": [{"column": "balance", "field": "balance", "from": 100, "to": 70}]}`.
///
/// ```no_run
/// # use immu_core::Immutable;
/// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
/// # async fn demo(pool: sqlx::PgPool, id: uuid::Uuid) -> immu_core::Result<()> {
/// for (version, diff) in Account::history_with_diffs(&pool, id).await? {
///     let who = version.provenance.actor.as_deref().unwrap_or("(unknown)");
///     if let Some(balance) = diff.get(Account::BALANCE) {
///         println!("v{} by {who}: balance {} -> {}", version.version, balance.from, balance.to);
///     }
/// }
/// let diff = Account::diff(&pool, id, 1, 3).await?;
/// let old: i64 = diff.get(Account::BALANCE).map(|c| c.from_as()).transpose()?.unwrap_or_default();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diff {
    /// The entity.
    pub entity_id: Uuid,
    /// The version the diff starts from, the first one given to [`diff`](crate::Immutable::diff)
    /// (`None`: the diff of version 1, from nothing, in a history).
    pub from_version: Option<i64>,
    /// The version the diff goes to.
    pub to_version: i64,
    /// What kind of change the newer version is, when the two are consecutive.
    pub change: Option<Change>,
    /// The columns that differ.
    pub fields: Vec<FieldChange>,
}

impl Diff {
    /// Whether no column differs.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The change of `column`, if it changed.
    pub fn get<T>(&self, column: Column<T>) -> Option<&FieldChange> {
        self.fields.iter().find(|f| f.column == column.name())
    }

    /// Whether `column` changed.
    pub fn changed<T>(&self, column: Column<T>) -> bool {
        self.get(column).is_some()
    }
}

/// The diffs of every version of `entity_id` from the one before, with the versions.
pub(crate) async fn history_with_diffs<'c, T, E>(db: E, entity_id: Uuid) -> Result<Vec<(Versioned<T>, Diff)>>
where
    T: Immutable,
    E: Executor<'c, Database = Postgres>,
{
    let rows = sqlx::query(T::__sql().history_rows.as_str()).bind(entity_id).fetch_all(db).await?;
    if rows.is_empty() {
        return Err(Error::NotFound { table: T::TABLE.name, entity_id, version: None });
    }
    let mut out = Vec::with_capacity(rows.len());
    let mut previous: Option<(i64, JsonRow)> = None;
    for row in rows {
        let json = parse(row.try_get("immu_row")?)?;
        let version = Versioned::<T>::decode(&row)?;
        let diff = Diff {
            entity_id,
            from_version: previous.as_ref().map(|(v, _)| *v),
            to_version: version.version,
            change: Some(match &previous {
                None => Change::Created,
                Some((_, old)) => consecutive_change(old, &json),
            }),
            fields: fields::<T>(previous.as_ref().map(|(_, j)| j), &json),
        };
        previous = Some((version.version, json));
        out.push((version, diff));
    }
    Ok(out)
}

/// The diff from version `from` to version `to` of `entity_id`.
pub(crate) async fn between<'c, T, E>(db: E, entity_id: Uuid, from: i64, to: i64) -> Result<Diff>
where
    T: Immutable,
    E: Executor<'c, Database = Postgres>,
{
    let rows = sqlx::query(T::__sql().version_rows.as_str())
        .bind(entity_id)
        .bind(vec![from, to])
        .fetch_all(db)
        .await?;
    let row_of = |version: i64| -> Result<JsonRow> {
        for row in &rows {
            if row.try_get::<i64, _>(0)? == version {
                return parse(row.try_get(1)?);
            }
        }
        Err(Error::NotFound { table: T::TABLE.name, entity_id, version: Some(version) })
    };
    let (old, new) = (row_of(from)?, row_of(to)?);
    let change = (to == from + 1).then(|| consecutive_change(&old, &new));
    Ok(Diff {
        entity_id,
        from_version: Some(from),
        to_version: to,
        change,
        fields: fields::<T>(Some(&old), &new),
    })
}

/// A version row as PostgreSQL renders it in JSON: each column's value, as text.
type JsonRow = std::collections::BTreeMap<String, Box<serde_json::value::RawValue>>;

/// Parses `to_jsonb(row)::text`.
fn parse(text: String) -> Result<JsonRow> {
    serde_json::from_str(&text).map_err(|e| Error::Database(sqlx::Error::Decode(Box::new(e))))
}

/// The value of `column` in `row` (JSON `null` when absent).
fn value(row: &JsonRow, column: &str) -> serde_json::Value {
    row.get(column).and_then(|raw| serde_json::from_str(raw.get()).ok()).unwrap_or(serde_json::Value::Null)
}

/// The kind of change a version (`new`, its JSON row) is after the one before it (`old`).
fn consecutive_change(old: &JsonRow, new: &JsonRow) -> Change {
    let deleted = |row: &JsonRow| !value(row, "deleted_at").is_null();
    if deleted(new) {
        Change::Deleted
    } else if deleted(old) {
        Change::Undeleted
    } else if let Some(to) = value(new, "immu_revert_of").as_i64() {
        Change::Reverted { to }
    } else {
        Change::Updated
    }
}

/// The columns of the table (not immu's) whose values differ between `old` (none: version 1) and
/// `new`: the struct's columns first, in field order, then the others, by name.
fn fields<T: Immutable>(old: Option<&JsonRow>, new: &JsonRow) -> Vec<FieldChange> {
    let empty = JsonRow::new();
    let old = old.unwrap_or(&empty);
    let mut names: Vec<&String> = new
        .keys()
        .chain(old.keys().filter(|k| !new.contains_key(*k)))
        .filter(|k| {
            !crate::RESERVED_COLUMNS.contains(&k.as_str()) && !k.starts_with(crate::schema::RESERVED_PREFIX)
        })
        .collect();
    let position = |name: &str| T::TABLE.columns.iter().position(|c| c.name == name).unwrap_or(usize::MAX);
    names.sort_by(|a, b| position(a).cmp(&position(b)).then_with(|| a.cmp(b)));
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let text = |row: &JsonRow| row.get(name).map_or("null", |raw| raw.get()).to_owned();
            (text(old) != text(new)).then(|| FieldChange {
                column: name.clone(),
                field: T::TABLE.column(name).map(|c| c.field.to_owned()),
                from: value(old, name),
                to: value(new, name),
            })
        })
        .collect()
}

/// A JSON value of `column` as `V`.
fn decode<V: DeserializeOwned>(column: &str, value: &serde_json::Value) -> Result<V> {
    serde_json::from_value(value.clone()).map_err(|e| {
        Error::Database(sqlx::Error::ColumnDecode { index: column.to_owned(), source: Box::new(e) })
    })
}

//! The entity types the tests use. Their tables are created by `tests/migrations/`, which a test
//! checks against `immu_core::schema::create_table`.

use immu_core::Immutable;
use serde::{Deserialize, Serialize};

/// A bank account: the canonical example.
#[derive(Debug, Clone, PartialEq, Eq, Immutable, Serialize, Deserialize)]
#[immu(table = "accounts")]
pub struct Account {
    /// Owner's name.
    pub owner: String,
    /// Balance in cents.
    pub balance: i64,
}

impl Account {
    /// An account with the given owner and balance.
    pub fn new(owner: &str, balance: i64) -> Self {
        Account { owner: owner.to_owned(), balance }
    }
}

/// One line of an [`Order`], stored inside a JSON column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// Article number.
    pub sku: String,
    /// Quantity.
    pub qty: u32,
}

/// Status of an [`Order`]: a PostgreSQL enum through `sqlx::Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type, Serialize, Deserialize)]
#[sqlx(type_name = "order_status", rename_all = "snake_case")]
pub enum Status {
    /// Placed, not shipped.
    Open,
    /// Shipped.
    Shipped,
}

/// Names that need quoting: the table and several columns are SQL keywords.
#[derive(Debug, Clone, PartialEq, Immutable, Serialize, Deserialize)]
#[immu(table = "order")]
pub struct Order {
    /// Column `user`, a reserved word.
    #[immu(rename = "user")]
    pub customer: String,
    /// Column `select`, from a raw identifier.
    pub r#select: i32,
    /// A nullable column.
    pub note: Option<String>,
    /// A JSON column (serde).
    #[immu(json)]
    pub lines: Vec<Line>,
    /// A custom PostgreSQL type.
    #[immu(sql_type = "order_status")]
    pub status: Status,
    /// Binary data.
    pub payload: Vec<u8>,
    /// A timestamp column of the user's own.
    pub due: Option<chrono::DateTime<chrono::Utc>>,
}

/// An entity whose table is never created: for the missing-table error.
#[derive(Debug, Clone, Immutable)]
#[immu(table = "never_migrated")]
pub struct NeverMigrated {
    /// Some data.
    pub name: String,
}

/// A customer: referenced by [`Invoice`].
#[derive(Debug, Clone, PartialEq, Eq, Immutable, Serialize, Deserialize)]
#[immu(table = "customers")]
pub struct Customer {
    /// Name.
    pub name: String,
    /// `gold`, `silver`, ...
    pub tier: String,
}

/// An invoice of a [`Customer`]: a reference by entity id, with a foreign key.
#[derive(Debug, Clone, PartialEq, Eq, Immutable, Serialize, Deserialize)]
#[immu(table = "invoices")]
pub struct Invoice {
    /// The customer's `entity_id`.
    #[immu(references = Customer)]
    pub customer_id: uuid::Uuid,
    /// Total in cents.
    pub total: i64,
    /// `open` or `paid`.
    pub status: String,
}

//! The demo's entity types and migrations (also checked by the test suite against the DDL the
//! derive generates).

use immu_core::Immutable;
use serde::{Deserialize, Serialize};

/// A bank account.
#[derive(Debug, Clone, PartialEq, Eq, Immutable, Serialize, Deserialize)]
#[immu(table = "accounts")]
pub struct Account {
    /// Who owns it.
    pub owner: String,
    /// Balance in cents.
    pub balance: i64,
}

/// The demo's migrations (`demo/migrations/`), run after [`immu_core::MIGRATOR`].
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

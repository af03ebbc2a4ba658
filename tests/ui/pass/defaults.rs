// Defaults: the table is the struct name in snake_case, columns are the field names in order,
// types come from `ColumnType`. A struct without fields of its own is allowed.
use immu_core::{ColumnDef, Immutable, TableDef};

#[derive(Debug, Clone, PartialEq, Immutable)]
pub struct LedgerEntry {
    pub account: uuid::Uuid,
    #[immu(rename = "amount_cents")]
    pub amount: i64,
    pub booked_at: chrono::DateTime<chrono::Utc>,
    pub ok: bool,
}

#[derive(Immutable)]
struct Marker {}

const fn col(name: &'static str, field: &'static str, sql_type: &'static str) -> ColumnDef {
    ColumnDef { name, field, sql_type, nullable: false, json: false, references: None }
}

const EXPECTED: TableDef = TableDef {
    name: "ledger_entry",
    rust_name: "LedgerEntry",
    columns: &[
        col("account", "account", "uuid"),
        col("amount_cents", "amount", "bigint"),
        col("booked_at", "booked_at", "timestamptz"),
        col("ok", "ok", "boolean"),
    ],
    shape: 1,
    upcast: None,
};

fn main() {
    assert_eq!(LedgerEntry::TABLE, EXPECTED);
    assert_eq!(Marker::TABLE.name, "marker");
    assert!(Marker::TABLE.columns.is_empty());
    immu_core::schema::create_table::<Marker>().unwrap();
}

// A type without `ColumnType`, such as a PostgreSQL enum through `sqlx::Type`, names its column
// type with `sql_type`.
use immu_core::Immutable;

#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "order_status", rename_all = "snake_case")]
enum Status {
    Open,
    Shipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(transparent)]
struct Cents(i64);

#[derive(Immutable)]
#[immu(table = "orders")]
struct Order {
    #[immu(sql_type = "order_status")]
    status: Status,
    #[immu(sql_type = "order_status")]
    previous: Option<Status>,
    #[immu(sql_type = "bigint")]
    total: Cents,
}

fn main() {
    let columns: Vec<(&str, &str, bool)> =
        Order::TABLE.columns.iter().map(|c| (c.name, c.sql_type, c.nullable)).collect();
    assert_eq!(
        columns,
        [("status", "order_status", false), ("previous", "order_status", true), ("total", "bigint", false)]
    );
    let _ = (Status::Open, Status::Shipped, Cents(0).0);
}

// SQL keywords are fine as table and column names: immu quotes every identifier.
use immu_core::Immutable;

#[derive(Immutable)]
#[immu(table = "order")]
struct Order {
    #[immu(rename = "user")]
    customer: String,
    #[immu(rename = "select")]
    choice: i32,
    from: i64,
}

fn main() {
    assert_eq!(Order::TABLE.name, "order");
    let names: Vec<&str> = Order::TABLE.columns.iter().map(|c| c.name).collect();
    assert_eq!(names, ["user", "select", "from"]);
    let ddl = immu_core::schema::create_table::<Order>().unwrap();
    assert!(ddl.contains(r#"CREATE TABLE "order" ("#), "{ddl}");
    assert!(ddl.contains(r#""user""#) && ddl.contains(r#""select""#), "{ddl}");
}

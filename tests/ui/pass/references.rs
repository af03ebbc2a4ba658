// `#[immu(references = Type)]`: the field holds that entity's `entity_id`; its `ColumnDef` names
// the entity's table. A type path in a module, the entity itself (`Self` or its name) and two
// references on one struct are fine.
use immu_core::Immutable;
use uuid::Uuid;

mod crm {
    #[derive(immu_core::Immutable)]
    #[immu(table = "customers")]
    pub struct Customer {
        pub name: String,
    }
}

#[derive(Immutable)]
#[immu(table = "warehouses")]
struct Warehouse {
    city: String,
}

#[derive(Immutable)]
#[immu(table = "orders")]
struct Order {
    #[immu(references = crm::Customer)]
    customer: Uuid,
    #[immu(references = Warehouse, rename = "warehouse_id")]
    warehouse: Option<Uuid>,
    total: i64,
}

// A tree: references to the entity itself, in every spelling.
#[derive(Immutable)]
#[immu(table = "categories")]
struct Category {
    #[immu(references = Self)]
    parent: Option<Uuid>,
    #[immu(references = Category)]
    previous: Option<Uuid>,
    #[immu(references = crate::Category)]
    merged_into: Option<Uuid>,
    name: String,
}

fn main() {
    let references: Vec<(&str, Option<&str>)> =
        Order::TABLE.columns.iter().map(|c| (c.name, c.references)).collect();
    assert_eq!(
        references,
        [("customer", Some("customers")), ("warehouse_id", Some("warehouses")), ("total", None)]
    );
    assert_eq!(Order::TABLE.columns[0].references, Some("customers"));
    assert_eq!((Order::TABLE.columns[1].sql_type, Order::TABLE.columns[1].nullable), ("uuid", true));

    let references: Vec<Option<&str>> = Category::TABLE.columns.iter().map(|c| c.references).collect();
    assert_eq!(references, [Some("categories"), Some("categories"), Some("categories"), None]);

    let ddl = immu_core::schema::create_table::<Order>().unwrap();
    assert!(ddl.contains("REFERENCES"), "{ddl}");
    let _ = (Warehouse::CITY, crm::Customer::NAME, Category::NAME);
}

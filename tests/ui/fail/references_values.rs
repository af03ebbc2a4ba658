// `references` takes a type: a string (a table name, or the type in quotes) and a missing value
// each say what to write.
use immu_core::Immutable;
use uuid::Uuid;

#[derive(Immutable)]
#[immu(table = "customers")]
struct Customer {
    name: String,
}

#[derive(Immutable)]
struct Order {
    #[immu(references = "customers")]
    customer: Uuid,
    #[immu(references = "Customer")]
    payer: Uuid,
    #[immu(references)]
    shipper: Uuid,
    #[immu(references = 42)]
    courier: Uuid,
}

fn main() {
    // The stub impl keeps the constants, even of fields whose attributes were refused.
    let _ = (Order::CUSTOMER, Order::PAYER, Order::ENTITY_ID, Customer::NAME);
}

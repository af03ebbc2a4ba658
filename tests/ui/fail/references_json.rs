use immu_core::Immutable;
use uuid::Uuid;

#[derive(Immutable)]
#[immu(table = "customers")]
struct Customer {
    name: String,
}

#[derive(Immutable)]
struct Order {
    #[immu(json, references = Customer)]
    customer: Uuid,
}

fn main() {}

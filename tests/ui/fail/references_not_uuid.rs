// A `references` column holds an `entity_id`: a uuid.
use immu_core::Immutable;

#[derive(Immutable)]
#[immu(table = "customers")]
struct Customer {
    name: String,
}

#[derive(Immutable)]
struct Order {
    #[immu(references = Customer)]
    customer: i64,
}

fn main() {}

use immu_core::Immutable;
use uuid::Uuid;

#[derive(Immutable)]
#[immu(table = "customers")]
struct Customer {
    name: String,
}

#[derive(Immutable)]
struct Order {
    #[immu(refrences = Customer)]
    customer: Uuid,
    #[immu(references = Customer, on_delete = "cascade")]
    payer: Uuid,
}

fn main() {}

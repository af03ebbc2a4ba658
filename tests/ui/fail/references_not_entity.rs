// `references` names a type that does not derive Immutable: reported on the path.
use immu_core::Immutable;
use uuid::Uuid;

mod crm {
    pub struct Customer {
        pub name: String,
    }
}

#[derive(Immutable)]
struct Order {
    #[immu(references = crm::Customer)]
    customer: Uuid,
    #[immu(references = String)]
    note: Option<Uuid>,
}

fn main() {}

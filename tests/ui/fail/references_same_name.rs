// A path that ends in the entity's own name is taken as a reference to itself, and checked.
use immu_core::Immutable;
use uuid::Uuid;

mod legacy {
    #[derive(immu_core::Immutable)]
    #[immu(table = "legacy_categories")]
    pub struct Category {
        pub name: String,
    }
}

#[derive(Immutable)]
struct Category {
    #[immu(references = legacy::Category)]
    migrated_from: Option<Uuid>,
}

fn main() {}

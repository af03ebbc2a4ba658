use immu_core::Immutable;

#[derive(Immutable)]
struct Document {
    title: String,
    entity_id: i64,
}

fn main() {}

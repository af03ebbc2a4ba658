use immu_core::Immutable;

#[derive(Immutable)]
struct Document {
    title: String,
    id: i64,
}

fn main() {}

use immu_core::Immutable;

#[derive(Immutable)]
struct Document {
    title: String,
    valid_from: i64,
}

fn main() {}

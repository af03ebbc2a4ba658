use immu_core::Immutable;

#[derive(Immutable)]
struct Document {
    title: String,
    version: i64,
}

fn main() {}

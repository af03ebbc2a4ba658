use immu_core::Immutable;

#[derive(Immutable)]
struct Document {
    title: String,
    deleted_at: i64,
}

fn main() {}

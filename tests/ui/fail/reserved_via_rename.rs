use immu_core::Immutable;

#[derive(Immutable)]
struct Document {
    title: String,
    #[immu(rename = "version")]
    revision: i64,
}

fn main() {}

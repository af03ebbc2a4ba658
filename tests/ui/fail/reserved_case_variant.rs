use immu_core::Immutable;

#[derive(Immutable)]
struct Document {
    title: String,
    #[immu(rename = "Valid_From")]
    published: chrono::DateTime<chrono::Utc>,
}

fn main() {}

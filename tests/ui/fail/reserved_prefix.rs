use immu_core::Immutable;

#[derive(Immutable)]
struct Document {
    title: String,
    immu_note: String,
    #[immu(rename = "IMMU_hash")]
    hash: Vec<u8>,
}

fn main() {}

use immu_core::Immutable;

#[derive(Immutable)]
struct Account {
    owner: String,
    #[immu(rename = "owner")]
    owner_name: String,
}

fn main() {}

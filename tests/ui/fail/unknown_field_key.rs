use immu_core::Immutable;

#[derive(Immutable)]
struct Account {
    #[immu(renmae = "owner_name")]
    owner: String,
    #[immu(jsn)]
    tags: Vec<String>,
}

fn main() {}

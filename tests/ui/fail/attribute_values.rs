use immu_core::Immutable;

#[derive(Immutable)]
#[immu(table = accounts, crate = "not a path")]
struct Account {
    #[immu(json = "yes")]
    tags: Vec<String>,
    #[immu(sql_type = "")]
    amount: i64,
    #[immu(rename = "a", rename = "b")]
    owner: String,
}

fn main() {}

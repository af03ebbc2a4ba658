// Every error of the input is reported, each on its own token.
use immu_core::Immutable;

#[derive(Immutable)]
#[immu(table = "bad table")]
struct Everything<T> {
    id: i64,
    #[immu(rename = "a-b")]
    value: T,
    name: String,
    #[immu(rename = "name")]
    label: String,
}

fn main() {}

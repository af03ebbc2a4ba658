use immu_core::Immutable;

#[derive(Immutable)]
#[immu(tabel = "accounts")]
struct Account {
    owner: String,
}

fn main() {}

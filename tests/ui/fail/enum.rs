use immu_core::Immutable;

#[derive(Immutable)]
enum Status {
    Open,
    Closed,
}

fn main() {}

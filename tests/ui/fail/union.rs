use immu_core::Immutable;

#[derive(Immutable)]
union Bits {
    int: i64,
    float: f64,
}

fn main() {}

use immu_core::Immutable;

#[derive(Immutable)]
struct Point(i64, i64);

fn main() {}

use immu_core::Immutable;

#[derive(Immutable)]
struct Marker;

fn main() {}

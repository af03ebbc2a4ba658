use immu_core::Immutable;

#[derive(Immutable)]
struct Borrowed<'a> {
    name: &'a str,
}

fn main() {}

use immu_core::Immutable;

// Without #[immu(table)], the table is named after the struct; this name is not ASCII.
#[derive(Immutable)]
struct Größe {
    x: i64,
}

fn main() {}

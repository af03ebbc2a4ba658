use immu_core::Immutable;

#[derive(Immutable)]
struct Fixed<const N: usize> {
    bytes: [u8; N],
}

fn main() {}

use immu_core::Immutable;

#[derive(Immutable)]
#[immu(table = "people")]
struct PersonV1 {
    name: String,
}

// An upcast needs a newer shape than 1.
#[derive(Immutable)]
#[immu(table = "people", upcast = PersonV1)]
struct NoShape {
    first_name: String,
}

// A shape is a positive number.
#[derive(Immutable)]
#[immu(table = "people", shape = 0)]
struct ZeroShape {
    first_name: String,
}

#[derive(Immutable)]
#[immu(table = "people", shape = "2")]
struct QuotedShape {
    first_name: String,
}

fn main() {}

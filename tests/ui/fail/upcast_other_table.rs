use immu_core::Immutable;

#[derive(Immutable)]
#[immu(table = "customers")]
struct Customer {
    name: String,
}

// The older shape must be an entity of the same table.
#[derive(Immutable)]
#[immu(table = "people", shape = 2, upcast = Customer)]
struct Person {
    first_name: String,
}

impl From<Customer> for Person {
    fn from(c: Customer) -> Person {
        Person { first_name: c.name }
    }
}

fn main() {}

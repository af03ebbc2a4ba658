// An entity that reads versions of an older shape of its table through `From`.
use immu_core::Immutable;

#[derive(Immutable)]
#[immu(table = "people")]
struct PersonV1 {
    name: String,
}

#[derive(Immutable)]
#[immu(table = "people", shape = 2, upcast = PersonV1)]
struct Person {
    first_name: String,
    last_name: String,
}

impl From<PersonV1> for Person {
    fn from(old: PersonV1) -> Person {
        let (first, last) = old.name.split_once(' ').unwrap_or((&old.name, ""));
        Person { first_name: first.to_owned(), last_name: last.to_owned() }
    }
}

fn main() {
    assert_eq!(PersonV1::TABLE.shape, 1);
    assert_eq!(Person::TABLE.shape, 2);
    assert_eq!(Person::TABLE.upcast, Some(&PersonV1::TABLE));
}

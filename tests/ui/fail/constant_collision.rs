// Every field gets a constant named after it in SCREAMING_SNAKE_CASE; two fields cannot share
// one, nor take a reserved column's.
use immu_core::Immutable;

#[derive(Immutable)]
#[allow(non_snake_case)]
struct Account {
    opened_on: String,
    #[immu(rename = "opened_on_2")]
    openedOn: String,
    #[immu(rename = "owner_entity")]
    entityId: uuid::Uuid,
    #[immu(rename = "doc_version")]
    version: i64,
}

fn main() {
    // The stub impl keeps the constants it can.
    let _ = (Account::OPENED_ON, Account::ENTITY_ID, Account::VERSION);
}

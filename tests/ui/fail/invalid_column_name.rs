use immu_core::Immutable;

#[derive(Immutable)]
struct Account {
    #[immu(rename = "owner name")]
    owner: String,
    #[immu(rename = "balance-cents")]
    balance: i64,
    #[immu(rename = "")]
    note: Option<String>,
    #[immu(rename = "1st_line")]
    line: String,
    #[immu(rename = "a_column_name_that_is_longer_than_the_sixty_three_bytes_postgres_allows")]
    long: i64,
    // No rename: the field name itself is not ASCII.
    größe: i32,
}

fn main() {}

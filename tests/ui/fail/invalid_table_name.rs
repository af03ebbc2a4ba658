use immu_core::Immutable;

#[derive(Immutable)]
#[immu(table = "my accounts")]
struct Space {
    x: i64,
}

#[derive(Immutable)]
#[immu(table = "accounts\"; DROP TABLE users; --")]
struct Quote {
    x: i64,
}

#[derive(Immutable)]
#[immu(table = "ledger-entries")]
struct Dash {
    x: i64,
}

#[derive(Immutable)]
#[immu(table = "public.accounts")]
struct Dot {
    x: i64,
}

#[derive(Immutable)]
#[immu(table = "a_table_name_that_is_far_too_long_for_immu_indexes")]
struct TooLong {
    x: i64,
}

#[derive(Immutable)]
#[immu(table = "2fa_codes")]
struct Digit {
    x: i64,
}

#[derive(Immutable)]
#[immu(table = "")]
struct Empty {
    x: i64,
}

#[derive(Immutable)]
#[immu(table = "konten_ä")]
struct NonAscii {
    x: i64,
}

fn main() {}

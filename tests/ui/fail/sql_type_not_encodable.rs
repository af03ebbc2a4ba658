use immu_core::Immutable;

// `sql_type` names the column type, but sqlx still has to encode and decode the field.
struct Money(i64);

#[derive(Immutable)]
struct Invoice {
    #[immu(sql_type = "numeric(12,2)")]
    total: Money,
}

fn main() {}

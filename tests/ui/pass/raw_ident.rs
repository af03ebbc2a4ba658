// A raw identifier maps to the column of the same name without `r#`.
use immu_core::Immutable;

#[derive(Immutable)]
struct Token {
    r#type: String,
    r#match: i64,
}

#[derive(Immutable)]
struct r#Struct {
    x: i64,
}

fn main() {
    let columns = Token::TABLE.columns;
    assert_eq!((columns[0].name, columns[0].field), ("type", "type"));
    assert_eq!((columns[1].name, columns[1].field), ("match", "match"));
    assert_eq!((r#Struct::TABLE.name, r#Struct::TABLE.rust_name), ("struct", "Struct"));
    let token = Token { r#type: "kw".into(), r#match: 1 };
    let _ = (&token.r#type, token.r#match);
}

//! Unit tests of parsing, validation and expansion, without a compiler run.

use proc_macro2::TokenStream;
use syn::DeriveInput;

use crate::ast::Entity;
use crate::errors::Errors;

fn parse(src: &str) -> DeriveInput {
    syn::parse_str(src).expect("test input parses")
}

/// The error messages for `src`, in order (empty if it is valid).
fn errors(src: &str) -> Vec<String> {
    let input = parse(src);
    let mut errors = Errors::default();
    let entity = Entity::from_syn(&input, &mut errors);
    entity.validate(&mut errors);
    errors.messages()
}

/// The single error message for `src`.
fn error(src: &str) -> String {
    let errors = errors(src);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    errors.into_iter().next().unwrap()
}

/// The expansion, with whitespace normalised by re-parsing.
fn expand(src: &str) -> String {
    let tokens: TokenStream = crate::expand::derive(&parse(src));
    let file: syn::File = syn::parse2(tokens.clone()).unwrap_or_else(|e| panic!("{e}: {tokens}"));
    quote::quote!(#file).to_string()
}

/// `needle` occurs in `haystack`, whitespace ignored.
fn assert_contains(haystack: &str, needle: &str) {
    let squeeze = |s: &str| s.split_whitespace().collect::<String>();
    assert!(squeeze(haystack).contains(&squeeze(needle)), "missing\n  {needle}\nin\n  {haystack}");
}

const ACCOUNT: &str = r#"
    #[immu(table = "accounts")]
    struct Account {
        owner: String,
        #[immu(rename = "bal")] balance: i64,
        #[immu(json)] tags: Vec<String>,
        #[immu(sql_type = "numeric(12,2)")] amount: MyDecimal,
        note: Option<String>,
        #[immu(sql_type = "order_status")] status: std::option::Option<Status>,
        #[immu(json, sql_type = "json")] extra: Option<Extra>,
        r#type: i32,
    }
"#;

#[test]
fn valid_input_has_no_errors() {
    assert_eq!(errors(ACCOUNT), Vec::<String>::new());
}

#[test]
fn table_def_lists_every_column() {
    let out = expand(ACCOUNT);
    assert_contains(&out, "const _ : () = {");
    assert_contains(&out, "# [automatically_derived] impl :: immu_core :: Immutable for Account {");
    assert_contains(&out, r#"name : "accounts" , rust_name : "Account" , columns : & ["#);
    assert_contains(
        &out,
        r#":: immu_core :: ColumnDef { name : "owner" , field : "owner" ,
            sql_type : < String as :: immu_core :: ColumnType > :: SQL_TYPE ,
            nullable : < String as :: immu_core :: ColumnType > :: NULLABLE , json : false , }"#,
    );
    assert_contains(&out, r#"name : "bal" , field : "balance" , sql_type : < i64 as"#);
    assert_contains(
        &out,
        r#"name : "tags" , field : "tags" , sql_type : "jsonb" , nullable : false , json : true"#,
    );
    assert_contains(
        &out,
        r#"name : "amount" , field : "amount" , sql_type : "numeric(12,2)" , nullable : false , json : false"#,
    );
    assert_contains(
        &out,
        r#"name : "status" , field : "status" , sql_type : "order_status" , nullable : true , json : false"#,
    );
    assert_contains(
        &out,
        r#"name : "extra" , field : "extra" , sql_type : "json" , nullable : false , json : true"#,
    );
    assert_contains(&out, r#"name : "type" , field : "type" , sql_type : < i32 as"#);
}

#[test]
fn sql_decode_and_encode_follow_field_order() {
    let out = expand(ACCOUNT);
    assert_contains(
        &out,
        "static SQL : :: immu_core :: __private :: OnceLock < :: immu_core :: __private :: Sql > = \
         :: immu_core :: __private :: OnceLock :: new () ; \
         SQL . get_or_init (|| :: immu_core :: __private :: Sql :: new (& < Self as :: immu_core :: Immutable > :: TABLE))",
    );
    let row = "< :: immu_core :: __private :: PgRow as :: immu_core :: __private :: Row > :: try_get";
    assert_contains(&out, &format!("owner : {row} :: < String , usize > (row , first) ?"));
    assert_contains(&out, &format!("balance : {row} :: < i64 , usize > (row , first + 1) ?"));
    assert_contains(
        &out,
        &format!(
            "tags : {row} :: < :: immu_core :: __private :: Json < Vec < String > > , usize > (row , first + 2) ? . 0"
        ),
    );
    assert_contains(&out, &format!("r#type : {row} :: < i32 , usize > (row , first + 7) ?"));

    let add = "< :: immu_core :: __private :: PgArguments as :: immu_core :: __private :: Arguments > :: add";
    assert_contains(
        &out,
        &format!(
            "{add} :: < & String > (args , & self . owner) ? ; {add} :: < & i64 > (args , & self . balance) ? ;"
        ),
    );
    assert_contains(
        &out,
        &format!(
            "{add} :: < :: immu_core :: __private :: Json < & Vec < String > > > \
             (args , :: immu_core :: __private :: Json (& self . tags)) ?"
        ),
    );
    assert_contains(
        &out,
        &format!("{add} :: < & i32 > (args , & self . r#type) ? ; :: core :: result :: Result :: Ok (())"),
    );
}

#[test]
fn default_table_name_is_snake_case() {
    let out = expand("struct LedgerEntry { amount: i64 }");
    assert_contains(&out, r#"name : "ledger_entry" , rust_name : "LedgerEntry""#);
}

#[test]
fn crate_path_can_be_renamed() {
    let out = expand(r#"#[immu(crate = "my::immu")] struct A { x: i64 }"#);
    assert_contains(&out, "impl my :: immu :: Immutable for A");
    assert_contains(&out, "my :: immu :: __private :: PgRow");
    assert!(!out.contains("immu_core"), "{out}");
}

#[test]
fn zero_fields_are_allowed() {
    let out = expand("struct Marker {}");
    assert_contains(&out, "columns : & []");
    assert_contains(&out, "let _ = (row , first) ; :: core :: result :: Result :: Ok (Self { })");
    assert_contains(&out, "let _ = args ;");
}

#[test]
fn where_clause_without_generics_is_kept() {
    let out = expand("struct A where i64: Copy { x: i64 }");
    assert_contains(&out, "impl :: immu_core :: Immutable for A where i64 : Copy {");
}

#[test]
fn shapes_other_than_named_structs_are_refused() {
    assert_eq!(error("enum E { A }"), "#[derive(Immutable)] needs a struct with named fields, not an enum");
    assert_eq!(
        error("union U { a: i64 }"),
        "#[derive(Immutable)] needs a struct with named fields, not a union"
    );
    assert_eq!(
        error("struct T(i64, String);"),
        "#[derive(Immutable)] needs a struct with named fields, not a tuple struct"
    );
    assert_eq!(
        error("struct U;"),
        "#[derive(Immutable)] needs a struct with named fields, not a unit struct"
    );
}

#[test]
fn generics_are_refused() {
    for src in
        ["struct G<T> { x: T }", "struct G<'a> { x: &'a str }", "struct G<const N: usize> { x: [u8; N] }"]
    {
        assert!(error(src).starts_with("#[derive(Immutable)] does not support generic structs"), "{src}");
    }
}

#[test]
fn unknown_keys_are_refused_with_suggestions() {
    assert_eq!(
        error(r#"#[immu(tabel = "x")] struct A { x: i64 }"#),
        "Unknown field: `tabel`. Did you mean `table`?"
    );
    assert_eq!(
        error(r#"struct A { #[immu(renmae = "y")] x: i64 }"#),
        "Unknown field: `renmae`. Did you mean `rename`?"
    );
    assert!(
        error(r#"#[immu(table = "a", table = "b")] struct A { x: i64 }"#).contains("Duplicate field `table`")
    );
    assert!(!errors(r#"#[immu(table = 5)] struct A { x: i64 }"#).is_empty());
}

#[test]
fn invalid_table_names_are_explained() {
    let table = |name: &str| error(&format!("#[immu(table = {name:?})] struct A {{ x: i64 }}"));
    assert_eq!(
        table("my table"),
        r#"invalid table name "my table": it contains a space; only ASCII letters, digits and `_` are allowed"#
    );
    assert!(table("a\"b").starts_with(r#"invalid table name "a\"b": it contains `"`"#));
    assert!(table("public.accounts").contains("it contains `.`"));
    assert!(table("my-table").contains("it contains `-`"));
    assert!(table("a\0b").contains("it contains a NUL character"));
    assert!(table("tëst").contains("the non-ASCII character `ë`"));
    assert_eq!(table(""), r#"invalid table name "": it is empty"#);
    assert_eq!(table("1accounts"), r#"invalid table name "1accounts": it starts with a digit"#);
    assert!(table(&"t".repeat(49)).contains("it is 49 bytes long; table names are limited to 48 bytes"));
    assert_eq!(errors(&format!("#[immu(table = {:?})] struct A {{ x: i64 }}", "t".repeat(48))).len(), 0);
    // Keywords are fine: immu quotes identifiers.
    for keyword in ["order", "user", "select", "table"] {
        assert_eq!(errors(&format!("#[immu(table = {keyword:?})] struct A {{ x: i64 }}")).len(), 0);
    }
}

#[test]
fn struct_names_that_cannot_be_tables_ask_for_a_table_attribute() {
    let long = format!("struct {} {{ x: i64 }}", "A".repeat(49));
    assert!(error(&long).ends_with("name the table with #[immu(table = \"...\")]"), "{}", error(&long));
    let message = error("struct Größe { x: i64 }");
    assert!(
        message.starts_with(r#"the struct name `Größe` cannot be used as the table name "größe""#),
        "{message}"
    );
}

#[test]
fn invalid_column_names_are_explained() {
    assert_eq!(
        error(r#"struct A { #[immu(rename = "bad name")] x: i64 }"#),
        r#"invalid column name "bad name": it contains a space; only ASCII letters, digits and `_` are allowed"#
    );
    assert_eq!(
        error(r#"struct A { #[immu(rename = "")] x: i64 }"#),
        r#"invalid column name "": it is empty"#
    );
    let long = format!(r#"struct A {{ #[immu(rename = "{}")] x: i64 }}"#, "c".repeat(64));
    assert!(error(&long).contains("it is 64 bytes long"));
    let message = error("struct A { größe: i64 }");
    assert!(message.starts_with("the field name `größe` cannot be used as the column name"), "{message}");
    assert!(message.ends_with("name the column with #[immu(rename = \"...\")]"), "{message}");
    // Keywords and raw identifiers are fine.
    assert_eq!(
        errors(r#"struct A { r#type: i64, r#select: i64, #[immu(rename = "order")] o: i64 }"#).len(),
        0
    );
}

#[test]
fn reserved_columns_are_refused() {
    for name in crate::names::RESERVED_COLUMNS {
        assert_eq!(
            error(&format!("struct A {{ {name}: i64 }}")),
            format!(
                "column `{name}` is reserved by immu (every versioned table has it); \
                 rename the field or use #[immu(rename = \"...\")]"
            )
        );
        assert_eq!(
            error(&format!(r#"struct A {{ #[immu(rename = "{name}")] x: i64 }}"#)),
            format!(
                "column `{name}` is reserved by immu (every versioned table has it); \
                 choose another name in #[immu(rename = \"...\")]"
            )
        );
    }
    let message = error(r#"struct A { #[immu(rename = "Version")] v: i64 }"#);
    assert!(
        message.starts_with("column `Version` differs from immu's reserved column `version` only in case")
    );
    // Renaming a field called `version` away is the fix.
    assert_eq!(errors(r#"struct A { #[immu(rename = "doc_version")] version: i64 }"#).len(), 0);
}

#[test]
fn duplicate_columns_are_refused() {
    assert_eq!(
        error(r#"struct A { a: i64, #[immu(rename = "a")] b: i64 }"#),
        "column `a` is already used by field `a`; give one of them another name with #[immu(rename = \"...\")]"
    );
    assert_eq!(
        error(r#"struct A { #[immu(rename = "c")] a: i64, #[immu(rename = "c")] b: i64 }"#),
        "column `c` is already used by field `a`; give one of them another name"
    );
    // Quoted names are case-sensitive: `a` and `A` are two columns.
    assert_eq!(errors(r#"struct A { a: i64, #[immu(rename = "A")] b: i64 }"#).len(), 0);
}

#[test]
fn empty_sql_type_is_refused() {
    assert!(
        error(r#"struct A { #[immu(sql_type = " ")] x: i64 }"#)
            .starts_with("`sql_type` must name a PostgreSQL type")
    );
}

#[test]
fn invalid_crate_path_is_refused() {
    assert!(
        error(r#"#[immu(crate = "not a path")] struct A { x: i64 }"#).starts_with("`crate` must be a path")
    );
}

#[test]
fn all_errors_are_reported_together() {
    let all = errors(
        r#"
        #[immu(table = "bad table", tabel = "x")]
        struct G<T> {
            id: i64,
            #[immu(rename = "a-b")] x: T,
            #[immu(jsn)] y: i64,
            z: i64,
            #[immu(rename = "z")] w: i64,
        }
        "#,
    );
    // Attribute syntax first, then names. darling refuses the whole struct attribute for its
    // unknown key, so `table` is not checked.
    let expected = [
        "`tabel`",
        "generic",
        "`jsn`",
        "`id` is reserved",
        r#"invalid column name "a-b""#,
        "column `z` is already used by field `z`",
    ];
    assert_eq!(all.len(), expected.len(), "{all:#?}");
    for (message, expected) in all.iter().zip(expected) {
        assert!(message.contains(expected), "{message:?} should contain {expected:?}");
    }
}

#[test]
fn errors_come_with_a_stub_impl() {
    let out = expand("enum E { A }");
    assert_contains(&out, "compile_error !");
    assert_contains(&out, "impl :: immu_core :: Immutable for E {");
    assert_contains(
        &out,
        "fn __sql () -> & 'static :: immu_core :: __private :: Sql { :: core :: unreachable ! () }",
    );

    let out = expand(r#"#[immu(crate = "my::immu")] struct G<T: Clone> where T: Copy { x: T }"#);
    assert_contains(&out, "impl < T : Clone > my :: immu :: Immutable for G < T > where T : Copy , Self :");
    assert_contains(&out, ":: core :: marker :: Unpin + 'static {");
}

#[test]
fn attribute_values_of_the_wrong_kind_say_what_to_write() {
    assert_eq!(
        error("#[immu(table = accounts)] struct A { x: i64 }"),
        "expected a string in quotes: `table = \"...\"`"
    );
    assert_eq!(error("#[immu(table)] struct A { x: i64 }"), "expected a string: `table = \"...\"`");
    assert_eq!(
        error("struct A { #[immu(sql_type = 5)] x: i64 }"),
        "expected a string in quotes: `sql_type = \"...\"`"
    );
    assert_eq!(
        error(r#"struct A { #[immu(json = "yes")] x: i64 }"#),
        "`json` takes no value: write `#[immu(json)]`"
    );
    assert_eq!(error("struct A { #[immu(json(x))] x: i64 }"), "`json` takes no value: write `#[immu(json)]`");
}

#[test]
fn attributes_can_be_spread_over_several() {
    let out = expand(
        r#"#[immu(table = "t")] #[immu(crate = "my::immu")] struct A { #[immu(json)] #[immu(sql_type = "json")] x: Vec<i64> }"#,
    );
    assert_contains(&out, r#"name : "t""#);
    assert_contains(&out, "impl my :: immu :: Immutable for A");
    assert_contains(&out, r#"sql_type : "json" , nullable : false , json : true"#);
}

#[test]
fn stub_impl_keeps_the_crate_path_when_other_struct_keys_are_wrong() {
    let out = expand(r#"#[immu(tabel = "x", crate = "my::immu", sql(a, b))] struct A { x: i64 }"#);
    assert_contains(&out, "Did you mean `table`?");
    assert_contains(&out, "impl my :: immu :: Immutable for A");
}

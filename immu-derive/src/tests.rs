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
            nullable : < String as :: immu_core :: ColumnType > :: NULLABLE , json : false ,
            references : :: core :: option :: Option :: None , }"#,
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
    assert_contains(
        &out,
        &format!(r#"owner : {row} :: < String , usize > (row , columns . index (row , 0 , "owner") ?) ?"#),
    );
    assert_contains(
        &out,
        &format!(r#"balance : {row} :: < i64 , usize > (row , columns . index (row , 1 , "bal") ?) ?"#),
    );
    assert_contains(
        &out,
        &format!(
            r#"tags : {row} :: < :: immu_core :: __private :: Json < Vec < String > > , usize > (row , columns . index (row , 2 , "tags") ?) ? . 0"#
        ),
    );
    assert_contains(
        &out,
        &format!(r#"r#type : {row} :: < i32 , usize > (row , columns . index (row , 7 , "type") ?) ?"#),
    );

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
    assert_contains(&out, "let _ = (row , columns) ; :: core :: result :: Result :: Ok (Self { })");
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
            format!("column `{name}` is reserved by immu (every versioned table has it); rename the field")
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
    // Renaming only the column of a field called `version` does not do: its constant would be
    // `VERSION`, the reserved column's.
    assert_eq!(
        error(r#"struct A { #[immu(rename = "doc_version")] version: i64 }"#),
        "field `version` would generate the constant `VERSION`, which immu generates for its reserved \
         column `version`; rename the field"
    );
    assert_eq!(errors(r#"struct A { doc_version: i64 }"#).len(), 0);
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

#[test]
fn column_constants_are_generated_outside_the_const_block() {
    let out = expand(ACCOUNT);
    // First the inherent impl, then the `const _` block with the trait impl.
    let impl_at = out.find("impl Account {").expect("inherent impl");
    assert!(impl_at < out.find("const _ : () =").unwrap(), "{out}");
    assert_contains(
        &out,
        r#"# [automatically_derived] impl Account {
            # [doc = "Column `owner` of `accounts` (field `owner`)."]
            const OWNER : :: immu_core :: Column < Self > = :: immu_core :: Column :: new ("accounts" , "owner") ;
            # [doc = "Column `bal` of `accounts` (field `balance`)."]
            const BALANCE : :: immu_core :: Column < Self > = :: immu_core :: Column :: new ("accounts" , "bal") ;"#,
    );
    assert_contains(
        &out,
        r#"const TYPE : :: immu_core :: Column < Self > = :: immu_core :: Column :: new ("accounts" , "type") ;"#,
    );
    for (constant, column) in [
        ("ID", "id"),
        ("ENTITY_ID", "entity_id"),
        ("VERSION", "version"),
        ("VALID_FROM", "valid_from"),
        ("DELETED_AT", "deleted_at"),
    ] {
        assert_contains(
            &out,
            &format!(
                r#"const {constant} : :: immu_core :: Column < Self > = :: immu_core :: Column :: new ("accounts" , "{column}") ;"#
            ),
        );
    }
    assert_contains(
        &out,
        r#"# [doc = "Column `entity_id` of `accounts`: the id of the entity, the same in all its versions"#,
    );
}

#[test]
fn column_constants_have_the_struct_visibility() {
    let out = expand("pub struct A { x: i64 }");
    assert_contains(&out, "pub const X : :: immu_core :: Column < Self >");
    assert_contains(&out, "pub const ENTITY_ID : :: immu_core :: Column < Self >");
    let out = expand("pub(crate) struct A { x: i64 }");
    assert_contains(&out, "pub (crate) const X :");
    assert_contains(&out, "pub (crate) const VERSION :");
    let out = expand("pub(in crate::m) struct A { x: i64 }");
    assert_contains(&out, "pub (in crate :: m) const X :");
    let out = expand("struct A { x: i64 }");
    assert_contains(&out, "] const X :");
    assert!(!out.contains("pub"), "{out}");
}

#[test]
fn column_constants_use_the_crate_path_and_screaming_names() {
    let out = expand(
        r#"#[immu(crate = "my::immu")] #[allow(non_snake_case)] struct A { createdAt: i64, r#match: i64, _x: i64 }"#,
    );
    assert_contains(
        &out,
        r#"const CREATED_AT : my :: immu :: Column < Self > = my :: immu :: Column :: new ("a" , "createdAt") ;"#,
    );
    assert_contains(&out, r#"const MATCH : my :: immu :: Column < Self >"#);
    assert_contains(&out, r#"const _X : my :: immu :: Column < Self >"#);
    assert!(!out.contains("immu_core"), "{out}");
}

#[test]
fn colliding_constants_are_refused() {
    assert_eq!(
        error("#[allow(non_snake_case)] struct A { a_b: i64, aB: i64 }"),
        "field `a_b` and field `aB` both generate the constant `A_B`; rename one"
    );
    for (field, constant, reserved) in
        [("entityId", "ENTITY_ID", "entity_id"), ("ValidFrom", "VALID_FROM", "valid_from")]
    {
        assert_eq!(
            error(&format!(r#"struct A {{ #[immu(rename = "x")] {field}: i64 }}"#)),
            format!(
                "field `{field}` would generate the constant `{constant}`, which immu generates for its \
                 reserved column `{reserved}`; rename the field"
            )
        );
    }
    // A field named like a reserved column gets one error, about the column.
    assert_eq!(errors("struct A { version: i64 }").len(), 1);
    assert_eq!(errors("struct A { Version: i64 }").len(), 1);
}

#[test]
fn stub_impl_keeps_the_constants_it_can() {
    let out = expand(
        r#"
        #[allow(non_snake_case)]
        pub struct A<T> {
            #[immu(rename = "bad name")] x: i64,
            #[immu(jsn)] unread: T,
            a_b: i64,
            aB: i64,
            #[immu(rename = "v")] version: i64,
        }
        "#,
    );
    assert_contains(&out, "compile_error !");
    assert_contains(&out, "impl < T > A < T > {");
    assert_contains(
        &out,
        r#"pub const X : :: immu_core :: Column < Self > = :: immu_core :: Column :: new ("a" , "bad name") ;"#,
    );
    assert_contains(
        &out,
        r#"pub const UNREAD : :: immu_core :: Column < Self > = :: immu_core :: Column :: new ("a" , "unread") ;"#,
    );
    // One `A_B`, and the reserved `VERSION` only.
    assert_eq!(out.matches("const A_B :").count(), 1, "{out}");
    assert_contains(
        &out,
        r#"pub const VERSION : :: immu_core :: Column < Self > = :: immu_core :: Column :: new ("a" , "version") ;"#,
    );
    assert_eq!(out.matches("const VERSION :").count(), 1, "{out}");

    // Not for an enum, whose variants could clash with them.
    let out = expand("enum E { ID }");
    assert!(!out.contains("Column"), "{out}");
}

const ORDER: &str = r#"
    #[immu(table = "orders")]
    struct Order {
        #[immu(references = Customer)] customer: Uuid,
        #[immu(references = crate::crm::Supplier, sql_type = "uuid")] supplier: Option<MyId>,
        total: i64,
    }
"#;

#[test]
fn references_name_the_referenced_table() {
    assert_eq!(errors(ORDER), Vec::<String>::new());
    let out = expand(ORDER);
    assert_contains(
        &out,
        r#"name : "customer" , field : "customer" , sql_type : < Uuid as :: immu_core :: ColumnType > :: SQL_TYPE ,
           nullable : < Uuid as :: immu_core :: ColumnType > :: NULLABLE , json : false ,
           references : :: core :: option :: Option :: Some (< Customer as :: immu_core :: Immutable > :: __TABLE_NAME) ,"#,
    );
    assert_contains(
        &out,
        r#"references : :: core :: option :: Option :: Some (< crate :: crm :: Supplier as :: immu_core :: Immutable > :: __TABLE_NAME) ,"#,
    );
    assert_contains(&out, r#"name : "total" , field : "total" , sql_type : < i64 as"#);
    assert_contains(&out, r#"json : false , references : :: core :: option :: Option :: None , }"#);
}

#[test]
fn references_check_that_the_column_is_a_uuid() {
    let out = expand(ORDER);
    assert_contains(
        &out,
        r#"const _ : () = :: core :: assert ! (:: core :: matches ! (< Uuid as :: immu_core :: ColumnType > :: SQL_TYPE . as_bytes () , b"uuid") , "field `customer` has #[immu(references = ...)]"#,
    );
    // Only where the type gives the column type: `sql_type` names it, and other fields have none.
    assert_eq!(out.matches(":: core :: assert !").count(), 1, "{out}");
}

#[test]
fn references_to_the_entity_itself_name_its_table() {
    let out = expand(
        r#"
        #[immu(table = "categories")]
        struct Category {
            #[immu(references = Self)] parent: Option<Uuid>,
            #[immu(references = Category)] previous: Option<Uuid>,
            #[immu(references = crate::tree::Category)] merged_into: Option<Uuid>,
        }
        "#,
    );
    assert_contains(&out, r#"field : "parent" , sql_type : < Option < Uuid > as"#);
    // Through `__TABLE_NAME`, which does not depend on `TABLE`: no cycle, whatever the spelling.
    for target in ["Self", "Category", "crate :: tree :: Category"] {
        let expected = format!(
            "references : :: core :: option :: Option :: Some (< {target} as :: immu_core :: Immutable > :: __TABLE_NAME) ,"
        );
        assert_contains(&out, &expected);
    }
}

#[test]
fn references_cannot_be_json() {
    assert_eq!(
        error("struct A { #[immu(json, references = Customer)] x: Uuid }"),
        "`references` cannot be combined with `json`: the column holds the referenced entity's `entity_id`, a uuid"
    );
}

#[test]
fn references_values_of_the_wrong_kind_say_what_to_write() {
    assert_eq!(
        error(r#"struct A { #[immu(references = "customers")] x: Uuid }"#),
        "`references` takes the type of the referenced entity, not a table name: write `references = Customer`, \
         where `Customer` is the struct that derives Immutable for table \"customers\""
    );
    assert_eq!(
        error(r#"struct A { #[immu(references = "crm::Customer")] x: Uuid }"#),
        "`references` takes a type, not a string: write `references = crm::Customer` without quotes"
    );
    let expected =
        "expected the referenced entity's type: `references = Customer`, where `Customer` derives Immutable";
    assert_eq!(error("struct A { #[immu(references)] x: Uuid }"), expected);
    assert_eq!(error("struct A { #[immu(references(Customer))] x: Uuid }"), expected);
    assert_eq!(error("struct A { #[immu(references = 1 + 2)] x: Uuid }"), expected);
    assert_eq!(
        error("struct A { #[immu(refrences = Customer)] x: Uuid }"),
        "Unknown field: `refrences`. Did you mean `references`?"
    );
    assert!(
        error("struct A { #[immu(references = A, references = B)] x: Uuid }")
            .contains("Duplicate field `references`")
    );
}

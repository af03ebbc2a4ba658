// `Option<T>` is the nullable column of `T`, also when spelled with its full path.
use immu_core::Immutable;

#[derive(Immutable)]
#[immu(table = "people")]
struct Person {
    name: String,
    nickname: Option<String>,
    born: std::option::Option<chrono::NaiveDate>,
    avatar: core::option::Option<Vec<u8>>,
}

fn main() {
    let nullable: Vec<(&str, &str, bool)> =
        Person::TABLE.columns.iter().map(|c| (c.name, c.sql_type, c.nullable)).collect();
    assert_eq!(
        nullable,
        [
            ("name", "text", false),
            ("nickname", "text", true),
            ("born", "date", true),
            ("avatar", "bytea", true)
        ]
    );
    let ddl = immu_core::schema::create_table::<Person>().unwrap();
    assert!(ddl.contains(r#""name"     text NOT NULL,"#), "{ddl}");
    assert!(ddl.contains(r#""nickname" text,"#), "{ddl}");
}

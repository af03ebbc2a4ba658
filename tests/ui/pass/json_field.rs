// `#[immu(json)]` stores any serde type as jsonb (or json with `sql_type`); an `Option` stored as
// JSON is a JSON null, so the column stays NOT NULL.
use immu_core::Immutable;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Settings {
    dark_mode: bool,
}

#[derive(Immutable)]
struct Profile {
    name: String,
    #[immu(json)]
    settings: Settings,
    #[immu(json)]
    tags: Vec<String>,
    #[immu(json)]
    previous: Option<Settings>,
    #[immu(json, sql_type = "json")]
    raw: std::collections::BTreeMap<String, i64>,
}

fn main() {
    let columns: Vec<(&str, &str, bool, bool)> =
        Profile::TABLE.columns.iter().map(|c| (c.name, c.sql_type, c.nullable, c.json)).collect();
    assert_eq!(
        columns,
        [
            ("name", "text", false, false),
            ("settings", "jsonb", false, true),
            ("tags", "jsonb", false, true),
            ("previous", "jsonb", false, true),
            ("raw", "json", false, true),
        ]
    );
}

// `#[immu(crate = "...")]` for a re-exported or renamed immu_core.
mod facade {
    pub use immu_core as persistence;
}

#[derive(facade::persistence::Immutable)]
#[immu(crate = "crate::facade::persistence", table = "notes")]
struct Note {
    text: String,
}

fn main() {
    use facade::persistence::Immutable as _;
    assert_eq!(Note::TABLE.name, "notes");
    assert_eq!(Note::TABLE.columns[0].sql_type, "text");
}

use immu_core::Immutable;

#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "mood", rename_all = "snake_case")]
enum Mood {
    Happy,
    Sad,
}

#[derive(Immutable)]
struct Diary {
    text: String,
    mood: Mood,
}

fn main() {}

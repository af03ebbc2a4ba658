use immu_core::Immutable;

struct Settings {
    dark_mode: bool,
}

#[derive(Immutable)]
struct Profile {
    name: String,
    #[immu(json)]
    settings: Settings,
}

fn main() {}

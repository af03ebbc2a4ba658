//! Compile tests of `#[derive(Immutable)]`: every error it reports (`ui/fail/`, with the expected
//! compiler output next to each file) and the inputs it must accept (`ui/pass/`, which also run).
//!
//! The `.stderr` files are pinned to the toolchain CI uses (rustc 1.95); regenerate them with
//! `TRYBUILD=overwrite cargo test -p immu-tests --test ui` and review the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/fail/*.rs");
    t.pass("ui/pass/*.rs");
}

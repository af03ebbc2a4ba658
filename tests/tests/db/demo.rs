//! The README's demo runs end to end.

use immu_core::Immutable;

use immu_tests::harness::{Db, TestResult};

immu_tests::tests![demo_runs_end_to_end];

async fn demo_runs_end_to_end(db: Db) -> TestResult {
    let pool = db.empty_database().await?;
    let mut story = Vec::new();
    immu_demo::run(&pool, &mut story).await.map_err(|e| e.to_string())?;
    let story = String::from_utf8(story)?;
    for expected in [
        "opened    Ada checking  version 1",
        "balance > 100.00 at quarter end: Ada savings 500.00",
        "Bob checking     50.00  owner Bob (Paris)",
        "Bob checking     80.00  owner Bob (Berlin)",
        "from Ada checking (balance then 70.00)",
        "find now: Err(Deleted)",
        "save of version 1 after later changes: Err(VersionConflict)",
        r#"ERROR: UPDATE on "accounts" refused: the table is append-only"#,
        r#"ERROR: UPDATE on "accounts_current" refused: the table is maintained by immu"#,
        "rows in accounts afterwards: 9",
        "column first_name",
        "check: ok",
        "  2       1      Grace B.     Hopper",
        "  3       2      Grace B.     Hopper",
        "; every chain verifies",
        "verify against the digest: intact false",
        "version 1: content changed since it was written",
        "digest: the chain heads it covered are as they were",
        "received  Inserted transfer  20.00 from Bob checking to Ada checking",
        "resumed from the cursor stored after the first: 2 more transfers (15.00, 5.00), none twice",
    ] {
        assert!(story.contains(expected), "{expected:?} missing from the demo's output:\n{story}");
    }
    // The story's money adds up: transfers move balances, they do not create any.
    let total: i64 = immu_demo::Account::query().fetch_all(&pool).await?.iter().map(|a| a.balance).sum();
    assert_eq!(total, 65_000, "100 + 500 + 50 dollars, in cents (the tamperer edited an old version)");
    pool.close().await;
    Ok(())
}

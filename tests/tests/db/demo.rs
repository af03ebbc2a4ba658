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
        "insert          -> version 1",
        "Err(NotFound)",
        "Err(VersionConflict)",
        "Err(Deleted)",
        r#"ERROR: UPDATE on "accounts" refused: the table is append-only"#,
        "rows in accounts afterwards: 5",
    ] {
        assert!(story.contains(expected), "{expected:?} missing from the demo's output:\n{story}");
    }
    // The story left one account with five versions, the last one live.
    let id: uuid::Uuid =
        sqlx::query_scalar("SELECT DISTINCT entity_id FROM accounts").fetch_one(&pool).await?;
    let history = immu_demo::Account::history(&pool, id).await?;
    assert_eq!(history.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert!(history[3].is_deleted() && !history[4].is_deleted());
    pool.close().await;
    Ok(())
}

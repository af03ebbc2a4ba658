//! Support for immu's integration tests: the entity types the tests use, their migrations, and
//! a harness that runs every test against a real PostgreSQL (a throwaway server unless
//! `DATABASE_URL` is set), each in a fresh database cloned from a migrated template.

pub mod harness;

/// Reads `feed` until a read delivers nothing: every change committed so far (the feed tests).
pub async fn drain<T: immu_core::Immutable>(
    feed: &mut immu_core::Feed<T>,
) -> Result<Vec<immu_core::feed::Change<T>>, immu_core::Error> {
    let mut all = Vec::new();
    loop {
        let batch = feed.read_batch().await?;
        if batch.is_empty() {
            return Ok(all);
        }
        all.extend(batch);
    }
}

pub mod models;
pub mod reliability;

/// The test tables' migrations (`tests/migrations/`), run after [`immu_core::MIGRATOR`].
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

//! Support for immu's integration tests: the entity types the tests use, their migrations, and
//! a harness that runs every test against a real PostgreSQL (a throwaway server unless
//! `DATABASE_URL` is set), each in a fresh database cloned from a migrated template.

pub mod harness;
pub mod models;
pub mod reliability;

/// The test tables' migrations (`tests/migrations/`), run after [`immu_core::MIGRATOR`].
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

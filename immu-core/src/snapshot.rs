//! A consistent picture of the whole database at one instant.

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::{Executor, Postgres};
use uuid::Uuid;

use crate::{Immutable, Query, Result, Versioned};

/// One instant at which every read resolves versions: queries, joins and single reads built from
/// the same snapshot see every versioned table as it stood at that instant.
///
/// ```no_run
/// # use immu_core::{Immutable, Snapshot};
/// # #[derive(Immutable)] #[immu(table = "customers")] struct Customer { name: String }
/// # #[derive(Immutable)] #[immu(table = "orders")] struct Order { #[immu(references = Customer)] customer_id: uuid::Uuid, total: i64 }
/// # async fn demo(pool: sqlx::PgPool, quarter_end: chrono::DateTime<chrono::Utc>) -> immu_core::Result<()> {
/// let then = Snapshot::at(quarter_end);
/// let customers = then.query::<Customer>().count(&pool).await?;
/// let orders = then.query::<Order>().fetch_all(&pool).await?;
/// let pairs = then.query::<Order>().join::<Customer>(Order::CUSTOMER_ID).fetch_all(&pool).await?;
/// # Ok(()) }
/// ```
///
/// An instant gives the same answer however often it is read once every transaction that was
/// open at that instant has ended: a version is stamped with the database clock when it is
/// appended, but becomes visible when its transaction commits. So a version appended before the
/// instant inside a transaction that commits after it appears when that transaction commits.
/// immu's own writes hold their transaction for a few milliseconds; a caller's transaction may
/// hold it longer. Read inside one `REPEATABLE READ` transaction when "now" must be exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Snapshot {
    at: DateTime<Utc>,
}

impl Snapshot {
    /// The snapshot at instant `at`.
    pub fn at(at: DateTime<Utc>) -> Self {
        Snapshot { at }
    }

    /// The snapshot at the database clock's current instant.
    // Spelled out (not `async fn`) to promise `Send` in the signature.
    #[allow(clippy::manual_async_fn)]
    pub fn now<'e, E>(db: E) -> impl Future<Output = Result<Self>> + Send + 'e
    where
        E: Executor<'e, Database = Postgres> + 'e,
    {
        async move {
            let at = sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(db).await?;
            Ok(Snapshot { at })
        }
    }

    /// Its instant.
    pub fn instant(&self) -> DateTime<Utc> {
        self.at
    }

    /// A list query over `T` as of this snapshot.
    pub fn query<T: Immutable>(&self) -> Query<T> {
        T::query().as_of(self.at)
    }

    /// One entity as of this snapshot (see [`Immutable::find_as_of`]).
    pub fn find<'e, T, E>(
        &self,
        db: E,
        entity_id: Uuid,
    ) -> impl Future<Output = Result<Versioned<T>>> + Send + 'e
    where
        T: Immutable,
        E: Executor<'e, Database = Postgres> + 'e,
    {
        T::find_as_of(db, entity_id, self.at)
    }
}

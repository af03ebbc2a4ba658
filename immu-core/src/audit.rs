//! Who wrote a version and why: [`Audit`], what a writer says, and [`Provenance`], what the
//! database stored with the version.
//!
//! See [`Provenance`](crate::Provenance) for the columns.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use sqlx::{Executor, Postgres};

use crate::Result;

tokio::task_local! {
    static SCOPE: Audit;
}

/// What a writer says about its writes: who (the actor: your application's user id, an email, a
/// service name), why (a reason), and free-form context (JSON: a request id, an IP, a ticket).
///
/// Give it for every write of a task (a request handler, a job) with [`scope`](Self::scope),
/// once, in middleware; for one call by scoping only that call; or for a whole database
/// transaction with [`set_local`](Self::set_local), which raw SQL in that transaction sees too.
/// An inner scope's fields override the outer one's; fields it leaves unset are inherited.
///
/// ```no_run
/// use immu_core::{Audit, Immutable};
/// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
/// # async fn demo(pool: sqlx::PgPool, id: uuid::Uuid) -> immu_core::Result<()> {
/// // Once per request, around the handler:
/// Audit::actor("ada@example.com")
///     .with_context(serde_json::json!({ "request_id": "r-42" }))
///     .scope(async {
///         // Every write in here records ada, and request r-42.
///         Account::modify(&pool, id, |a| a.balance += 10).await?;
///         // One call with a reason of its own (the actor is inherited):
///         Audit::reason("chargeback #7").scope(Account::modify(&pool, id, |a| a.balance -= 3)).await?;
///         Ok::<_, immu_core::Error>(())
///     })
///     .await?;
/// let latest = Account::find(&pool, id).await?;
/// assert_eq!(latest.provenance.actor.as_deref(), Some("ada@example.com"));
/// assert_eq!(latest.provenance.reason.as_deref(), Some("chargeback #7"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    /// Who: your application's user, service or job.
    pub actor: Option<String>,
    /// Why: free text.
    pub reason: Option<String>,
    /// Anything else, as JSON: a request id, an IP address, a ticket.
    pub context: Option<serde_json::Value>,
}

impl Audit {
    /// Nothing said yet.
    pub fn new() -> Audit {
        Audit::default()
    }

    /// An audit naming `actor`.
    pub fn actor(actor: impl Into<String>) -> Audit {
        Audit::new().with_actor(actor)
    }

    /// An audit giving `reason`.
    pub fn reason(reason: impl Into<String>) -> Audit {
        Audit::new().with_reason(reason)
    }

    /// An audit carrying `context`.
    pub fn context(context: serde_json::Value) -> Audit {
        Audit::new().with_context(context)
    }

    /// Sets the actor.
    pub fn with_actor(mut self, actor: impl Into<String>) -> Audit {
        self.actor = Some(actor.into());
        self
    }

    /// Sets the reason.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Audit {
        self.reason = Some(reason.into());
        self
    }

    /// Sets the context.
    pub fn with_context(mut self, context: serde_json::Value) -> Audit {
        self.context = Some(context);
        self
    }

    /// Runs `future` (any future, or a [`Patch`](crate::Patch)) with this audit applied to every
    /// write it makes (on this task: a future spawned with `tokio::spawn` starts without it).
    /// Fields this audit leaves unset are those of the scope the future runs in, when it first
    /// runs (so a scoped future built first and awaited inside another scope inherits from that
    /// one).
    pub fn scope<F: IntoFuture>(self, future: F) -> Scoped<F::IntoFuture> {
        Scoped { audit: self, merged: None, future: future.into_future() }
    }

    /// The audit of the current task's [`scope`](Self::scope), if any (empty otherwise).
    pub fn current() -> Audit {
        SCOPE.try_with(Audit::clone).unwrap_or_default()
    }

    /// Sets this audit for the rest of the caller's database transaction (`SET LOCAL immu.actor`,
    /// `immu.reason`, `immu.context`): every version the transaction writes without an audit of
    /// its own records it, raw SQL's included. Outside a transaction it lasts for one statement,
    /// so call it on a transaction. Fields left unset clear the setting. (A session-level `SET
    /// immu.actor` would outlive the transaction, and on a pooled connection reach its next user:
    /// immu never makes one.)
    ///
    /// ```no_run
    /// # use immu_core::{Audit, Immutable};
    /// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
    /// # async fn demo(pool: sqlx::PgPool, id: uuid::Uuid) -> immu_core::Result<()> {
    /// let mut tx = pool.begin().await?;
    /// Audit::actor("nightly-job").with_reason("interest").set_local(&mut *tx).await?;
    /// Account::modify(&mut *tx, id, |a| a.balance += 1).await?;
    /// sqlx::query("INSERT INTO audit_log (line) VALUES ('done')").execute(&mut *tx).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_local<'c, E>(&self, db: E) -> Result<()>
    where
        E: Executor<'c, Database = Postgres>,
    {
        sqlx::query(
            "SELECT pg_catalog.set_config('immu.actor', coalesce($1, ''), true), \
                    pg_catalog.set_config('immu.reason', coalesce($2, ''), true), \
                    pg_catalog.set_config('immu.context', coalesce($3::text, ''), true)",
        )
        .bind(&self.actor)
        .bind(&self.reason)
        .bind(&self.context)
        .execute(db)
        .await?;
        Ok(())
    }

    /// This audit's fields, and `outer`'s where this one has none.
    fn over(self, outer: Audit) -> Audit {
        Audit {
            actor: self.actor.or(outer.actor),
            reason: self.reason.or(outer.reason),
            context: self.context.or(outer.context),
        }
    }
}

pin_project_lite::pin_project! {
    /// A future running with an [`Audit`] in scope: [`Audit::scope`]'s.
    #[must_use = "futures do nothing unless awaited"]
    pub struct Scoped<F> {
        audit: Audit,
        merged: Option<Audit>,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Merged with the scope around it when first polled, then kept.
        let merged = this.merged.get_or_insert_with(|| this.audit.clone().over(Audit::current()));
        let future = this.future;
        SCOPE.sync_scope(merged.clone(), || future.poll(cx))
    }
}

/// Who wrote a version and why, as the database stored it with the version. Versions written
/// before immu's release 3 have none of it.
///
/// Every version records, in columns of its own row (release 3 of the machinery):
///
/// | column             | from                                                                   |
/// |--------------------|------------------------------------------------------------------------|
/// | `immu_actor`       | the write's [`Audit`], else the transaction's `immu.actor` setting      |
/// | `immu_reason`      | the write's [`Audit`], else `immu.reason`                                |
/// | `immu_context`     | the write's [`Audit`], else `immu.context` (JSON)                        |
/// | `immu_db_user`     | the session's database user (`session_user`), stamped by the database  |
/// | `immu_application` | the session's `application_name`, stamped by the database              |
/// | `immu_revert_of`   | the version a [`revert`](crate::Immutable::revert) restored             |
///
/// The database user and application are stamped by the insert trigger for every version, immu's
/// or raw SQL's: nothing is anonymous. The database user is evidence (no writer can record
/// another); the application name, like the actor, reason and context, is what the client says
/// (any session sets its own `application_name`). A table can require an actor
/// (`SELECT immu.configure_versioning('accounts', require_actor => true);`), and a version without
/// one is then refused with [`Error::ActorRequired`](crate::Error::ActorRequired).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The actor the write gave ([`Audit::actor`]) or its transaction set (`immu.actor`).
    pub actor: Option<String>,
    /// The reason the write gave, or its transaction set.
    pub reason: Option<String>,
    /// The context the write gave, or its transaction set.
    pub context: Option<serde_json::Value>,
    /// The database user of the session that wrote it (`session_user`), stamped by the database.
    pub db_user: Option<String>,
    /// The `application_name` of the session that wrote it, stamped by the database (a name the
    /// client chose, not evidence).
    pub application: Option<String>,
    /// On a version appended by [`revert`](crate::Immutable::revert): the version whose data it
    /// restored.
    pub revert_of: Option<i64>,
}

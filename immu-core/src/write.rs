//! The write path: every change appends a row.
//!
//! A write is one call of a routine that immu generates in the database for each versioned table
//! (`migrations/`, `immu.generate`), from the table's own columns:
//!
//! 1. `<table>_immu_write(...)` takes `pg_advisory_xact_lock(`[`lock_key`](crate::lock_key)`(table,
//!    entity))`, which queues the write behind other writers of that entity, reads the entity's
//!    latest version in a statement of its own (under READ COMMITTED it sees every earlier
//!    writer's commit), and appends the next version when that version allows it; otherwise it
//!    returns the latest version, which explains the refusal (deleted, not deleted, version
//!    moved) without another query;
//! 2. the history's insert trigger checks the version (the next number, the tombstone state
//!    machine), stamps it with the database clock, and makes it the entity's row in
//!    `<table>_current`; if another writer took the version number first, that fails: a stale
//!    `REPEATABLE READ`/`SERIALIZABLE` snapshot as [`Error::SerializationFailure`], a writer that
//!    bypassed the lock as [`Error::VersionConflict`]; a version is never written twice;
//! 3. the lock is held until the transaction ends: outside a caller's transaction the write is a
//!    `CALL` of `<table>_immu_commit`, a procedure that runs the function and commits before it
//!    returns (see [`run_write`] for why not a bare autocommit statement), inside one the function
//!    runs in a savepoint, so that a failure leaves that transaction usable.
//!
//! Every write carries the id of the version row it appends, chosen here. A procedure that
//! committed and then failed (a cancel or `statement_timeout` that lands after its `COMMIT`) is
//! recognised by looking that id up: the write is reported as stored, or as not written, or, when
//! the answer cannot be had (the connection broke), as [`Error::OutcomeUnknown`], never as
//! "nothing written". A write called again with the id of the entity's latest version returns
//! that version and writes nothing, so immu's own retry never stores a write twice.
//!
//! Read-modify-write takes the lock and reads with `<table>_immu_latest`, runs the closure, and
//! appends expecting the version it read, in one transaction. A partial update ([`Patch`]) does
//! the same in one statement the server runs: `<table>_immu_latest` and the write function called
//! with the new values computed from the latest version.
//!
//! An update, a partial update or a revert whose data equals the latest version's appends nothing
//! ([`Written::Unchanged`]): the write function returns that latest version (its id is not the
//! write's). Every write carries its [`Audit`](crate::Audit) (the task's scope) as parameters.

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use sea_query::{Expr, PostgresQueryBuilder};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Acquire, Arguments, Connection, PgConnection, Postgres, Row};
use uuid::Uuid;

use crate::lock::lock_key;
use crate::sql::WriteKind;
use crate::{Audit, Column, Error, Immutable, Result, Versioned, Written};

/// Inserts a new entity at version 1.
#[tracing::instrument(level = "debug", skip_all, fields(table = T::TABLE.name))]
pub(crate) async fn insert<'c, T, A>(db: A, value: T) -> Result<Versioned<T>>
where
    T: Immutable,
    A: Acquire<'c, Database = Postgres> + Send + 'c,
{
    let mut conn = db.acquire().await?;
    let target = Target::new::<T>(Uuid::now_v7(), Intent::Insert);
    let stored = write::<T>(&mut conn, WriteKind::Insert, &target, Some(&value)).await?;
    tracing::debug!(entity_id = %target.entity_id, "inserted version 1");
    Ok(stored.into_versioned())
}

/// Appends `value` as the next version, optionally only if the current version is `expected`.
#[tracing::instrument(level = "debug", skip(db, value), fields(table = T::TABLE.name))]
pub(crate) async fn update<'c, T, A>(
    db: A,
    entity_id: Uuid,
    expected: Option<i64>,
    value: T,
) -> Result<Written<T>>
where
    T: Immutable,
    A: Acquire<'c, Database = Postgres> + Send + 'c,
{
    let mut conn = db.acquire().await?;
    let target = Target::new::<T>(entity_id, Intent::Update { expected });
    write::<T>(&mut conn, WriteKind::Update, &target, Some(&value)).await
}

/// Appends a live copy of the data of version `to`, or of the version current at `at`.
#[tracing::instrument(level = "debug", skip(db), fields(table = T::TABLE.name))]
pub(crate) async fn revert<'c, T, A>(
    db: A,
    entity_id: Uuid,
    to: Option<i64>,
    at: Option<DateTime<Utc>>,
) -> Result<Written<T>>
where
    T: Immutable,
    A: Acquire<'c, Database = Postgres> + Send + 'c,
{
    let mut conn = db.acquire().await?;
    let mut target = Target::new::<T>(entity_id, Intent::Revert { to });
    target.revert_at = at.map(crate::sql::pg_instant);
    write::<T>(&mut conn, WriteKind::Revert, &target, None).await
}

/// Read-modify-write under the entity's lock.
#[tracing::instrument(level = "debug", skip(db, f), fields(table = T::TABLE.name))]
pub(crate) async fn modify<'c, T, A, F, E>(db: A, entity_id: Uuid, f: F) -> std::result::Result<Written<T>, E>
where
    T: Immutable,
    A: Acquire<'c, Database = Postgres> + Send + 'c,
    F: FnOnce(&mut T) -> std::result::Result<(), E> + Send,
    E: From<Error>,
{
    let mut conn = db.acquire().await.map_err(Error::from)?;
    let key = lock_key(T::TABLE.name, entity_id);
    let lock_latest = T::__sql().lock_latest.as_str();
    let mut tx = Connection::begin(&mut *conn).await.map_err(Error::from)?;
    let latest = match sqlx::query(lock_latest).bind(entity_id).bind(key).fetch_optional(&mut *tx).await {
        // The table changed since this connection prepared the statement: again, freshly prepared.
        Err(err) if stale_statement(&err) => {
            tx.rollback().await.map_err(Error::from)?;
            conn.clear_cached_statements().await.map_err(Error::from)?;
            tx = Connection::begin(&mut *conn).await.map_err(Error::from)?;
            sqlx::query(lock_latest).bind(entity_id).bind(key).fetch_optional(&mut *tx).await
        }
        other => other,
    };
    let latest = match latest {
        Ok(row) => row,
        Err(err) => {
            let err = write_error::<T>(err, entity_id, Intent::Update { expected: None });
            drop(tx);
            return Err(diagnose::<T>(&mut conn, err).await.into());
        }
    };
    let current = match latest {
        None => Err(Error::NotFound { table: T::TABLE.name, entity_id, version: None }),
        Some(row) => Ok(Versioned::<T>::decode_named(&row).map_err(Error::from)?),
    }?;
    if let Some(deleted_at) = current.deleted_at {
        return Err(
            Error::Deleted { table: T::TABLE.name, entity_id, version: current.version, deleted_at }.into()
        );
    }
    let mut value = current.data;
    f(&mut value)?;
    let target = Target::new::<T>(entity_id, Intent::Update { expected: Some(current.version) });
    let args = target.args(Some(&value)).map_err(Error::from)?;
    let row = sqlx::query_with(T::__sql().write(WriteKind::Update).statement.as_str(), args)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| write_error::<T>(e, entity_id, target.intent))?;
    let appended = written::<T>(Outcome::decode(row.as_ref(), &target).map_err(Error::from)?, &target)?;
    if let Err(err) = tx.commit().await {
        return Err(commit_error::<T>(err, &target).into());
    }
    Ok(appended)
}

/// Appends a tombstone carrying the latest data.
#[tracing::instrument(level = "debug", skip(db), fields(table = T::TABLE.name))]
pub(crate) async fn delete<'c, T, A>(db: A, entity_id: Uuid) -> Result<Versioned<T>>
where
    T: Immutable,
    A: Acquire<'c, Database = Postgres> + Send + 'c,
{
    let mut conn = db.acquire().await?;
    let target = Target::new::<T>(entity_id, Intent::Delete);
    Ok(write::<T>(&mut conn, WriteKind::Delete, &target, None).await?.into_versioned())
}

/// Appends a live copy of a tombstone's data.
#[tracing::instrument(level = "debug", skip(db), fields(table = T::TABLE.name))]
pub(crate) async fn undelete<'c, T, A>(db: A, entity_id: Uuid) -> Result<Versioned<T>>
where
    T: Immutable,
    A: Acquire<'c, Database = Postgres> + Send + 'c,
{
    let mut conn = db.acquire().await?;
    let target = Target::new::<T>(entity_id, Intent::Undelete);
    Ok(write::<T>(&mut conn, WriteKind::Undelete, &target, None).await?.into_versioned())
}

/// A partial update: a new version that changes only the named columns, each to a value or a
/// sea-query expression over the entity's latest version, computed by the database under the
/// entity's lock. Built by [`Immutable::patch`]; runs when awaited, in one round trip (a `CALL`
/// outside a transaction, one statement in a savepoint inside yours).
///
/// Columns it does not set keep the latest version's values; the version keeps the latest
/// version's shape. Like an update it fails with [`Error::NotFound`] or [`Error::Deleted`] and
/// writes nothing; like every write it appends nothing when the result equals the latest version
/// ([`Written::Unchanged`]).
///
/// ```no_run
/// use immu_core::{Immutable, sea_query::{Expr, ExprTrait}};
/// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
/// # async fn demo(pool: sqlx::PgPool, id: uuid::Uuid) -> immu_core::Result<()> {
/// // balance = balance + 30, owner = 'bob': no read round trip, no other field needed.
/// let written = Account::patch(&pool, id)
///     .set(Account::BALANCE, Expr::col(Account::BALANCE).add(30))
///     .set(Account::OWNER, "bob")
///     .await?;
/// println!("version {} has balance {}", written.version, written.balance);
/// # Ok(()) }
/// ```
#[must_use = "a patch does nothing until it is awaited"]
pub struct Patch<'c, T, A> {
    db: A,
    entity_id: Uuid,
    sets: Vec<(&'static str, Expr)>,
    entity: PhantomData<fn() -> (T, &'c ())>,
}

impl<'c, T: Immutable, A> Patch<'c, T, A> {
    pub(crate) fn new(db: A, entity_id: Uuid) -> Self {
        Patch { db, entity_id, sets: Vec::new(), entity: PhantomData }
    }

    /// Sets `column` to `value`: a value (`30`, `"bob"`) or an expression over the latest version's
    /// columns (`Expr::col(Account::BALANCE).add(30)`). Setting a column twice keeps the last.
    pub fn set(mut self, column: Column<T>, value: impl Into<Expr>) -> Self {
        let value = value.into();
        match self.sets.iter_mut().find(|(name, _)| *name == column.name()) {
            Some(set) => set.1 = value,
            None => self.sets.push((column.name(), value)),
        }
        self
    }
}

impl<'c, T, A> IntoFuture for Patch<'c, T, A>
where
    T: Immutable,
    A: Acquire<'c, Database = Postgres> + Send + 'c,
{
    type Output = Result<Written<T>>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<Written<T>>> + Send + 'c>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(patch::<T, A>(self.db, self.entity_id, self.sets))
    }
}

/// Runs a partial update (see [`Patch`]).
#[tracing::instrument(level = "debug", skip(db, sets), fields(table = T::TABLE.name))]
async fn patch<'c, T, A>(db: A, entity_id: Uuid, sets: Vec<(&'static str, Expr)>) -> Result<Written<T>>
where
    T: Immutable,
    A: Acquire<'c, Database = Postgres> + Send + 'c,
{
    let mut rendered = Vec::with_capacity(sets.len());
    for (column, value) in sets {
        let Some(def) = T::TABLE.column(column) else {
            return Err(Error::UnknownColumn { table: T::TABLE.name, column: column.to_owned() });
        };
        rendered.push((column, def.sql_type, render(value)));
    }
    let columns: Vec<&str> = rendered.iter().map(|(c, _, _)| *c).collect();
    let statement = crate::sql::patch(&T::TABLE, &rendered);
    let mut conn = db.acquire().await?;
    let target = Target::new::<T>(entity_id, Intent::Patch);
    let call = T::__sql().patch_call.as_str();
    let text = statement.as_str();
    let first = Statement::Patch { text, args: target.patch_args(&columns, None)? };
    let call_args = || target.patch_args(&columns, Some(text));
    let outcome = match run_write::<T>(&mut conn, first, call, &target, call_args).await {
        Err(Error::Database(err)) if stale_statement(&err) => {
            conn.clear_cached_statements().await?;
            let again = Statement::Patch { text, args: target.patch_args(&columns, None)? };
            run_write::<T>(&mut conn, again, call, &target, call_args).await
        }
        other => other,
    };
    match outcome.map(|outcome| written(outcome, &target)) {
        // For an entity that upcasts, no row also means a latest version of an older shape.
        Ok(Err(Error::NotFound { .. })) if T::TABLE.upcast.is_some() => {
            Err(older_shape::<T>(&mut conn, entity_id).await)
        }
        Ok(result) => result,
        Err(err) => Err(diagnose::<T>(&mut conn, err).await),
    }
}

/// Why a partial update of an upcasting entity found nothing to patch: its latest version is of
/// an older shape ([`Error::OlderShape`]), or it does not exist.
async fn older_shape<T: Immutable>(conn: &mut PgConnection, entity_id: Uuid) -> Error {
    let sql = format!(
        "SELECT version, immu_shape FROM {} WHERE entity_id = $1",
        crate::sql::quote(&crate::sql::current_table_name(T::TABLE.name))
    );
    let found: sqlx::Result<Option<(i64, Option<i32>)>> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(entity_id).fetch_optional(&mut *conn).await;
    match found {
        Ok(Some((version, Some(shape)))) if shape < T::TABLE.shape => {
            Error::OlderShape { table: T::TABLE.name, entity_id, version, shape }
        }
        Ok(_) => Error::NotFound { table: T::TABLE.name, entity_id, version: None },
        Err(err) => err.into(),
    }
}

/// The SQL of a value or expression, its values inlined (escaped by sea-query): a partial
/// update's statement is passed whole to the table's committing procedure.
fn render(value: Expr) -> String {
    let select = sea_query::Query::select().expr(value).to_string(PostgresQueryBuilder);
    select.strip_prefix("SELECT ").map(str::to_owned).unwrap_or(select)
}

/// The statement a write runs inside a caller's transaction: one of the cached write statements,
/// or a partial update's, built for the call (not kept as a prepared statement).
enum Statement<'a> {
    Cached(&'a str),
    Patch { text: &'a str, args: PgArguments },
}

/// What a write meant to do; decides which error explains a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    Insert,
    Update {
        expected: Option<i64>,
    },
    Delete,
    Undelete,
    /// To version `to` (or to the version current at an instant: `None`).
    Revert {
        to: Option<i64>,
    },
    Patch,
}

/// The version row a write appends: its id (chosen once, so that every attempt of the write
/// carries it), its entity, what the write means, and who writes it and why.
#[derive(Debug, Clone)]
struct Target {
    table: &'static str,
    id: Uuid,
    entity_id: Uuid,
    intent: Intent,
    audit: Audit,
    revert_at: Option<DateTime<Utc>>,
    shape: i32,
}

impl Target {
    fn new<T: Immutable>(entity_id: Uuid, intent: Intent) -> Target {
        Target {
            table: T::TABLE.name,
            id: Uuid::now_v7(),
            entity_id,
            intent,
            audit: Audit::current(),
            revert_at: None,
            shape: T::TABLE.shape,
        }
    }

    /// The bind arguments of a write statement (see [`crate::sql::Write`]); `value` for the
    /// writes that carry data.
    fn args<T: Immutable>(&self, value: Option<&T>) -> sqlx::Result<PgArguments> {
        let mut args = PgArguments::default();
        args.add(self.id).map_err(sqlx::Error::Encode)?;
        args.add(self.entity_id).map_err(sqlx::Error::Encode)?;
        args.add(self.intent.expected()).map_err(sqlx::Error::Encode)?;
        args.add(lock_key(self.table, self.entity_id)).map_err(sqlx::Error::Encode)?;
        args.add(column_names::<T>()).map_err(sqlx::Error::Encode)?;
        args.add(T::TABLE.shape).map_err(sqlx::Error::Encode)?;
        self.add_audit(&mut args)?;
        if let Some(value) = value {
            value.__encode(&mut args).map_err(sqlx::Error::Encode)?;
        }
        if let Intent::Revert { to } = self.intent {
            args.add(to).map_err(sqlx::Error::Encode)?;
            args.add(self.revert_at).map_err(sqlx::Error::Encode)?;
        }
        Ok(args)
    }

    /// Binds the write's actor, reason and context.
    fn add_audit(&self, args: &mut PgArguments) -> sqlx::Result<()> {
        args.add(self.audit.actor.as_deref()).map_err(sqlx::Error::Encode)?;
        args.add(self.audit.reason.as_deref()).map_err(sqlx::Error::Encode)?;
        args.add(self.audit.context.as_ref()).map_err(sqlx::Error::Encode)?;
        Ok(())
    }

    /// The bind arguments of a partial update's statement (see [`crate::sql::patch`]); with `call`,
    /// also the statement itself, for the table's committing procedure.
    fn patch_args(&self, columns: &[&str], call: Option<&str>) -> sqlx::Result<PgArguments> {
        let mut args = PgArguments::default();
        args.add(self.entity_id).map_err(sqlx::Error::Encode)?;
        args.add(lock_key(self.table, self.entity_id)).map_err(sqlx::Error::Encode)?;
        args.add(self.id).map_err(sqlx::Error::Encode)?;
        args.add(columns).map_err(sqlx::Error::Encode)?;
        self.add_audit(&mut args)?;
        if let Some(statement) = call {
            args.add(statement).map_err(sqlx::Error::Encode)?;
        }
        args.add(self.shape).map_err(sqlx::Error::Encode)?;
        Ok(args)
    }
}

/// The names of `T`'s own columns: the columns its writes set (an update keeps the latest value
/// of the table's other columns, an insert gives them their default).
fn column_names<T: Immutable>() -> Vec<&'static str> {
    T::TABLE.columns.iter().map(|c| c.name).collect()
}

impl Intent {
    /// The version an update expects to follow, if any.
    fn expected(self) -> Option<i64> {
        match self {
            Intent::Update { expected } => expected,
            Intent::Insert | Intent::Delete | Intent::Undelete | Intent::Revert { .. } | Intent::Patch => {
                None
            }
        }
    }
}

/// What a write routine returned (see [`crate::sql::Write`]).
enum Outcome<T> {
    /// The stored version.
    Stored(Versioned<T>),
    /// The write's data equals the latest version's, which it returned: nothing appended.
    Unchanged(Versioned<T>),
    /// The entity's latest version refused the write: its number and tombstone.
    Refused { version: i64, deleted_at: Option<DateTime<Utc>> },
    /// The entity does not exist.
    Missing,
}

impl<T: Immutable> Outcome<T> {
    /// Decodes a routine's row: every column of the table, by name. A version whose id is not the
    /// write's is the latest one, returned unchanged.
    fn decode(row: Option<&PgRow>, target: &Target) -> sqlx::Result<Outcome<T>> {
        use crate::sql::{DELETED_AT, ENTITY_ID, ID, VERSION};
        let Some(row) = row else { return Ok(Outcome::Missing) };
        let id: Option<Uuid> = row.try_get(ID)?;
        let entity: Option<Uuid> = row.try_get(ENTITY_ID)?;
        let version: Option<i64> = row.try_get(VERSION)?;
        let deleted_at: Option<DateTime<Utc>> = row.try_get(DELETED_AT)?;
        Ok(match (id, entity, version) {
            (Some(id), ..) if id == target.id => Outcome::Stored(Versioned::decode_named(row)?),
            (Some(_), ..) => Outcome::Unchanged(Versioned::decode_named(row)?),
            (None, Some(_), Some(version)) => Outcome::Refused { version, deleted_at },
            _ => Outcome::Missing,
        })
    }
}

/// Runs one write and explains its outcome.
async fn write<T: Immutable>(
    conn: &mut PgConnection,
    kind: WriteKind,
    target: &Target,
    value: Option<&T>,
) -> Result<Written<T>> {
    let sql = T::__sql().write(kind);
    let statement = || Statement::Cached(&sql.statement);
    let outcome = match run_write::<T>(conn, statement(), &sql.call, target, || target.args(value)).await {
        // The table changed since this connection prepared the statement (its result columns
        // differ): PostgreSQL refused it before running anything. Again, freshly prepared.
        Err(Error::Database(err)) if stale_statement(&err) => {
            conn.clear_cached_statements().await?;
            run_write::<T>(conn, statement(), &sql.call, target, || target.args(value)).await
        }
        other => other,
    };
    match outcome {
        Ok(outcome) => written(outcome, target),
        Err(err) => Err(diagnose::<T>(conn, err).await),
    }
}

/// Runs one write: in the caller's transaction, the write function in a savepoint (so that a
/// failure leaves that transaction usable); otherwise the `CALL` of the table's procedure, which
/// runs the function and commits before it returns: one round trip. Returns what the routine
/// returned (see [`crate::sql::Write`]).
///
/// Not a bare autocommit statement, which would also be one round trip: with sqlx 0.9.0 a `BEGIN`
/// whose future is dropped mid-flight leaves the pooled connection inside a transaction that
/// sqlx does not know about (launchbadge/sqlx#4393), and an autocommit write on that connection
/// would be acknowledged and then never committed. The reliability suite's `cancelled-writes`
/// scenario caught this. A procedure's `COMMIT` is refused inside a transaction block (SQLSTATE
/// 2D000), so on such a connection the `CALL` fails and writes nothing: immu rolls the unknown
/// transaction back, which returns the connection to the state sqlx believes it is in, and
/// calls again with the same version row id.
///
/// A procedure commits before it returns, so a `CALL` that fails may have committed: a cancel or
/// `statement_timeout` can land after its `COMMIT`. Such a failure is checked: the version row is
/// looked up by its id on the same connection (the server has finished the `CALL` when it reports
/// the error, so the answer is final). Found, the write is reported as stored; not found, the
/// error stands, and it means nothing was written; not checkable (the connection broke), the
/// outcome is [`Error::OutcomeUnknown`].
///
/// `args` builds the bind arguments (twice when the call is repeated, rather than copying them on
/// every write).
async fn run_write<T: Immutable>(
    conn: &mut PgConnection,
    statement: Statement<'_>,
    call: &str,
    target: &Target,
    args: impl Fn() -> sqlx::Result<PgArguments>,
) -> Result<Outcome<T>> {
    let fail = |e: sqlx::Error| write_error::<T>(e, target.entity_id, target.intent);
    if conn.is_in_transaction() {
        let mut tx = Connection::begin(&mut *conn).await?;
        let (text, persistent, args) = match statement {
            Statement::Cached(text) => (text, true, args()?),
            Statement::Patch { text, args } => (text, false, args),
        };
        let row = sqlx::query_with(sqlx::AssertSqlSafe(text), args)
            .persistent(persistent)
            .fetch_optional(&mut *tx)
            .await
            .map_err(fail)?;
        tx.commit().await?;
        return Ok(Outcome::decode(row.as_ref(), target)?);
    }
    let outcome = match sqlx::query_with(sqlx::AssertSqlSafe(call), args()?).fetch_one(&mut *conn).await {
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("2D000") => {
            tracing::warn!(
                "the connection was inside a transaction sqlx does not track (a cancelled BEGIN, \
                 launchbadge/sqlx#4393, or a BEGIN run by hand): rolled it back before writing"
            );
            sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
            sqlx::query_with(sqlx::AssertSqlSafe(call), args()?).fetch_one(&mut *conn).await
        }
        other => other,
    };
    match outcome {
        // (A missing entity leaves every column NULL.)
        Ok(row) => Ok(Outcome::decode(Some(&row), target)?),
        Err(err) if may_have_committed(&err) => match stored_by_id::<T>(conn, target).await {
            Ok(Some(stored)) => {
                tracing::warn!(id = %target.id, error = %err, "the write's CALL failed after it committed: the version is stored");
                Ok(Outcome::Stored(stored))
            }
            Ok(None) if matches!(err, sqlx::Error::Database(_)) => Err(fail(err)),
            Ok(None) | Err(_) => Err(unknown(target, err)),
        },
        Err(err) => Err(fail(err)),
    }
}

/// Whether `err` is PostgreSQL's refusal of a prepared statement whose result columns changed
/// since it was prepared (an `ALTER TABLE` ran in between; SQLSTATE 0A000). Nothing ran.
fn stale_statement(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("0A000")
        && db.message().contains("cached plan must not change result type"))
}

/// Explains a write that failed because the table does not match what immu expects (its routine
/// does not exist with these arguments, a column is missing): the table does not exist
/// ([`Error::MissingTable`]), or [`immu.check_table`] names the differences
/// ([`Error::SchemaDrift`]). Other errors pass through.
async fn diagnose<T: Immutable>(conn: &mut PgConnection, err: Error) -> Error {
    let mismatch = match &err {
        Error::MachineryMismatch { .. } => true,
        Error::Database(sqlx::Error::Database(db)) => db.code().as_deref() == Some("42703"),
        _ => false,
    };
    if !mismatch {
        return err;
    }
    let table = T::TABLE.name;
    let found: sqlx::Result<(bool, Vec<(String, String)>)> = async {
        let name = crate::sql::quote(table);
        let exists: bool = sqlx::query_scalar("SELECT pg_catalog.to_regclass($1) IS NOT NULL")
            .bind(&name)
            .fetch_one(&mut *conn)
            .await?;
        if !exists {
            return Ok((false, Vec::new()));
        }
        let checkable: bool =
            sqlx::query_scalar("SELECT pg_catalog.to_regprocedure('immu.check_table(regclass)') IS NOT NULL")
                .fetch_one(&mut *conn)
                .await?;
        if !checkable {
            return Ok((true, Vec::new()));
        }
        let problems = sqlx::query_as("SELECT problem, fix FROM immu.check_table($1::regclass)")
            .bind(&name)
            .fetch_all(&mut *conn)
            .await?;
        Ok((true, problems))
    }
    .await;
    match found {
        Ok((false, _)) => Error::MissingTable { table: table.to_owned() },
        Ok((true, problems)) if !problems.is_empty() => Error::SchemaDrift {
            table: table.to_owned(),
            differences: problems.into_iter().map(|(d, f)| crate::schema::Difference::new(d, f)).collect(),
        },
        _ => err,
    }
}

/// The version a write stored, looked up by its version row id.
async fn stored_by_id<T: Immutable>(
    conn: &mut PgConnection,
    target: &Target,
) -> Result<Option<Versioned<T>>> {
    let row = sqlx::query(T::__sql().by_id.as_str())
        .bind(target.entity_id)
        .bind(target.id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.as_ref().map(Versioned::decode).transpose()?)
}

/// Whether a `CALL` that failed with `err` may have committed first. The errors the write
/// statements raise before the `COMMIT` (refusals, constraint violations, conflicts, bad values)
/// cannot; an interrupt (a cancel, `statement_timeout`, a shutdown), a resource error or a broken
/// connection can land after it.
fn may_have_committed(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or_default();
            code == "57014"
                || code.starts_with("57P")
                || code.starts_with("53")
                || code.starts_with("58")
                || code.starts_with("XX")
        }
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => {
            true
        }
        _ => false,
    }
}

/// [`Error::OutcomeUnknown`] for `target`.
fn unknown(target: &Target, source: sqlx::Error) -> Error {
    Error::OutcomeUnknown {
        table: target.table,
        entity_id: target.entity_id,
        version_id: target.id,
        source: Box::new(source),
    }
}

/// The failure of the `COMMIT` of immu's own transaction (read-modify-write): a server's refusal
/// means nothing was committed; anything else (the connection broke) leaves the outcome unknown.
fn commit_error<T: Immutable>(err: sqlx::Error, target: &Target) -> Error {
    match err {
        sqlx::Error::Database(_) => write_error::<T>(err, target.entity_id, target.intent),
        other => unknown(target, other),
    }
}

/// The outcome of a write (see [`crate::sql::Write`]): the stored version, the unchanged latest
/// one, or the error the entity's latest version explains.
fn written<T: Immutable>(outcome: Outcome<T>, target: &Target) -> Result<Written<T>> {
    let (table, entity_id) = (target.table, target.entity_id);
    let (version, deleted_at) = match outcome {
        Outcome::Stored(stored) => {
            tracing::debug!(%entity_id, version = stored.version, intent = ?target.intent, "appended version");
            return Ok(Written::Appended(stored));
        }
        Outcome::Unchanged(latest) => {
            tracing::debug!(%entity_id, version = latest.version, intent = ?target.intent, "unchanged: nothing appended");
            return Ok(Written::Unchanged(latest));
        }
        Outcome::Missing => return Err(Error::NotFound { table, entity_id, version: None }),
        Outcome::Refused { version, deleted_at } => (version, deleted_at),
    };
    Err(match (target.intent, deleted_at) {
        (
            Intent::Update { .. } | Intent::Delete | Intent::Revert { .. } | Intent::Patch,
            Some(deleted_at),
        ) => Error::Deleted { table, entity_id, version, deleted_at },
        // Nothing to revert to: no such version, or the entity did not exist yet at the instant.
        (Intent::Revert { to }, None) => Error::NotFound { table, entity_id, version: to },
        (Intent::Undelete, None) => Error::NotDeleted { table, entity_id, version },
        (Intent::Update { expected }, None) => {
            Error::VersionConflict { table, entity_id, expected, actual: Some(version) }
        }
        // Undelete of a tombstone and delete of a live version always append; an insert returns
        // its row (or fails in the trigger).
        (Intent::Undelete, Some(_)) | (Intent::Delete | Intent::Patch, None) | (Intent::Insert, _) => {
            Error::VersionConflict { table, entity_id, expected: None, actual: Some(version) }
        }
    })
}

/// Maps a write routine's failure. A transaction whose `REPEATABLE READ`/`SERIALIZABLE` snapshot
/// is older than another writer's commit (SQLSTATE 40001, "stale snapshot" or "concurrent
/// update") is [`Error::SerializationFailure`], like every 40001. Another writer took the
/// version number first when:
///
/// * the trigger found the version taken (IMMU2, "would skip or repeat a version"), which only a
///   writer that bypassed the advisory lock can cause;
/// * a unique violation on the table's primary key;
///
/// and each is [`Error::VersionConflict`]. A lock wait cut short by `lock_timeout` or
/// `statement_timeout` is [`Error::LockTimeout`]. A routine of the table that does not exist with
/// the arguments immu passes is [`Error::MachineryMismatch`] (the table or its machinery is missing,
/// from an older release, or its columns differ from the struct's: [`schema::check`](crate::schema::check)
/// says which). Anything else converts as usual.
fn write_error<T: Immutable>(err: sqlx::Error, entity_id: Uuid, intent: Intent) -> Error {
    if let sqlx::Error::Database(db) = &err {
        let table = T::TABLE.name;
        let code = db.code();
        let routine = format!("{table}_immu_");
        if code.as_deref() == Some("42883")
            && (db.message().starts_with(&format!("procedure {routine}"))
                || db.message().starts_with(&format!("function {routine}")))
        {
            return Error::MachineryMismatch { table, message: db.message().to_owned() };
        }
        let pkey = db.constraint().is_some_and(|c| c.strip_suffix("_pkey") == Some(table));
        let taken = (db.is_unique_violation() && pkey)
            || (code.as_deref() == Some(crate::error::INVALID_HISTORY_SQLSTATE)
                && db.message().contains("skip or repeat"));
        if taken {
            return Error::VersionConflict { table, entity_id, expected: intent.expected(), actual: None };
        }
        if code.as_deref() == Some("55P03")
            || (code.as_deref() == Some("57014") && db.message().contains("statement timeout"))
        {
            return Error::LockTimeout { table, entity_id };
        }
    }
    err.into()
}

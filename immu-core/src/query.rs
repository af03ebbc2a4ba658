//! The temporal query builder: lists of entities resolved to their current version, their
//! version as of an instant, or every version, with filters that apply to the resolved version.

use std::future::Future;
use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use futures_core::Stream;
use futures_util::{StreamExt, TryStreamExt};
use sea_query::extension::postgres::PgFunc;
use sea_query::{
    Alias, Condition, Expr, ExprTrait, IntoCondition, JoinType, Order, PostgresQueryBuilder, SelectStatement,
};
use sea_query_sqlx::SqlxBinder;
use sqlx::postgres::PgRow;
use sqlx::{Executor, Postgres, Row};
use uuid::Uuid;

use crate::resolve::{self, At};
use crate::sql::{ENTITY_ID, VALID_FROM, VERSION, all_columns};
use crate::{Column, Error, Immutable, Result, TableDef, Versioned};

/// Which versions a [`Query`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resolution {
    /// Each entity's current version: the highest one.
    Current,
    /// Each entity's version as of an instant: the highest one whose `valid_from` is at or
    /// before it. Entities created later are absent.
    AsOf(DateTime<Utc>),
    /// Every stored version, each a row of its own (history).
    AllVersions,
}

/// A list query over entity `T`, built with [`Immutable::query`]. Nothing runs until a
/// `fetch*`, [`count`](Query::count) or [`exists`](Query::exists) call.
///
/// Every mode resolves versions first and filters second: a filter, an order, a limit, a count
/// see only the versions the mode selected, never an older version of the same entity. An
/// account whose balance was 200 at version 1 and is 50 now is not "current with balance >
/// 100", and it is "as of (an instant at version 1) with balance > 100".
///
/// | call | versions | SQL, per row of the table |
/// |------|----------|----------------------------|
/// | `T::query()` | current, tombstoned entities hidden | the entity's row in `<table>_current` (its highest version), `deleted_at IS NULL` |
/// | `.as_of(t)` | current at `t`, deleted-at-`t` hidden | that row if its `valid_from <= t`, else the entity's latest version with `valid_from <= t`; `deleted_at IS NULL` |
/// | `.with_deleted()` | the same, tombstones included (`is_deleted()`) | drops `deleted_at IS NULL` |
/// | `.all_versions()` | every version (history), tombstones included | none; `.changed_between(a, b)` bounds `valid_from` |
///
/// The generated SQL, as [`to_sql`](Query::to_sql) shows it:
///
/// ```
/// use immu_core::{Immutable, sea_query::ExprTrait};
///
/// #[derive(Immutable)]
/// #[immu(table = "accounts")]
/// struct Account { owner: String, balance: i64 }
///
/// let current = Account::query().filter(Account::BALANCE.gt(100)).to_sql();
/// assert_eq!(current, concat!(
///     r#"SELECT "accounts"."id", "accounts"."entity_id", "accounts"."version", "accounts"."valid_from", "accounts"."deleted_at", "#,
///     r#""accounts"."immu_actor", "accounts"."immu_reason", "accounts"."immu_context", "accounts"."immu_db_user", "accounts"."immu_application", "accounts"."immu_revert_of", "#,
///     r#""accounts"."owner", "accounts"."balance" "#,
///     r#"FROM "accounts_current" AS "accounts" "#,
///     r#"WHERE "accounts"."deleted_at" IS NULL AND "accounts"."balance" > $1"#,
/// ));
///
/// let t = chrono::Utc::now();
/// let as_of = Account::query().as_of(t).filter(Account::BALANCE.gt(100)).to_sql();
/// // Entities unchanged since t: their current row...
/// assert!(as_of.contains(r#"FROM "accounts_current" AS "immu_c" WHERE "immu_c"."valid_from" <= $1 UNION ALL"#));
/// // ...the others, in key order: one probe of the history's primary key each.
/// assert!(as_of.contains(r#"(SELECT "entity_id" FROM "accounts_current" WHERE "valid_from" > $2 ORDER BY "entity_id" ASC) AS "immu_c""#));
/// assert!(as_of.contains(r#"FROM "accounts" AS "immu_v" WHERE "immu_v"."entity_id" = "immu_c"."entity_id" AND "immu_v"."valid_from" <= $3 ORDER BY "immu_v"."valid_from" DESC, "immu_v"."version" DESC LIMIT $4"#));
/// assert!(as_of.ends_with(r#") AS "accounts" WHERE "accounts"."deleted_at" IS NULL AND "accounts"."balance" > $5"#));
///
/// let history = Account::query().all_versions().changed_between(t, t).to_sql();
/// assert!(history.ends_with(r#"FROM "accounts" WHERE "accounts"."valid_from" >= $1 AND "accounts"."valid_from" < $2 ORDER BY "accounts"."entity_id" ASC, "accounts"."version" ASC"#));
/// ```
///
/// Running it:
///
/// ```no_run
/// # use immu_core::{Immutable, sea_query::ExprTrait};
/// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
/// # async fn demo(pool: sqlx::PgPool, last_quarter: chrono::DateTime<chrono::Utc>) -> immu_core::Result<()> {
/// use futures_util::TryStreamExt;
///
/// let rich_now = Account::query().filter(Account::BALANCE.gt(100)).fetch_all(&pool).await?;
/// let rich_then = Account::query().as_of(last_quarter).filter(Account::BALANCE.gt(100)).count(&pool).await?;
/// let mut every_change = Account::query().all_versions().order_by_time().fetch(&pool);
/// while let Some(version) = every_change.try_next().await? {
///     println!("{} v{} at {}: {}", version.entity_id, version.version, version.valid_from, version.balance);
/// }
/// # Ok(()) }
/// ```
#[must_use = "a query does nothing until it is fetched"]
pub struct Query<T> {
    resolution: Resolution,
    deleted: bool,
    from_history: bool,
    changed_from: Option<DateTime<Utc>>,
    changed_until: Option<DateTime<Utc>>,
    filter: Condition,
    order: Vec<(Expr, Order)>,
    limit: Option<u64>,
    offset: Option<u64>,
    entity: PhantomData<fn() -> T>,
}

impl<T> Clone for Query<T> {
    fn clone(&self) -> Self {
        Query {
            resolution: self.resolution,
            deleted: self.deleted,
            from_history: self.from_history,
            changed_from: self.changed_from,
            changed_until: self.changed_until,
            filter: self.filter.clone(),
            order: self.order.clone(),
            limit: self.limit,
            offset: self.offset,
            entity: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Query<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("resolution", &self.resolution)
            .field("deleted", &self.deleted)
            .field("filter", &self.filter)
            .field("limit", &self.limit)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl<T: Immutable> Default for Query<T> {
    fn default() -> Self {
        Query {
            resolution: Resolution::Current,
            deleted: false,
            from_history: false,
            changed_from: None,
            changed_until: None,
            filter: Condition::all(),
            order: Vec::new(),
            limit: None,
            offset: None,
            entity: PhantomData,
        }
    }
}

impl<T: Immutable> Query<T> {
    /// A query for the current version of every live entity (what [`Immutable::query`] returns).
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves each entity's version as of instant `at` (tombstoned-at-`at` entities hidden).
    ///
    /// ```no_run
    /// # use immu_core::{Immutable, sea_query::{ExprTrait, Order}};
    /// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
    /// # async fn demo(pool: sqlx::PgPool, quarter_end: chrono::DateTime<chrono::Utc>) -> immu_core::Result<()> {
    /// // Accounts over 100 as they stood at the end of last quarter.
    /// let then = Account::query().as_of(quarter_end).filter(Account::BALANCE.gt(100)).fetch_all(&pool).await?;
    /// # Ok(()) }
    /// ```
    pub fn as_of(mut self, at: DateTime<Utc>) -> Self {
        self.resolution = Resolution::AsOf(at);
        self
    }

    /// Resolves versions as [`snapshot`](crate::Snapshot) sees them: as of its instant.
    pub fn snapshot(self, snapshot: &crate::Snapshot) -> Self {
        self.as_of(snapshot.instant())
    }

    /// Includes deleted entities: their tombstone is the resolved version
    /// ([`Versioned::is_deleted`]).
    ///
    /// ```no_run
    /// # use immu_core::{Immutable, sea_query::{ExprTrait, Order}};
    /// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
    /// # async fn demo(pool: sqlx::PgPool) -> immu_core::Result<()> {
    /// let closed: Vec<_> = Account::query()
    ///     .with_deleted()
    ///     .fetch_all(&pool)
    ///     .await?
    ///     .into_iter()
    ///     .filter(|a| a.is_deleted())
    ///     .collect();
    /// # Ok(()) }
    /// ```
    pub fn with_deleted(mut self) -> Self {
        self.deleted = true;
        self
    }

    /// Reads every version of every entity (tombstones included), ordered by entity and version
    /// unless you order otherwise.
    ///
    /// ```no_run
    /// # use immu_core::{Immutable, sea_query::{ExprTrait, Order}};
    /// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
    /// # async fn demo(pool: sqlx::PgPool) -> immu_core::Result<()> {
    /// // Every version that ever had a negative balance.
    /// let overdrafts = Account::query().all_versions().filter(Account::BALANCE.lt(0)).fetch_all(&pool).await?;
    /// # Ok(()) }
    /// ```
    pub fn all_versions(mut self) -> Self {
        self.resolution = Resolution::AllVersions;
        self
    }

    /// Resolves from the history alone, with the canonical shapes (`MAX(version)` for current,
    /// the latest `valid_from` at or before the instant for as-of) instead of the
    /// `<table>_current` projection: the same rows, read from every version. For audits of the
    /// projection; slower in proportion to the history's length.
    ///
    /// ```
    /// # use immu_core::Immutable;
    /// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
    /// assert!(Account::query().to_sql().contains(r#"FROM "accounts_current" AS "accounts""#));
    /// assert!(Account::query().from_history().to_sql().contains(r#"SELECT MAX("immu_v"."version")"#));
    /// ```
    pub fn from_history(mut self) -> Self {
        self.from_history = true;
        self
    }

    /// The resolution mode, for logs and tests.
    pub fn resolution(&self) -> Resolution {
        self.resolution
    }

    /// With [`all_versions`](Self::all_versions): only versions that became valid in
    /// `[from, until)`, i.e. the changes made in that period.
    ///
    /// ```no_run
    /// # use immu_core::{Immutable, sea_query::{ExprTrait, Order}};
    /// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
    /// # async fn demo(pool: sqlx::PgPool) -> immu_core::Result<()> {
    /// // Every change to the table last week, in the order it was made.
    /// let week_ago = chrono::Utc::now() - chrono::Duration::days(7);
    /// let changes = Account::query().changed_between(week_ago, chrono::Utc::now()).order_by_time().fetch_all(&pool).await?;
    /// # Ok(()) }
    /// ```
    pub fn changed_between(mut self, from: DateTime<Utc>, until: DateTime<Utc>) -> Self {
        self.resolution = Resolution::AllVersions;
        self.changed_from = Some(from);
        self.changed_until = Some(until);
        self
    }

    /// Keeps only resolved versions written by `actor` (their
    /// [`Provenance::actor`](crate::Provenance::actor)). With
    /// [`changed_between`](Self::changed_between): every change by an actor in a period.
    ///
    /// ```no_run
    /// # use immu_core::Immutable;
    /// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
    /// # async fn demo(pool: sqlx::PgPool) -> immu_core::Result<()> {
    /// let week_ago = chrono::Utc::now() - chrono::Duration::days(7);
    /// let by_ada = Account::query().changed_between(week_ago, chrono::Utc::now()).by_actor("ada").fetch_all(&pool).await?;
    /// # Ok(()) }
    /// ```
    pub fn by_actor(self, actor: impl Into<String>) -> Self {
        use sea_query::ExprTrait;
        self.filter(Expr::col((T::TABLE.name, crate::sql::ACTOR)).eq(actor.into()))
    }

    /// Keeps only resolved versions matching `condition` (a sea-query expression or condition,
    /// typically built from the derive's columns: `Account::BALANCE.gt(100)`). Several calls
    /// combine with `AND`.
    pub fn filter(mut self, condition: impl IntoCondition) -> Self {
        self.filter = self.filter.add(condition);
        self
    }

    /// Keeps only the given entities (one `= ANY($1)` parameter however many): the batch form
    /// for loading referenced entities without one query each.
    ///
    /// ```no_run
    /// # use immu_core::{Immutable, sea_query::{ExprTrait, Order}};
    /// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
    /// # async fn demo(pool: sqlx::PgPool, ids: Vec<uuid::Uuid>) -> immu_core::Result<()> {
    /// // The current versions of these accounts, in one query; deleted or unknown ones are absent.
    /// let found = Account::query().ids(ids).fetch_all(&pool).await?;
    /// # Ok(()) }
    /// ```
    pub fn ids(self, ids: impl IntoIterator<Item = Uuid>) -> Self {
        let ids: Vec<Uuid> = ids.into_iter().collect();
        let column = Expr::col((T::TABLE.name, ENTITY_ID));
        self.filter(column.eq(PgFunc::any(Expr::val(ids))))
    }

    /// Orders by an expression (a column such as `Account::BALANCE`, or any sea-query
    /// expression). Later calls break ties of earlier ones; the entity id (and version) break
    /// the remaining ties so that pages are stable.
    pub fn order_by(mut self, expr: impl Into<Expr>, order: Order) -> Self {
        self.order.push((expr.into(), order));
        self
    }

    /// Orders by a column given by name at runtime (a sort parameter of an HTTP request, say).
    ///
    /// Fails with [`Error::UnknownColumn`] unless `name` is one of `T`'s columns or a reserved
    /// one: a name from outside never reaches the SQL.
    ///
    /// ```no_run
    /// # use immu_core::{Immutable, sea_query::{ExprTrait, Order}};
    /// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
    /// # async fn demo(pool: sqlx::PgPool, sort: &str) -> immu_core::Result<()> {
    /// // `?sort=balance` from a request
    /// let page = Account::query().order_by_name(sort, Order::Desc)?.limit(20).fetch_all(&pool).await?;
    /// # Ok(()) }
    /// ```
    pub fn order_by_name(self, name: &str, order: Order) -> Result<Self> {
        let column = T::TABLE
            .column(name)
            .map(|c| c.name)
            .or_else(|| crate::RESERVED_COLUMNS.into_iter().find(|r| *r == name))
            .ok_or_else(|| Error::UnknownColumn { table: T::TABLE.name, column: name.to_owned() })?;
        Ok(self.order_by(Expr::col((T::TABLE.name, column)), order))
    }

    /// Orders by time: `valid_from`, then entity and version (history in the order it was made).
    pub fn order_by_time(self) -> Self {
        self.order_by(Expr::col((T::TABLE.name, VALID_FROM)), Order::Asc)
    }

    /// Returns at most `n` rows.
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    /// Skips the first `n` rows.
    pub fn offset(mut self, n: u64) -> Self {
        self.offset = Some(n);
        self
    }

    /// Adds `U`, joined on `on` (a column of `T` holding a `U` entity id, `#[immu(references =
    /// U)]`) and resolved at the same instant as `T`: the same mode, so one as-of instant gives a
    /// consistent picture of both tables. An inner join: a `T` whose `U` is absent at that
    /// instant (deleted then, or a `NULL` reference) has no pair. See [`Join`] for the rules.
    pub fn join<U: Immutable>(self, on: Column<T>) -> Join<T, U> {
        Join::new(self, Link::forward(on))
    }

    /// Like [`join`](Self::join), but a left outer join: every `T` the query resolves, with
    /// `Some(U)` where its reference resolves to a `U` at the same instant and `None` where it
    /// does not (deleted then, unless [`with_deleted`](Self::with_deleted), or a `NULL`
    /// reference). See [`Join`] for the rules.
    ///
    /// ```no_run
    /// # use immu_core::Immutable;
    /// # #[derive(Immutable)] #[immu(table = "customers")] struct Customer { name: String }
    /// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { #[immu(references = Customer)] owner_id: Option<uuid::Uuid>, balance: i64 }
    /// # async fn demo(pool: sqlx::PgPool) -> immu_core::Result<()> {
    /// for (account, owner) in Account::query().left_join::<Customer>(Account::OWNER_ID).fetch_all(&pool).await? {
    ///     let owner = owner.as_ref().map_or("(no owner)", |c| c.name.as_str());
    ///     println!("{} is owned by {owner}", account.entity_id);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn left_join<U: Immutable>(self, on: Column<T>) -> LeftJoin<T, U> {
        LeftJoin { join: Join::new(self, Link::forward(on)) }
    }

    /// The reverse of [`join`](Self::join): adds the `U` entities that reference each `T`
    /// through `on` (a column of `U` holding a `T` entity id), both resolved at the same instant.
    /// One pair per referencing `U`: a customer with three accounts gives three pairs, one with
    /// none gives none (see [`left_join_referencing`](Self::left_join_referencing)). See
    /// [`Join`] for the rules.
    ///
    /// ```no_run
    /// # use immu_core::{Immutable, Snapshot};
    /// # #[derive(Immutable)] #[immu(table = "customers")] struct Customer { name: String }
    /// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { #[immu(references = Customer)] owner_id: uuid::Uuid, balance: i64 }
    /// # async fn demo(pool: sqlx::PgPool, quarter_end: chrono::DateTime<chrono::Utc>) -> immu_core::Result<()> {
    /// // Each customer with the accounts they owned at the end of the quarter.
    /// let owned = Customer::query()
    ///     .snapshot(&Snapshot::at(quarter_end))
    ///     .join_referencing::<Account>(Account::OWNER_ID)
    ///     .fetch_all(&pool)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn join_referencing<U: Immutable>(self, on: Column<U>) -> Join<T, U> {
        Join::new(self, Link::reverse(on))
    }

    /// Like [`join_referencing`](Self::join_referencing), but a left outer join: every `T` the
    /// query resolves, once with `Some(U)` for each `U` that references it at the same instant,
    /// or once with `None` when none does (customers without an account). See [`Join`] for the
    /// rules.
    pub fn left_join_referencing<U: Immutable>(self, on: Column<U>) -> LeftJoin<T, U> {
        LeftJoin { join: Join::new(self, Link::reverse(on)) }
    }

    /// The SQL this query runs, with `$n` placeholders.
    pub fn to_sql(&self) -> String {
        self.statement().build(PostgresQueryBuilder).0
    }

    /// The resolved versions, as a stream: rows are decoded as they arrive, so memory stays flat
    /// however many there are.
    pub fn fetch<'e, E>(self, db: E) -> impl Stream<Item = Result<Versioned<T>>> + Send + 'e
    where
        E: Executor<'e, Database = Postgres> + 'e,
    {
        run(self.statement(), [T::TABLE.name; 2], db).map(|row| Ok(Versioned::decode_at(&row?, 0)?))
    }

    /// All resolved versions.
    pub fn fetch_all<'e, E>(self, db: E) -> impl Future<Output = Result<Vec<Versioned<T>>>> + Send + 'e
    where
        E: Executor<'e, Database = Postgres> + 'e,
    {
        self.fetch(db).try_collect()
    }

    /// The first resolved version, if any (`LIMIT 1` unless a limit is set).
    pub fn fetch_optional<'e, E>(
        self,
        db: E,
    ) -> impl Future<Output = Result<Option<Versioned<T>>>> + Send + 'e
    where
        E: Executor<'e, Database = Postgres> + 'e,
    {
        let query = if self.limit.is_none() { self.limit(1) } else { self };
        async move {
            let mut rows = std::pin::pin!(query.fetch(db));
            rows.try_next().await
        }
    }

    /// How many rows [`fetch_all`](Self::fetch_all) would return (limit and offset included).
    pub fn count<'e, E>(self, db: E) -> impl Future<Output = Result<i64>> + Send + 'e
    where
        E: Executor<'e, Database = Postgres> + 'e,
    {
        count(self.statement(), [T::TABLE.name; 2], db)
    }

    /// Whether [`fetch_all`](Self::fetch_all) would return any row.
    pub fn exists<'e, E>(self, db: E) -> impl Future<Output = Result<bool>> + Send + 'e
    where
        E: Executor<'e, Database = Postgres> + 'e,
    {
        exists(self.statement(), [T::TABLE.name; 2], db)
    }

    /// PostgreSQL's plan of this query, as `EXPLAIN` prints it; with `analyze`, the query runs
    /// (`EXPLAIN (ANALYZE, BUFFERS)`) and the plan shows actual times and row counts.
    ///
    /// ```no_run
    /// # use immu_core::{Immutable, sea_query::ExprTrait};
    /// # #[derive(Immutable)] #[immu(table = "accounts")] struct Account { owner: String, balance: i64 }
    /// # async fn demo(pool: sqlx::PgPool) -> immu_core::Result<()> {
    /// let plan = Account::query().filter(Account::BALANCE.gt(100)).explain(&pool, true).await?;
    /// println!("{plan}");
    /// # Ok(()) }
    /// ```
    pub fn explain<'e, E>(self, db: E, analyze: bool) -> impl Future<Output = Result<String>> + Send + 'e
    where
        E: Executor<'e, Database = Postgres> + 'e,
    {
        explain(self.statement(), [T::TABLE.name; 2], db, analyze)
    }

    fn statement(&self) -> SelectStatement {
        let table = &T::TABLE;
        let mut select = sea_query::Query::select();
        select.exprs(qualified(table));
        self.select_from(&mut select, table);
        self.finish(&mut select, table, None);
        select
    }

    /// How this query resolves the table it reads; `outer_valid_from` is the referring table's
    /// `valid_from` column for joins in history mode.
    fn at(&self, outer_valid_from: Option<Expr>) -> Option<At> {
        match self.resolution {
            Resolution::Current => Some(At::Current),
            Resolution::AsOf(at) => Some(At::Instant(Expr::val(crate::sql::pg_instant(at)))),
            Resolution::AllVersions => outer_valid_from.map(At::RowInstant),
        }
    }

    /// Where the resolved rows of `table` come from (None: every version, from the history).
    fn source(&self, table: &TableDef, at: Option<At>) -> Option<resolve::Source> {
        at.map(|at| resolve::source(table, at, self.deleted, self.from_history))
    }

    /// Reads this query's rows of `table`, named by the table's name: its resolved rows, or in
    /// history mode every version (bounded by [`changed_between`](Self::changed_between)).
    fn select_from(&self, select: &mut SelectStatement, table: &TableDef) {
        let Some(source) = self.source(table, self.at(None)) else {
            select.from(table.name);
            let valid_from = || Expr::col((table.name, VALID_FROM));
            if let Some(from) = self.changed_from {
                select.and_where(valid_from().gte(crate::sql::pg_instant(from)));
            }
            if let Some(until) = self.changed_until {
                select.and_where(valid_from().lt(crate::sql::pg_instant(until)));
            }
            return;
        };
        match source.from {
            resolve::Relation::Table(name) => select.from_as(Alias::new(name), table.name),
            resolve::Relation::Subquery(query) => select.from_subquery(*query, table.name),
        };
        select.cond_where(source.condition);
    }

    /// Adds the user's filter, order, limit and offset; `tie` breaks the ties that the table's
    /// entity (and version) leave (the other side of a join that gives several pairs per entity).
    fn finish(&self, select: &mut SelectStatement, table: &TableDef, tie: Option<Expr>) {
        select.cond_where(self.filter.clone());
        let history = self.resolution == Resolution::AllVersions;
        if !self.order.is_empty() || history {
            for (expr, order) in &self.order {
                select.order_by_expr(expr.clone(), order.clone());
            }
            select.order_by_expr(Expr::col((table.name, ENTITY_ID)), Order::Asc);
            if history {
                select.order_by_expr(Expr::col((table.name, VERSION)), Order::Asc);
            }
            if let Some(tie) = tie {
                select.order_by_expr(tie, Order::Asc);
            }
        }
        if let Some(limit) = self.limit {
            select.limit(limit);
        }
        if let Some(offset) = self.offset {
            select.offset(offset);
        }
    }
}

/// Two entity types joined by a reference and resolved at the same instant; yields pairs. Built
/// with [`Query::join`] (from the referencing side: an invoice and its customer) or
/// [`Query::join_referencing`] (from the referenced side: a customer and each invoice that
/// references it); [`LeftJoin`] is the outer form of both.
///
/// # One instant, resolution first
///
/// Both sides are resolved with the starting query's mode before anything is paired: current
/// versions ([`Immutable::query`]), the versions as of one instant ([`Query::as_of`],
/// [`Query::snapshot`]), each side on its own, exactly as [`Query`] resolves a list. Then:
///
/// * an entity that does not exist yet at the instant, or is deleted at it (its resolved version
///   is a tombstone), is **absent** on either side: an inner join has no pair for it, a left join
///   pairs the starting entity with `None`. [`Query::with_deleted`] (on the starting query, before
///   the join) makes a tombstone count as present on **both** sides, marked
///   [`is_deleted`](Versioned::is_deleted);
/// * a reference is followed as the referencing entity's resolved version holds it: a reference
///   re-pointed after the instant still pairs with its old target, and a `NULL` reference
///   (`Option<Uuid>`) pairs with nothing;
/// * [`filter`](Join::filter), [`order_by`](Join::order_by), [`limit`](Join::limit) /
///   [`offset`](Join::offset), [`count`](Join::count) and [`exists`](Join::exists) apply to the
///   pairs of resolved versions, never to older versions. On a left join a filter on the other
///   side's columns sees `NULL` where the pair has `None` (SQL's rules; filter on
///   `U::ENTITY_ID.is_null()` for the starting entities without a counterpart).
///
/// With [`Query::all_versions`] every version of the starting entity (tombstones included) is
/// paired with the other side resolved as of that version's `valid_from`: an invoice's history
/// with its customer as it was at each change, or a customer's history with the invoices that
/// referenced it at each of its changes ([`changed_between`](Query::changed_between) bounds the
/// starting side's versions).
///
/// Pages are stable once ordered: the starting entity (and version) and, for
/// [`join_referencing`](Query::join_referencing), the referencing entity break ties. For the
/// reverse direction on current lists, index the referencing column of the projection
/// (`CREATE INDEX ON invoices_current (customer_id)`).
///
/// ```no_run
/// # use immu_core::{Immutable, Snapshot, sea_query::ExprTrait};
/// # #[derive(Immutable)] #[immu(table = "customers")] struct Customer { name: String }
/// # #[derive(Immutable)] #[immu(table = "orders")] struct Order { #[immu(references = Customer)] customer_id: uuid::Uuid, total: i64 }
/// # async fn demo(pool: sqlx::PgPool, end_of_march: chrono::DateTime<chrono::Utc>) -> immu_core::Result<()> {
/// let snapshot = Snapshot::at(end_of_march);
/// let rows = Order::query()
///     .snapshot(&snapshot)
///     .join::<Customer>(Order::CUSTOMER_ID)
///     .filter(Customer::NAME.eq("Ada"))
///     .fetch_all(&pool)
///     .await?;
/// for (order, customer) in rows {
///     println!("{} ordered {} (as of {})", customer.name, order.total, snapshot.instant());
/// }
/// // The other way round: Ada's orders then.
/// let orders = Customer::query()
///     .snapshot(&snapshot)
///     .filter(Customer::NAME.eq("Ada"))
///     .join_referencing::<Order>(Order::CUSTOMER_ID)
///     .count(&pool)
///     .await?;
/// # Ok(()) }
/// ```
///
/// The SQL, as [`to_sql`](Join::to_sql) shows it: both tables read their resolved rows (here the
/// projections, for current versions), and on a left join the other side's conditions are part
/// of the join, so that the starting side keeps every row.
///
/// ```
/// # use immu_core::Immutable;
/// # #[derive(Immutable)] #[immu(table = "customers")] struct Customer { name: String }
/// # #[derive(Immutable)] #[immu(table = "orders")] struct Order { #[immu(references = Customer)] customer_id: uuid::Uuid, total: i64 }
/// let sql = Customer::query().left_join_referencing::<Order>(Order::CUSTOMER_ID).to_sql();
/// assert!(sql.ends_with(concat!(
///     r#"FROM "customers_current" AS "customers" "#,
///     r#"LEFT JOIN "orders_current" AS "orders" ON "orders"."customer_id" = "customers"."entity_id" AND "orders"."deleted_at" IS NULL "#,
///     r#"WHERE "customers"."deleted_at" IS NULL"#,
/// )));
/// ```
#[must_use = "a query does nothing until it is fetched"]
pub struct Join<T, U> {
    left: Query<T>,
    link: Link,
    right: PhantomData<fn() -> U>,
}

/// The outer form of [`Join`]: every entity the starting query resolves, paired with
/// `Some(other)` for each entity of the other side it meets at the same instant, or once with
/// `None` when it meets none. Built with [`Query::left_join`] and
/// [`Query::left_join_referencing`]; resolved, filtered and counted by the rules of [`Join`].
///
/// ```no_run
/// # use immu_core::{Immutable, sea_query::ExprTrait};
/// # #[derive(Immutable)] #[immu(table = "customers")] struct Customer { name: String }
/// # #[derive(Immutable)] #[immu(table = "orders")] struct Order { #[immu(references = Customer)] customer_id: uuid::Uuid, total: i64 }
/// # async fn demo(pool: sqlx::PgPool, quarter_end: chrono::DateTime<chrono::Utc>) -> immu_core::Result<()> {
/// // Customers who had no order at the end of the quarter.
/// let idle = Customer::query()
///     .as_of(quarter_end)
///     .left_join_referencing::<Order>(Order::CUSTOMER_ID)
///     .filter(Order::ENTITY_ID.is_null())
///     .fetch_all(&pool)
///     .await?;
/// assert!(idle.iter().all(|(_, order)| order.is_none()));
/// # Ok(()) }
/// ```
#[must_use = "a query does nothing until it is fetched"]
pub struct LeftJoin<T, U> {
    join: Join<T, U>,
}

/// A pair of a [`LeftJoin`]: the starting entity, and the other one if it met one.
type OuterPair<T, U> = (Versioned<T>, Option<Versioned<U>>);

/// The columns a join compares: `"T"."left" = "U"."right"`.
#[derive(Debug, Clone, Copy)]
struct Link {
    /// The starting entity's column.
    left: &'static str,
    /// The other entity's column.
    right: &'static str,
    /// Whether a starting entity may meet several of the other side (the reverse direction).
    many: bool,
}

impl Link {
    /// `T`'s reference `on` to `U`'s entity id.
    fn forward<T>(on: Column<T>) -> Link {
        Link { left: on.name(), right: ENTITY_ID, many: false }
    }

    /// `T`'s entity id, referenced by `U`'s column `on`.
    fn reverse<U>(on: Column<U>) -> Link {
        Link { left: ENTITY_ID, right: on.name(), many: true }
    }
}

impl<T, U> Clone for Join<T, U> {
    fn clone(&self) -> Self {
        Join { left: self.left.clone(), link: self.link, right: PhantomData }
    }
}

impl<T, U> Clone for LeftJoin<T, U> {
    fn clone(&self) -> Self {
        LeftJoin { join: self.join.clone() }
    }
}

impl<T, U> std::fmt::Debug for Join<T, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Join").field("left", &self.left).field("link", &self.link).finish_non_exhaustive()
    }
}

impl<T, U> std::fmt::Debug for LeftJoin<T, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeftJoin").field("join", &self.join).finish()
    }
}

impl<T: Immutable, U: Immutable> Join<T, U> {
    fn new(left: Query<T>, link: Link) -> Self {
        Join { left, link, right: PhantomData }
    }

    /// Keeps only pairs matching `condition`, over the columns of both entities. Several calls
    /// combine with `AND`.
    pub fn filter(mut self, condition: impl IntoCondition) -> Self {
        self.left = self.left.filter(condition);
        self
    }

    /// Orders by an expression over either entity's columns.
    pub fn order_by(mut self, expr: impl Into<Expr>, order: Order) -> Self {
        self.left = self.left.order_by(expr, order);
        self
    }

    /// Returns at most `n` pairs.
    pub fn limit(mut self, n: u64) -> Self {
        self.left = self.left.limit(n);
        self
    }

    /// Skips the first `n` pairs.
    pub fn offset(mut self, n: u64) -> Self {
        self.left = self.left.offset(n);
        self
    }

    /// The SQL this join runs, with `$n` placeholders.
    pub fn to_sql(&self) -> String {
        self.statement(false).build(PostgresQueryBuilder).0
    }

    /// The pairs, as a stream.
    pub fn fetch<'e, E>(self, db: E) -> impl Stream<Item = Result<(Versioned<T>, Versioned<U>)>> + Send + 'e
    where
        E: Executor<'e, Database = Postgres> + 'e,
    {
        let second = second_at::<T>();
        run(self.statement(false), [T::TABLE.name, U::TABLE.name], db).map(move |row| {
            let row = row?;
            Ok((Versioned::decode_at(&row, 0)?, Versioned::decode_at(&row, second)?))
        })
    }

    /// All pairs.
    pub fn fetch_all<'e, E>(
        self,
        db: E,
    ) -> impl Future<Output = Result<Vec<(Versioned<T>, Versioned<U>)>>> + Send + 'e
    where
        E: Executor<'e, Database = Postgres> + 'e,
    {
        self.fetch(db).try_collect()
    }

    /// How many pairs [`fetch_all`](Self::fetch_all) would return (limit and offset included).
    pub fn count<'e, E>(self, db: E) -> impl Future<Output = Result<i64>> + Send + 'e
    where
        E: Executor<'e, Database = Postgres> + 'e,
    {
        count(self.statement(false), [T::TABLE.name, U::TABLE.name], db)
    }

    /// Whether any pair matches.
    pub fn exists<'e, E>(self, db: E) -> impl Future<Output = Result<bool>> + Send + 'e
    where
        E: Executor<'e, Database = Postgres> + 'e,
    {
        exists(self.statement(false), [T::TABLE.name, U::TABLE.name], db)
    }

    /// The statement: `T`'s resolved rows, joined (inner, or left `outer`) with `U`'s resolved
    /// at the same instant (in history mode, as of each row of `T`).
    fn statement(&self, outer: bool) -> SelectStatement {
        let (left, right) = (&T::TABLE, &U::TABLE);
        let query = &self.left;
        let mut select = sea_query::Query::select();
        select.exprs(qualified(left).chain(qualified(right)));
        query.select_from(&mut select, left);
        let right_at = query
            .at(Some(Expr::col((left.name, VALID_FROM))))
            .expect("a join always resolves the joined table");
        let source = query.source(right, Some(right_at)).expect("resolved");
        let on = Expr::col((right.name, self.link.right)).equals((left.name, self.link.left));
        // An inner join may keep U's resolution in WHERE; an outer one must make it part of the
        // join, or a T whose U is not resolved would lose its row instead of meeting `NULL`s.
        let (kind, on) = if outer {
            let on = Condition::all().add(on);
            (JoinType::LeftJoin, if source.condition.is_empty() { on } else { on.add(source.condition) })
        } else {
            select.cond_where(source.condition);
            (JoinType::InnerJoin, Condition::all().add(on))
        };
        match source.from {
            resolve::Relation::Table(name) => select.join_as(kind, Alias::new(name), right.name, on),
            resolve::Relation::Subquery(q) => select.join_subquery(kind, *q, right.name, on),
        };
        let tie = self.link.many.then(|| Expr::col((right.name, ENTITY_ID)));
        query.finish(&mut select, left, tie);
        select
    }
}

impl<T: Immutable, U: Immutable> LeftJoin<T, U> {
    /// Keeps only pairs matching `condition`, over the columns of both entities (those of the
    /// other side are `NULL` in a pair without it). Several calls combine with `AND`.
    pub fn filter(mut self, condition: impl IntoCondition) -> Self {
        self.join = self.join.filter(condition);
        self
    }

    /// Orders by an expression over either entity's columns.
    pub fn order_by(mut self, expr: impl Into<Expr>, order: Order) -> Self {
        self.join = self.join.order_by(expr, order);
        self
    }

    /// Returns at most `n` pairs.
    pub fn limit(mut self, n: u64) -> Self {
        self.join = self.join.limit(n);
        self
    }

    /// Skips the first `n` pairs.
    pub fn offset(mut self, n: u64) -> Self {
        self.join = self.join.offset(n);
        self
    }

    /// The SQL this join runs, with `$n` placeholders.
    pub fn to_sql(&self) -> String {
        self.join.statement(true).build(PostgresQueryBuilder).0
    }

    /// The pairs, as a stream: `None` where the starting entity meets nothing.
    pub fn fetch<'e, E>(self, db: E) -> impl Stream<Item = Result<OuterPair<T, U>>> + Send + 'e
    where
        E: Executor<'e, Database = Postgres> + 'e,
    {
        let second = second_at::<T>();
        // The other side's entity id is never NULL in a row of it: NULL means no row.
        let present = second + entity_id_at();
        run(self.join.statement(true), [T::TABLE.name, U::TABLE.name], db).map(move |row| {
            let row = row?;
            let right = match row.try_get::<Option<Uuid>, _>(present)? {
                Some(_) => Some(Versioned::decode_at(&row, second)?),
                None => None,
            };
            Ok((Versioned::decode_at(&row, 0)?, right))
        })
    }

    /// All pairs.
    pub fn fetch_all<'e, E>(self, db: E) -> impl Future<Output = Result<Vec<OuterPair<T, U>>>> + Send + 'e
    where
        E: Executor<'e, Database = Postgres> + 'e,
    {
        self.fetch(db).try_collect()
    }

    /// How many pairs [`fetch_all`](Self::fetch_all) would return (limit and offset included).
    pub fn count<'e, E>(self, db: E) -> impl Future<Output = Result<i64>> + Send + 'e
    where
        E: Executor<'e, Database = Postgres> + 'e,
    {
        count(self.join.statement(true), [T::TABLE.name, U::TABLE.name], db)
    }

    /// Whether any pair matches.
    pub fn exists<'e, E>(self, db: E) -> impl Future<Output = Result<bool>> + Send + 'e
    where
        E: Executor<'e, Database = Postgres> + 'e,
    {
        exists(self.join.statement(true), [T::TABLE.name, U::TABLE.name], db)
    }
}

/// Where the second entity's columns start in a row of a join over `T`: after every column
/// reads select of `T` (reserved, own, and an upcasting entity's older columns).
fn second_at<T: Immutable>() -> usize {
    crate::RESERVED_COLUMNS.len() + crate::sql::data_columns(&T::TABLE).len()
}

/// The position of `entity_id` among the reserved columns.
fn entity_id_at() -> usize {
    crate::RESERVED_COLUMNS.iter().position(|c| *c == ENTITY_ID).expect("entity_id is a reserved column")
}

/// `"table"."column"` for every column, reserved ones first.
fn qualified(table: &TableDef) -> impl Iterator<Item = Expr> + '_ {
    all_columns(table).map(|c| Expr::col((table.name, c)))
}

/// The versioned tables a statement reads (twice the same for a single-table query).
type Tables = [&'static str; 2];

/// Runs a select built with sea-query over `tables`; the one place a rendered statement meets
/// sqlx.
pub(crate) fn run<'e, E>(
    select: SelectStatement,
    tables: Tables,
    db: E,
) -> impl Stream<Item = Result<PgRow>> + Send + 'e
where
    E: Executor<'e, Database = Postgres> + 'e,
{
    let (sql, values) = select.build_sqlx(PostgresQueryBuilder);
    tracing::trace!(sql, "immu query");
    // The SQL is rendered by sea-query from validated identifiers; values are bound.
    sqlx::query_with(sqlx::AssertSqlSafe(sql), values)
        .fetch(db)
        .map_err(move |e| tables.iter().fold(Error::from(e), |e, table| e.missing_projection_of(table)))
}

async fn explain<'e, E>(select: SelectStatement, tables: Tables, db: E, analyze: bool) -> Result<String>
where
    E: Executor<'e, Database = Postgres> + 'e,
{
    let (sql, values) = select.build_sqlx(PostgresQueryBuilder);
    let options = if analyze { "(ANALYZE, BUFFERS) " } else { "" };
    // As in `run`: rendered by sea-query from validated identifiers; values are bound.
    let lines: Vec<String> =
        sqlx::query_scalar_with(sqlx::AssertSqlSafe(format!("EXPLAIN {options}{sql}")), values)
            .fetch_all(db)
            .await
            .map_err(|e| tables.iter().fold(Error::from(e), |e, table| e.missing_projection_of(table)))?;
    Ok(lines.join("\n"))
}

fn count<'e, E>(
    select: SelectStatement,
    tables: Tables,
    db: E,
) -> impl Future<Output = Result<i64>> + Send + 'e
where
    E: Executor<'e, Database = Postgres> + 'e,
{
    let mut outer = sea_query::Query::select();
    outer.expr(Expr::cust("count(*)")).from_subquery(select, "immu_q");
    scalar(outer, tables, db)
}

fn exists<'e, E>(
    select: SelectStatement,
    tables: Tables,
    db: E,
) -> impl Future<Output = Result<bool>> + Send + 'e
where
    E: Executor<'e, Database = Postgres> + 'e,
{
    let mut outer = sea_query::Query::select();
    outer.expr(Expr::exists(select));
    scalar(outer, tables, db)
}

async fn scalar<'e, E, V>(select: SelectStatement, tables: Tables, db: E) -> Result<V>
where
    E: Executor<'e, Database = Postgres> + 'e,
    V: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres> + Send + Unpin + 'e,
{
    let mut rows = std::pin::pin!(run(select, tables, db));
    let row = rows.try_next().await?.ok_or(Error::Database(sqlx::Error::RowNotFound))?;
    Ok(row.try_get(0)?)
}

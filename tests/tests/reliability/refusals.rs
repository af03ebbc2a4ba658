//! Scenario 11: the database refuses raw SQL that would change or break the history.

use std::future::Future;

use immu_core::{Error, Immutable};
use immu_tests::models::{Order, Status};
use immu_tests::reliability::{self, History, Kind, Op, Outcome};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{BoxError, Env, Verdict};

/// UPDATE, DELETE, TRUNCATE of both tables (as the owner, and with `session_replication_role =
/// replica`): `Error::AppendOnly`; hand-inserted rows with a repeated, skipped, zero or NULL
/// version, a first version other than 1, a tombstone as version 1 or carrying other data than
/// the version it deletes: `Error::InvalidHistory`. The history is unchanged afterwards. And the
/// database stamps raw versions with its own clock, whatever `valid_from` they name (backdated,
/// infinite, beyond chrono's range).
pub(crate) async fn raw_sql(env: Env) -> Result<Verdict, BoxError> {
    let mut verdict = Verdict::new(
        "UPDATE/DELETE/TRUNCATE as owner and as replica: AppendOnly; repeated/skipped/zero/NULL versions, \
         bad tombstones: InvalidHistory; history unchanged; raw valid_from replaced by the database clock",
    );
    let mut history = History::new();
    let id = history.push(reliability::insert(&env.pool, "v1", 10).await).ok_or("insert failed")?.entity_id;
    for (i, balance) in [20, 30].into_iter().enumerate() {
        history
            .push(reliability::write(&env.pool, id, Kind::Update { balance }, format!("v{}", i + 2)).await);
    }
    let before = reliability::stored_rows(&env.pool).await?;
    let projected_before = reliability::projected_rows(&env.pool).await?;

    let mut refused = 0;
    for replica in [false, true] {
        let role = if replica { "replica" } else { "owner" };
        let mut conn = env.connect().await?;
        let is_owner: bool = sqlx::query_scalar(
            "SELECT pg_get_userbyid(relowner) = current_user FROM pg_class WHERE relname = 'accounts'",
        )
        .fetch_one(&mut conn)
        .await?;
        verdict.expect(is_owner, || "the test connection does not own the table".to_owned());
        if replica {
            sqlx::raw_sql("SET session_replication_role = replica").execute(&mut conn).await?;
        }
        for table in ["accounts", "accounts_current"] {
            let statements = [
                ("UPDATE", format!("UPDATE {table} SET entity_id = entity_id")),
                ("UPDATE", format!("UPDATE {table} SET entity_id = entity_id WHERE false")),
                ("DELETE", format!("DELETE FROM {table}")),
                ("DELETE", format!("DELETE FROM {table} WHERE entity_id = '{id}'")),
                ("TRUNCATE", format!("TRUNCATE {table} CASCADE")),
            ];
            for (operation, sql) in statements {
                let result = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone())).execute(&mut conn).await;
                match result.map_err(Error::from) {
                    Err(Error::AppendOnly { table: t, operation: o }) => {
                        refused += 1;
                        verdict.expect(t == table && o == operation, || {
                            format!("{role}: {sql}: AppendOnly names {o} on {t:?}")
                        });
                    }
                    other => verdict.fail(format!("{role}: {sql}: expected AppendOnly, got {other:?}")),
                }
            }
        }

        // Hand-written versions that would break the history.
        let attempts: [(&str, Uuid, Option<i64>, bool); 8] = [
            ("repeated version 3", id, Some(3), false),
            ("repeated version 1", id, Some(1), false),
            ("skipped version 5", id, Some(5), false),
            ("version 0", id, Some(0), false),
            ("NULL version", id, None, false),
            ("new entity starting at version 2", Uuid::now_v7(), Some(2), false),
            ("new entity's version 1 as a tombstone", Uuid::now_v7(), Some(1), true),
            ("tombstone with other data than version 3", id, Some(4), true),
        ];
        for (n, (what, entity, version, tombstone)) in attempts.into_iter().enumerate() {
            let tag = format!("raw-{role}-{n}");
            let result = raw_insert(&mut conn, entity, version, tombstone, &tag).await;
            let outcome = match result {
                Ok(()) => {
                    verdict.fail(format!("{role}: {what}: inserted"));
                    Outcome::Unknown("raw insert succeeded".into())
                }
                Err(err) => {
                    let ok = matches!(&err, Error::InvalidHistory { table, .. } if table == "accounts");
                    verdict.expect(ok, || format!("{role}: {what}: got {err:?}"));
                    if ok {
                        refused += 1;
                    }
                    Outcome::Failed(err)
                }
            };
            history.push(Op {
                entity: Some(entity),
                kind: Kind::Raw { version: version.unwrap_or_default() },
                tag,
                group: None,
                outcome,
            });
        }
    }

    database_clock(&env, &mut verdict).await?;

    let after = reliability::stored_rows(&env.pool).await?;
    verdict.expect(after == before, || "the stored history changed".to_owned());
    let projected_after = reliability::projected_rows(&env.pool).await?;
    verdict.expect(projected_after == projected_before, || "the projection table changed".to_owned());
    verdict.count(format!("{refused} statements refused"));
    verdict.report = Some(reliability::check(&env.pool, &history).await?);
    Ok(verdict)
}

async fn raw_insert(
    conn: &mut PgConnection,
    entity: Uuid,
    version: Option<i64>,
    tombstone: bool,
    tag: &str,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO accounts (id, entity_id, version, valid_from, deleted_at, owner, balance) \
         VALUES ($1, $2, $3, clock_timestamp(), CASE WHEN $4 THEN clock_timestamp() END, $5, 0)",
    )
    .bind(Uuid::now_v7())
    .bind(entity)
    .bind(version)
    .bind(tombstone)
    .bind(tag)
    .execute(conn)
    .await?;
    Ok(())
}

/// Runs `fut` in a task of its own and describes its result; a panic is described, not raised.
async fn probe<T, F>(fut: F) -> String
where
    F: Future<Output = immu_core::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    match tokio::spawn(fut).await {
        Ok(Ok(_)) => "Ok".to_owned(),
        Ok(Err(err)) => format!("Err({})", reliability::error_name(&err)),
        Err(join) => {
            let panic = join.try_into_panic().ok();
            let message = panic.as_ref().and_then(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            });
            format!("PANIC({})", message.unwrap_or_default())
        }
    }
}

/// Raw versions that name their own `valid_from` (an hour before the previous version, infinite,
/// beyond chrono's range: PostgreSQL's timestamps reach 294276 AD, chrono's 262142 AD), inserted
/// into the `order` table: the database stamps each with its clock instead, after the previous
/// version's, so that reads of the entity keep working (a version beyond chrono's range would make
/// it unreadable from Rust).
async fn database_clock(env: &Env, verdict: &mut Verdict) -> Result<(), BoxError> {
    let order = Order {
        customer: "far".into(),
        r#select: 1,
        note: None,
        lines: Vec::new(),
        status: Status::Open,
        payload: Vec::new(),
        due: None,
    };
    let v1 = Order::insert(&env.pool, order).await?;
    let id = v1.entity_id;
    for (version, valid_from) in
        [(2, "'270000-01-01T00:00:00Z'"), (3, "'infinity'"), (4, "now() - interval '1 hour'")]
    {
        let sql = format!(
            r#"INSERT INTO "order" (id, entity_id, version, valid_from, "user", "select", lines, status, payload)
               VALUES ($1, $2, {version}, {valid_from}, 'far', {version}, '[]', 'open', '')
               RETURNING valid_from, clock_timestamp()"#
        );
        let stamped: Result<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>), _> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(Uuid::now_v7()).bind(id).fetch_one(&env.pool).await;
        match stamped {
            Ok((stored, now)) => verdict.expect(stored <= now && now - stored < chrono::TimeDelta::seconds(5), || {
                format!("a version naming valid_from {valid_from} was stamped {stored}, not the database clock ({now})")
            }),
            Err(err) => verdict.fail(format!("a version naming valid_from {valid_from}: {err}")),
        }
    }
    let pool = env.pool.clone();
    let find = probe({
        let pool = pool.clone();
        async move { Order::find(&pool, id).await }
    })
    .await;
    let history = probe({
        let pool = pool.clone();
        async move { Order::history(&pool, id).await }
    })
    .await;
    let list = probe({
        let pool = pool.clone();
        async move { Order::query().fetch_all(&pool).await }
    })
    .await;
    let modify = probe({
        let pool = pool.clone();
        async move { Order::modify(&pool, id, |o| o.r#select = 5).await }
    })
    .await;
    let answers = format!("find: {find}; history: {history}; list: {list}; modify: {modify}");
    verdict.expect(answers == "find: Ok; history: Ok; list: Ok; modify: Ok", || answers.clone());
    let monotone: bool = sqlx::query_scalar(
        r#"SELECT bool_and(valid_from >= prev) FROM (SELECT valid_from, lag(valid_from, 1, '-infinity') OVER (ORDER BY version) AS prev FROM "order" WHERE entity_id = $1) v"#,
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await?;
    verdict.expect(monotone, || "valid_from went backwards".to_owned());
    verdict.count("3 raw valid_from values replaced by the database clock".to_owned());
    Ok(())
}

//! Scenario 11: the database refuses raw SQL that would change or break the history.

use std::future::Future;

use immu_core::{Error, Immutable};
use immu_tests::models::{Order, Status};
use immu_tests::reliability::{self, History, Kind, Op, Outcome};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{BoxError, Env, Verdict};

/// UPDATE, DELETE, TRUNCATE of both tables (as the owner, and with `session_replication_role =
/// replica`): `Error::AppendOnly`; hand-inserted rows with a repeated or skipped version, an earlier
/// `valid_from`, a first version other than 1: `Error::InvalidHistory`; `valid_from = 'infinity'`:
/// the `immu_valid_from_in_range` check. The history is unchanged afterwards.
pub(crate) async fn raw_sql(env: Env) -> Result<Verdict, BoxError> {
    let mut verdict = Verdict::new(
        "UPDATE/DELETE/TRUNCATE as owner and as replica: AppendOnly; repeated/skipped/backdated/infinite \
         versions: InvalidHistory or CHECK; history unchanged",
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
        let latest =
            before.iter().filter(|r| r.entity_id == id).map(|r| r.valid_from).max().ok_or("no rows")?;
        let attempts: [(&str, Uuid, i64, String, bool); 6] = [
            ("repeated version 3", id, 3, "clock_timestamp()".into(), true),
            ("repeated version 1", id, 1, "clock_timestamp()".into(), true),
            ("skipped version 5", id, 5, "clock_timestamp()".into(), true),
            (
                "version 4 an hour before version 3",
                id,
                4,
                format!("'{}'::timestamptz - interval '1 hour'", latest.to_rfc3339()),
                true,
            ),
            ("new entity starting at version 2", Uuid::now_v7(), 2, "clock_timestamp()".into(), true),
            ("version 4 valid from 'infinity'", id, 4, "'infinity'".into(), false),
        ];
        for (n, (what, entity, version, valid_from, history_check)) in attempts.into_iter().enumerate() {
            let tag = format!("raw-{role}-{n}");
            let result = raw_insert(&mut conn, entity, version, &valid_from, &tag).await;
            let outcome = match result {
                Ok(()) => {
                    verdict.fail(format!("{role}: {what}: inserted"));
                    Outcome::Unknown("raw insert succeeded".into())
                }
                Err(err) => {
                    // The insert check (history_check) or the CHECK immu_valid_from_in_range: both
                    // surface as Error::InvalidHistory.
                    let ok = matches!(&err, Error::InvalidHistory { table, message }
                        if table == "accounts" && (history_check || message.contains("immu_valid_from_in_range")));
                    verdict.expect(ok, || format!("{role}: {what}: got {err:?}"));
                    if ok {
                        refused += 1;
                    }
                    Outcome::Failed(err)
                }
            };
            history.push(Op { entity: Some(entity), kind: Kind::Raw { version }, tag, group: None, outcome });
        }
    }

    far_future(&env, &mut verdict).await?;

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
    version: i64,
    valid_from: &str,
    tag: &str,
) -> Result<(), Error> {
    let sql = format!(
        "INSERT INTO accounts (id, entity_id, version, valid_from, owner, balance) VALUES ($1, $2, $3, {valid_from}, $4, 0)"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(Uuid::now_v7())
        .bind(entity)
        .bind(version)
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

/// A version valid from a finite instant beyond chrono's range (PostgreSQL's timestamps reach
/// 294276 AD, chrono's 262142 AD), inserted with raw SQL into the `order` table: the CHECK
/// `immu_valid_from_in_range` refuses it (it would make the entity unreadable from Rust), and
/// reads of the entity keep working.
async fn far_future(env: &Env, verdict: &mut Verdict) -> Result<(), BoxError> {
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
    let inserted = sqlx::query(
        r#"INSERT INTO "order" (id, entity_id, version, valid_from, "user", "select", lines, status, payload)
           VALUES ($1, $2, 2, '270000-01-01T00:00:00Z', 'far', 2, '[]', 'open', '')"#,
    )
    .bind(Uuid::now_v7())
    .bind(v1.entity_id)
    .execute(&env.pool)
    .await
    .map_err(Error::from);
    let id = v1.entity_id;
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
        async move { Order::modify(&pool, id, |o| o.r#select = 3).await }
    })
    .await;
    let versions: i64 = sqlx::query_scalar(r#"SELECT count(*) FROM "order" WHERE entity_id = $1"#)
        .bind(id)
        .fetch_one(&env.pool)
        .await?;
    let answers = format!("find: {find}; history: {history}; list: {list}; modify: {modify}");
    match inserted {
        Err(Error::InvalidHistory { .. }) => {
            verdict.count("a version valid from year 270000 (beyond chrono's range) refused".to_owned())
        }
        Err(err) => verdict.fail(format!("a version valid from year 270000: untyped refusal {err:?}")),
        Ok(_) => verdict.fail(format!(
            "a version valid from year 270000 was accepted ({versions} versions stored); afterwards {answers}"
        )),
    }
    Ok(())
}

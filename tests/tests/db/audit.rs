//! The audit trail: who and why on every version (per task, per call, per transaction, raw SQL),
//! a required actor, no-op writes, diffs, reverts and partial updates.

use immu_core::sea_query::extension::postgres::PgExpr;
use immu_core::sea_query::{Expr, ExprTrait};
use immu_core::{Audit, Change, Error, Immutable, Written};
use immu_tests::harness::{Db, TestResult};
use immu_tests::models::Account;
use serde_json::json;
use sqlx::Connection;

immu_tests::tests![
    every_version_records_who_and_why_from_the_task_the_call_or_the_transaction,
    raw_sql_writers_are_never_anonymous,
    changes_by_an_actor_between_two_instants,
    a_table_can_require_an_actor_and_a_write_without_one_writes_nothing,
    a_write_of_identical_data_appends_nothing_unless_the_table_records_it,
    diffs_between_versions_and_along_the_history,
    revert_restores_an_earlier_version_and_says_so,
    revert_of_a_deleted_entity_is_refused_and_writes_nothing,
    partial_updates_compute_in_the_database_under_the_lock,
    thirty_two_partial_updates_racing_on_one_entity_lose_nothing,
    a_partial_update_takes_values_literally,
    a_column_named_like_a_plpgsql_variable_is_stored_as_written,
    blank_actors_and_no_op_writes_without_an_actor_are_refused,
    a_version_that_claims_a_revert_must_carry_that_versions_data,
    a_partial_update_statement_returning_two_rows_commits_nothing,
    a_partial_update_casts_its_values_like_an_update,
    an_audit_scope_inherits_from_the_scope_it_runs_in,
    diffs_are_exact,
];

/// A table with a column named like PL/pgSQL's `FOUND` (attack round 3, finding 1).
#[derive(Debug, Clone, PartialEq, Immutable)]
#[immu(table = "lost_items")]
struct LostItem {
    name: String,
    found: bool,
}

async fn session_user(db: &Db) -> sqlx::Result<String> {
    sqlx::query_scalar("SELECT session_user::text").fetch_one(&db.pool).await
}

async fn every_version_records_who_and_why_from_the_task_the_call_or_the_transaction(db: Db) -> TestResult {
    let user = session_user(&db).await?;
    // A task's scope: every write in it.
    let (v1, v2) = Audit::actor("ada")
        .with_context(json!({ "request_id": "r-1" }))
        .scope(async {
            let v1 = Account::insert(&db.pool, Account::new("ada", 10)).await?;
            // One call's own reason; the actor and context are inherited.
            let v2 = Audit::reason("top-up")
                .scope(Account::modify(&db.pool, v1.entity_id, |a| a.balance += 5))
                .await?;
            Ok::<_, Error>((v1, v2))
        })
        .await?;
    assert_eq!(v1.provenance.actor.as_deref(), Some("ada"));
    assert_eq!(v1.provenance.reason, None);
    assert_eq!(v1.provenance.context, Some(json!({ "request_id": "r-1" })));
    assert_eq!(v1.provenance.db_user.as_deref(), Some(user.as_str()));
    assert_eq!(
        (v2.provenance.actor.as_deref(), v2.provenance.reason.as_deref()),
        (Some("ada"), Some("top-up"))
    );
    // Outside the scope: nothing said, the database user still recorded.
    let v3 = Account::modify(&db.pool, v1.entity_id, |a| a.balance += 1).await?;
    assert_eq!((v3.provenance.actor.as_deref(), v3.provenance.reason.as_deref()), (None, None));
    assert_eq!(v3.provenance.db_user.as_deref(), Some(user.as_str()));
    // A transaction's settings: immu's writes and raw SQL in it.
    let mut tx = db.pool.begin().await?;
    Audit::actor("nightly").with_reason("interest").set_local(&mut *tx).await?;
    let v4 = Account::modify(&mut *tx, v1.entity_id, |a| a.balance += 2).await?;
    sqlx::query(
        "INSERT INTO accounts (id, entity_id, version, owner, balance) VALUES (gen_random_uuid(), $1, 5, 'raw', 0)",
    )
    .bind(v1.entity_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    assert_eq!(
        (v4.provenance.actor.as_deref(), v4.provenance.reason.as_deref()),
        (Some("nightly"), Some("interest"))
    );
    // A task's audit wins over the transaction's setting.
    let mut tx = db.pool.begin().await?;
    Audit::actor("nightly").set_local(&mut *tx).await?;
    let v6 = Audit::actor("bob").scope(Account::modify(&mut *tx, v1.entity_id, |a| a.balance += 1)).await?;
    tx.commit().await?;
    assert_eq!(v6.provenance.actor.as_deref(), Some("bob"));
    // History returns what was stored, and a new transaction starts without the settings.
    let history = Account::history(&db.pool, v1.entity_id).await?;
    let actors: Vec<Option<&str>> = history.iter().map(|v| v.provenance.actor.as_deref()).collect();
    assert_eq!(actors, [Some("ada"), Some("ada"), None, Some("nightly"), Some("nightly"), Some("bob")]);
    assert_eq!(history[4].owner, "raw");
    let v7 = Account::modify(&db.pool, v1.entity_id, |a| a.balance += 1).await?;
    assert_eq!(v7.provenance.actor, None);
    // The current read (the projection) carries it too.
    assert_eq!(Account::find(&db.pool, v1.entity_id).await?.provenance, v7.provenance);
    Ok(())
}

async fn raw_sql_writers_are_never_anonymous(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    let mut psql = db.connect().await?;
    sqlx::raw_sql("SET application_name = 'psql'").execute(&mut psql).await?;
    // A raw writer cannot claim another database user or application.
    sqlx::query(
        "INSERT INTO accounts (id, entity_id, version, owner, balance, immu_db_user, immu_application) \
         VALUES (gen_random_uuid(), $1, 2, 'ada', 2, 'postgres', 'payroll')",
    )
    .bind(v1.entity_id)
    .execute(&mut psql)
    .await?;
    let (user, application): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT immu_db_user, immu_application FROM accounts WHERE entity_id = $1 AND version = 2",
    )
    .bind(v1.entity_id)
    .fetch_one(&db.pool)
    .await?;
    assert_eq!(user, Some(session_user(&db).await?));
    assert_eq!(application.as_deref(), Some("psql"));
    // A revert_of that names no earlier version is refused.
    let err = sqlx::query(
        "INSERT INTO accounts (id, entity_id, version, owner, balance, immu_revert_of) \
         VALUES (gen_random_uuid(), $1, 3, 'ada', 3, 3)",
    )
    .bind(v1.entity_id)
    .execute(&mut psql)
    .await
    .unwrap_err();
    assert!(matches!(Error::from(err), Error::InvalidHistory { .. }));
    Ok(())
}

async fn changes_by_an_actor_between_two_instants(db: Db) -> TestResult {
    let a = Audit::actor("ada").scope(Account::insert(&db.pool, Account::new("a", 1))).await?;
    let b = Audit::actor("bob").scope(Account::insert(&db.pool, Account::new("b", 1))).await?;
    let start = Audit::actor("ada").scope(Account::modify(&db.pool, b.entity_id, |x| x.balance = 2)).await?;
    Audit::actor("bob").scope(Account::modify(&db.pool, a.entity_id, |x| x.balance = 3)).await?;
    let last = Audit::actor("ada").scope(Account::modify(&db.pool, a.entity_id, |x| x.balance = 4)).await?;
    Audit::actor("ada").scope(Account::modify(&db.pool, a.entity_id, |x| x.balance = 5)).await?;
    let changes = Account::query()
        .changed_between(start.valid_from, last.valid_from + chrono::Duration::microseconds(1))
        .by_actor("ada")
        .order_by_time()
        .fetch_all(&db.pool)
        .await?;
    let got: Vec<(uuid::Uuid, i64)> = changes.iter().map(|v| (v.entity_id, v.balance)).collect();
    assert_eq!(got, [(b.entity_id, 2), (a.entity_id, 4)]);
    // The typed column works in any filter.
    let current_by_bob = Account::query().filter(Account::IMMU_ACTOR.eq("bob")).count(&db.pool).await?;
    assert_eq!(current_by_bob, 0, "every entity's current version is ada's");
    Ok(())
}

async fn a_table_can_require_an_actor_and_a_write_without_one_writes_nothing(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    let options: serde_json::Value =
        sqlx::query_scalar("SELECT immu.configure_versioning('accounts', require_actor => true)")
            .fetch_one(&db.owner)
            .await?;
    // (The test suite's accounts also notify the change feed: tests/migrations.)
    assert_eq!(options, json!({ "require_actor": true, "notify": true }));
    let err = Account::modify(&db.pool, v1.entity_id, |a| a.balance += 1).await.unwrap_err();
    assert!(matches!(&err, Error::ActorRequired { table, .. } if table == "accounts"), "{err:?}");
    assert!(!err.is_retryable());
    let err = Account::insert(&db.pool, Account::new("bob", 1)).await.unwrap_err();
    assert!(matches!(err, Error::ActorRequired { .. }), "{err:?}");
    let err = Audit::actor("").scope(Account::delete(&db.pool, v1.entity_id)).await.unwrap_err();
    assert!(matches!(err, Error::ActorRequired { .. }), "an empty actor is none: {err:?}");
    let raw = sqlx::query(
        "INSERT INTO accounts (id, entity_id, version, owner, balance) VALUES (gen_random_uuid(), $1, 2, 'x', 0)",
    )
    .bind(v1.entity_id)
    .execute(&db.pool)
    .await
    .unwrap_err();
    assert!(matches!(Error::from(raw), Error::ActorRequired { .. }));
    // Nothing was written.
    assert_eq!(Account::history(&db.pool, v1.entity_id).await?.len(), 1);
    assert_eq!(Account::query().with_deleted().count(&db.pool).await?, 1);
    // With an actor, from a scope or the transaction's setting, it writes.
    let v2 = Audit::actor("ada").scope(Account::modify(&db.pool, v1.entity_id, |a| a.balance += 1)).await?;
    assert_eq!(v2.version, 2);
    let mut tx = db.pool.begin().await?;
    sqlx::raw_sql("SET LOCAL immu.actor = 'psql-user'").execute(&mut *tx).await?;
    Account::delete(&mut *tx, v1.entity_id).await?;
    tx.commit().await?;
    // Turned off again, anonymous writes pass.
    sqlx::query("SELECT immu.configure_versioning('accounts', require_actor => false)")
        .execute(&db.owner)
        .await?;
    Account::undelete(&db.pool, v1.entity_id).await?;
    Ok(())
}

async fn a_write_of_identical_data_appends_nothing_unless_the_table_records_it(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 10)).await?;
    let same = Account::update(&db.pool, v1.entity_id, Account::new("ada", 10)).await?;
    assert!(matches!(&same, Written::Unchanged(v) if *v == v1), "{same:?}");
    let same = Account::modify(&db.pool, v1.entity_id, |_| {}).await?;
    assert!(!same.is_appended());
    let same = Account::update_if_version(&db.pool, v1.entity_id, 1, Account::new("ada", 10)).await?;
    assert!(!same.is_appended());
    let same = Account::patch(&db.pool, v1.entity_id).set(Account::BALANCE, 10).await?;
    assert!(!same.is_appended());
    // A stale expected version is still a conflict, even with identical data.
    let changed = Account::update(&db.pool, v1.entity_id, Account::new("ada", 11)).await?;
    assert!(changed.is_appended());
    let err =
        Account::update_if_version(&db.pool, v1.entity_id, 1, Account::new("ada", 11)).await.unwrap_err();
    assert!(matches!(err, Error::VersionConflict { .. }), "{err:?}");
    assert_eq!(Account::history(&db.pool, v1.entity_id).await?.len(), 2);
    // A table that records identical versions.
    sqlx::query("SELECT immu.configure_versioning('accounts', record_identical => true)")
        .execute(&db.owner)
        .await?;
    let again = Account::update(&db.pool, v1.entity_id, Account::new("ada", 11)).await?;
    assert!(again.is_appended());
    assert_eq!(again.version, 3);
    Ok(())
}

async fn diffs_between_versions_and_along_the_history(db: Db) -> TestResult {
    let v1 = Audit::actor("ada").scope(Account::insert(&db.pool, Account::new("ada", 100))).await?;
    let id = v1.entity_id;
    Audit::actor("bob").scope(Account::modify(&db.pool, id, |a| a.balance = 70)).await?;
    Account::modify(&db.pool, id, |a| a.owner = "ada lovelace".into()).await?;
    Account::delete(&db.pool, id).await?;
    Account::undelete(&db.pool, id).await?;
    Account::revert(&db.pool, id, 1).await?;

    let diff = Account::diff(&db.pool, id, 1, 3).await?;
    assert_eq!(diff.fields.len(), 2);
    assert_eq!(
        diff.get(Account::BALANCE)
            .map(|c| (c.from_as::<i64>(), c.to_as::<i64>()))
            .map(|(a, b)| (a.ok(), b.ok())),
        Some((Some(100), Some(70)))
    );
    assert_eq!(diff.get(Account::OWNER).map(|c| c.to.clone()), Some(json!("ada lovelace")));
    assert_eq!(diff.change, None, "not consecutive");
    let back = Account::diff(&db.pool, id, 3, 1).await?;
    assert_eq!(back.get(Account::BALANCE).map(|c| c.to.clone()), Some(json!(100)));
    let err = Account::diff(&db.pool, id, 1, 99).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { version: Some(99), .. }), "{err:?}");

    let history = Account::history_with_diffs(&db.pool, id).await?;
    let kinds: Vec<Change> = history.iter().map(|(_, d)| d.change.expect("consecutive")).collect();
    assert_eq!(
        kinds,
        [
            Change::Created,
            Change::Updated,
            Change::Updated,
            Change::Deleted,
            Change::Undeleted,
            Change::Reverted { to: 1 }
        ]
    );
    let changed: Vec<Vec<&str>> =
        history.iter().map(|(_, d)| d.fields.iter().map(|f| f.column.as_str()).collect()).collect();
    assert_eq!(
        changed,
        [vec!["owner", "balance"], vec!["balance"], vec!["owner"], vec![], vec![], vec!["owner", "balance"]]
    );
    assert_eq!(history[1].0.provenance.actor.as_deref(), Some("bob"));
    // For an API: serializable as is.
    let body = serde_json::to_value(&history[1].1)?;
    assert_eq!(body["fields"], json!([{ "column": "balance", "field": "balance", "from": 100, "to": 70 }]));
    assert_eq!(body["change"], json!({ "kind": "updated" }));
    assert!(Account::history_with_diffs(&db.pool, uuid::Uuid::now_v7()).await.unwrap_err().is_not_found());
    Ok(())
}

async fn revert_restores_an_earlier_version_and_says_so(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    let id = v1.entity_id;
    let v2 = Account::modify(&db.pool, id, |a| a.balance = 2).await?;
    Account::modify(&db.pool, id, |a| a.balance = 3).await?;
    let reverted =
        Audit::actor("ops").with_reason("bad import").scope(Account::revert(&db.pool, id, 1)).await?;
    assert!(reverted.is_appended());
    assert_eq!((reverted.version, reverted.balance, reverted.provenance.revert_of), (4, 1, Some(1)));
    assert_eq!(reverted.provenance.reason.as_deref(), Some("bad import"));
    // Reverting to what it already is appends nothing.
    assert!(!Account::revert(&db.pool, id, 1).await?.is_appended());
    // As of an instant: the version current then.
    let as_of = Account::revert_as_of(&db.pool, id, v2.valid_from).await?;
    assert_eq!((as_of.version, as_of.balance, as_of.provenance.revert_of), (5, 2, Some(2)));
    // To a tombstone: the data it carried, live.
    let tomb = Account::delete(&db.pool, id).await?;
    Account::undelete(&db.pool, id).await?;
    Account::modify(&db.pool, id, |a| a.balance = 9).await?;
    let to_tomb = Account::revert(&db.pool, id, tomb.version).await?;
    assert_eq!((to_tomb.balance, to_tomb.deleted_at), (2, None));
    // Nothing to revert to.
    let err = Account::revert(&db.pool, id, 99).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { version: Some(99), .. }), "{err:?}");
    let err = Account::revert(&db.pool, id, 0).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { version: Some(0), .. }), "{err:?}");
    let err =
        Account::revert_as_of(&db.pool, id, v1.valid_from - chrono::Duration::seconds(1)).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { version: None, .. }), "{err:?}");
    let err = Account::revert(&db.pool, uuid::Uuid::now_v7(), 1).await.unwrap_err();
    assert!(err.is_not_found());
    // Inside a caller's transaction, rolled back with it.
    let before = Account::history(&db.pool, id).await?.len();
    let mut tx = db.pool.begin().await?;
    Account::revert(&mut *tx, id, 1).await?;
    tx.rollback().await?;
    assert_eq!(Account::history(&db.pool, id).await?.len(), before);
    let check: i64 = sqlx::query_scalar("SELECT count(*) FROM immu.check_history('accounts')")
        .fetch_one(&db.owner)
        .await?;
    assert_eq!(check, 0);
    Ok(())
}

async fn revert_of_a_deleted_entity_is_refused_and_writes_nothing(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    Account::modify(&db.pool, v1.entity_id, |a| a.balance = 2).await?;
    let tomb = Account::delete(&db.pool, v1.entity_id).await?;
    let err = Account::revert(&db.pool, v1.entity_id, 1).await.unwrap_err();
    assert!(matches!(&err, Error::Deleted { version, .. } if *version == tomb.version), "{err:?}");
    let err = Account::revert_as_of(&db.pool, v1.entity_id, v1.valid_from).await.unwrap_err();
    assert!(err.is_deleted(), "{err:?}");
    assert_eq!(Account::history(&db.pool, v1.entity_id).await?.len(), 3);
    // Undelete, then revert: two versions.
    Account::undelete(&db.pool, v1.entity_id).await?;
    let back = Account::revert(&db.pool, v1.entity_id, 1).await?;
    assert_eq!((back.version, back.balance), (5, 1));
    Ok(())
}

async fn partial_updates_compute_in_the_database_under_the_lock(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 100)).await?;
    let id = v1.entity_id;
    let v2 = Audit::actor("teller")
        .scope(Account::patch(&db.pool, id).set(Account::BALANCE, Expr::col(Account::BALANCE).add(30)))
        .await?;
    assert_eq!((v2.version, v2.owner.as_str(), v2.balance), (2, "ada", 130));
    assert_eq!(v2.provenance.actor.as_deref(), Some("teller"));
    let v3 = Account::patch(&db.pool, id)
        .set(Account::OWNER, Expr::col(Account::OWNER).concat(" lovelace"))
        .set(Account::BALANCE, Expr::col(Account::BALANCE).mul(2))
        .await?;
    assert_eq!((v3.owner.as_str(), v3.balance), ("ada lovelace", 260));
    // In a caller's transaction.
    let mut tx = db.pool.begin().await?;
    let v4 = Account::patch(&mut *tx, id).set(Account::BALANCE, 1).await?;
    tx.commit().await?;
    assert_eq!(v4.version, 4);
    // Refusals: missing, deleted, a bad value, a reserved column; nothing written.
    let err = Account::patch(&db.pool, uuid::Uuid::now_v7()).set(Account::BALANCE, 1).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    let err =
        Account::patch(&db.pool, id).set(Account::BALANCE, Expr::val("not a number")).await.unwrap_err();
    assert!(matches!(err, Error::InvalidValue { .. }), "{err:?}");
    let err = Account::patch(&db.pool, id).set(Account::VERSION, 99).await.unwrap_err();
    assert!(matches!(err, Error::UnknownColumn { .. }), "{err:?}");
    Account::delete(&db.pool, id).await?;
    let err = Account::patch(&db.pool, id).set(Account::BALANCE, 1).await.unwrap_err();
    assert!(err.is_deleted(), "{err:?}");
    assert_eq!(Account::history(&db.pool, id).await?.len(), 5);
    Ok(())
}

async fn thirty_two_partial_updates_racing_on_one_entity_lose_nothing(db: Db) -> TestResult {
    const WRITERS: i64 = 32;
    const EACH: i64 = 5;
    let v1 = Account::insert(&db.pool, Account::new("hot", 0)).await?;
    let pool = db.pool(16).await?;
    let mut handles = Vec::new();
    for writer in 0..WRITERS {
        let pool = pool.clone();
        let id = v1.entity_id;
        handles.push(tokio::spawn(async move {
            for _ in 0..EACH {
                let written = Audit::actor(format!("writer-{writer}"))
                    .scope(
                        Account::patch(&pool, id).set(Account::BALANCE, Expr::col(Account::BALANCE).add(1)),
                    )
                    .await?;
                assert!(written.is_appended());
            }
            Ok::<_, Error>(())
        }));
    }
    for handle in handles {
        handle.await??;
    }
    let current = Account::find(&db.pool, v1.entity_id).await?;
    assert_eq!((current.balance, current.version), (WRITERS * EACH, WRITERS * EACH + 1));
    let history = Account::history(&db.pool, v1.entity_id).await?;
    assert!(history.iter().enumerate().all(|(i, v)| v.balance == i as i64), "each version adds one");
    let projection: i64 = sqlx::query_scalar("SELECT count(*) FROM immu.check_projection('accounts')")
        .fetch_one(&db.owner)
        .await?;
    assert_eq!(projection, 0);
    Ok(())
}

async fn a_partial_update_takes_values_literally(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    let nasty = "x'); DELETE FROM accounts; -- \\ $1 $$ \u{1F600}";
    let v2 = Account::patch(&db.pool, v1.entity_id).set(Account::OWNER, nasty).await?;
    assert_eq!(v2.owner, nasty);
    let mut tx = db.pool.begin().await?;
    let v3 = Account::patch(&mut *tx, v1.entity_id).set(Account::OWNER, Expr::val(nasty).concat("!")).await?;
    tx.commit().await?;
    assert_eq!(v3.owner, format!("{nasty}!"));
    assert_eq!(Account::find(&db.pool, v1.entity_id).await?.owner, format!("{nasty}!"));
    // The connection stays usable for ordinary statements after patches (nothing left prepared).
    let mut conn = db.pool.acquire().await?;
    conn.ping().await?;
    Ok(())
}

async fn a_column_named_like_a_plpgsql_variable_is_stored_as_written(db: Db) -> TestResult {
    sqlx::raw_sql(
        "CREATE TABLE lost_items (name text NOT NULL, found boolean NOT NULL); \
         SELECT immu.add_versioning('lost_items'); \
         GRANT SELECT, INSERT ON lost_items TO immu_test_app; GRANT SELECT ON lost_items_current TO immu_test_app;",
    )
    .execute(&db.owner)
    .await?;
    // Each write path: the procedure (pool), the function (a caller's transaction), patch, revert.
    let v1 = LostItem::insert(&db.pool, LostItem { name: "keys".into(), found: true }).await?;
    assert!(v1.found);
    let v2 = LostItem::update(&db.pool, v1.entity_id, LostItem { name: "keys".into(), found: false }).await?;
    assert!(v2.is_appended() && !v2.found, "a change of `found` alone is a change");
    let mut tx = db.pool.begin().await?;
    let v3 = LostItem::update(&mut *tx, v1.entity_id, LostItem { name: "keys".into(), found: true }).await?;
    tx.commit().await?;
    assert!(v3.found);
    let v4 = LostItem::patch(&db.pool, v1.entity_id).set(LostItem::FOUND, false).await?;
    assert!(!v4.found);
    let v5 = LostItem::revert(&db.pool, v1.entity_id, 1).await?;
    assert!(v5.found);
    let stored: Vec<bool> =
        LostItem::history(&db.pool, v1.entity_id).await?.iter().map(|v| v.found).collect();
    assert_eq!(stored, [true, false, true, false, true]);
    let projection: i64 = sqlx::query_scalar("SELECT count(*) FROM immu.check_projection('lost_items')")
        .fetch_one(&db.owner)
        .await?;
    assert_eq!(projection, 0);
    Ok(())
}

async fn blank_actors_and_no_op_writes_without_an_actor_are_refused(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    sqlx::query("SELECT immu.configure_versioning('accounts', require_actor => true)")
        .execute(&db.owner)
        .await?;
    for blank in [" ", "\t\n", "\u{200b}", "\u{a0}\u{feff}"] {
        let err = Audit::actor(blank)
            .scope(Account::modify(&db.pool, v1.entity_id, |a| a.balance += 1))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ActorRequired { .. }), "{blank:?}: {err:?}");
    }
    // A write that would append nothing is refused too.
    let err = Account::update(&db.pool, v1.entity_id, Account::new("ada", 1)).await.unwrap_err();
    assert!(matches!(err, Error::ActorRequired { .. }), "{err:?}");
    let err = Account::patch(&db.pool, v1.entity_id).set(Account::BALANCE, 1).await.unwrap_err();
    assert!(matches!(err, Error::ActorRequired { .. }), "{err:?}");
    assert_eq!(Account::history(&db.pool, v1.entity_id).await?.len(), 1);
    let named =
        Audit::actor(" ada ").scope(Account::modify(&db.pool, v1.entity_id, |a| a.balance += 1)).await?;
    assert_eq!(named.provenance.actor.as_deref(), Some(" ada "));
    Ok(())
}

async fn a_version_that_claims_a_revert_must_carry_that_versions_data(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    Account::modify(&db.pool, v1.entity_id, |a| a.balance = 2).await?;
    let claim = |owner: &'static str, balance: i64| {
        sqlx::query(
            "INSERT INTO accounts (id, entity_id, version, owner, balance, immu_revert_of) \
             VALUES (gen_random_uuid(), $1, 3, $2, $3, 1)",
        )
        .bind(v1.entity_id)
        .bind(owner)
        .bind(balance)
    };
    let err = claim("evil", 1_000_000).execute(&db.pool).await.unwrap_err();
    assert!(matches!(Error::from(err), Error::InvalidHistory { .. }));
    // Version 1's data: a true revert (its shape, NULL for a raw insert, differs from version 1's).
    let err = claim("ada", 1).execute(&db.pool).await.unwrap_err();
    assert!(matches!(Error::from(err), Error::InvalidHistory { .. }), "version 1 has shape 1, this one none");
    sqlx::query(
        "INSERT INTO accounts (id, entity_id, version, owner, balance, immu_shape, immu_revert_of) \
         VALUES (gen_random_uuid(), $1, 3, 'ada', 1, 1, 1)",
    )
    .bind(v1.entity_id)
    .execute(&db.pool)
    .await?;
    let history = Account::history_with_diffs(&db.pool, v1.entity_id).await?;
    assert_eq!(history[2].1.change, Some(Change::Reverted { to: 1 }));
    Ok(())
}

async fn a_partial_update_statement_returning_two_rows_commits_nothing(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    let err = sqlx::query(
        "CALL accounts_immu_commit('update', entity_id => $1, id => gen_random_uuid(), \
         immu_patch => 'SELECT w.* FROM generate_series(1, 2) AS g, LATERAL accounts_immu_write(''update'', gen_random_uuid(), $1, owner => ''two'', balance => g) AS w')",
    )
    .bind(v1.entity_id)
    .execute(&db.pool)
    .await
    .unwrap_err();
    assert!(str::contains(&err.to_string(), "more than one row"), "{err}");
    assert_eq!(Account::history(&db.pool, v1.entity_id).await?.len(), 1);
    Ok(())
}

async fn a_partial_update_casts_its_values_like_an_update(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 10)).await?;
    // numeric -> bigint (rounded, as `UPDATE ... SET balance = balance * 1.5` would), int -> text,
    // and a subquery.
    let v2 = Account::patch(&db.pool, v1.entity_id)
        .set(Account::BALANCE, Expr::col(Account::BALANCE).mul(1.5))
        .await?;
    assert_eq!(v2.balance, 15);
    let v3 = Account::patch(&db.pool, v1.entity_id).set(Account::OWNER, 5).await?;
    assert_eq!(v3.owner, "5");
    let v4 = Account::patch(&db.pool, v1.entity_id)
        .set(Account::BALANCE, Expr::cust("(SELECT count(*) FROM accounts_current)"))
        .await?;
    assert_eq!(v4.balance, 1);
    let err = Account::patch(&db.pool, v1.entity_id).set(Account::BALANCE, "abc").await.unwrap_err();
    assert!(matches!(err, Error::InvalidValue { .. }), "{err:?}");
    // A statement naming a table it does not select from is not a missing table.
    let err = Account::query()
        .filter(immu_tests::models::Customer::NAME.eq("x"))
        .fetch_all(&db.pool)
        .await
        .unwrap_err();
    assert!(!matches!(err, Error::MissingTable { .. }), "{err:?}");
    Ok(())
}

async fn an_audit_scope_inherits_from_the_scope_it_runs_in(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    // Built outside, awaited inside: it inherits the actor of the scope it runs in.
    let inner = Audit::reason("fee").scope(Account::modify(&db.pool, v1.entity_id, |a| a.balance += 1));
    let written = Audit::actor("ada").scope(inner).await?;
    assert_eq!(
        (written.provenance.actor.as_deref(), written.provenance.reason.as_deref()),
        (Some("ada"), Some("fee"))
    );
    // Several scoped writes joined under one scope.
    let writes: Vec<_> = (0..3)
        .map(|i| Audit::reason(format!("item {i}")).scope(Account::insert(&db.pool, Account::new("x", i))))
        .collect();
    let all = Audit::actor("bob").scope(futures_util::future::try_join_all(writes)).await?;
    assert!(all.iter().all(|v| v.provenance.actor.as_deref() == Some("bob")), "{all:?}");
    Ok(())
}

async fn diffs_are_exact(db: Db) -> TestResult {
    sqlx::raw_sql(
        "ALTER TABLE accounts ADD COLUMN exact numeric; SELECT immu.sync_versioning('accounts'); \
         GRANT SELECT, INSERT ON accounts TO immu_test_app; GRANT SELECT ON accounts_current TO immu_test_app;",
    )
    .execute(&db.owner)
    .await?;
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    for (version, exact) in
        [(2, "1.00000000000000000001"), (3, "1.00000000000000000002"), (4, "1.0"), (5, "1.00")]
    {
        sqlx::query(
            "INSERT INTO accounts (id, entity_id, version, owner, balance, exact) VALUES (gen_random_uuid(), $1, $2, 'ada', 1, $3::numeric)",
        )
        .bind(v1.entity_id)
        .bind(version)
        .bind(exact)
        .execute(&db.pool)
        .await?;
    }
    let history = Account::history_with_diffs(&db.pool, v1.entity_id).await?;
    let changed: Vec<usize> = history.iter().map(|(_, d)| d.fields.len()).collect();
    assert_eq!(changed, [2, 1, 1, 1, 1], "each value differs from the one before, to the last digit");
    Ok(())
}

//! Migrations and the DDL the derive generates.

use immu_core::schema::{create_table, create_table_for, validate_identifier};
use immu_core::{ColumnDef, Error, TableDef};
use immu_tests::harness::{Db, TestResult};
use immu_tests::models::{Account, Customer, Invoice, Order};

immu_tests::tests![
    migrations_match_the_generated_ddl,
    generated_ddl_creates_a_working_table,
    invalid_identifiers_are_refused_at_runtime,
    immu_migrations_are_tracked_apart_and_rerunnable,
    a_table_referencing_itself_is_created_by_its_generated_ddl,
];

/// A tree: each node references its parent, an entity of the same table.
#[derive(Debug, Clone, PartialEq, immu_core::Immutable)]
#[immu(table = "nodes")]
struct Node {
    name: String,
    #[immu(references = Self)]
    parent_id: Option<uuid::Uuid>,
}

/// Checks that the migration file under `dir` whose name ends with `_<suffix>.sql` holds exactly
/// `ddl`. With `IMMU_BLESS=1` in the environment, writes `ddl` into it instead.
fn assert_migration(dir: &str, suffix: &str, ddl: String) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let path = std::fs::read_dir(&dir)
        .expect("migrations dir")
        .map(|e| e.expect("dir entry").path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(&format!("_{suffix}.sql")))
        })
        .unwrap_or_else(|| panic!("no migration *_{suffix}.sql in {}", dir.display()));
    if std::env::var_os("IMMU_BLESS").is_some() {
        std::fs::write(&path, &ddl).expect("write migration");
    }
    let file = std::fs::read_to_string(&path).expect("migration file");
    assert_eq!(file, ddl, "{} differs from the generated DDL (IMMU_BLESS=1 rewrites it)", path.display());
}

async fn migrations_match_the_generated_ddl(_db: Db) -> TestResult {
    assert_migration("migrations", "accounts", create_table::<Account>()?);
    assert_migration("migrations", "order", create_table::<Order>()?);
    assert_migration("migrations", "customers", create_table::<Customer>()?);
    assert_migration("migrations", "invoices", create_table::<Invoice>()?);
    assert_migration("../demo/migrations", "customers", create_table::<immu_demo::Customer>()?);
    assert_migration("../demo/migrations", "accounts", create_table::<immu_demo::Account>()?);
    assert_migration("../demo/migrations", "transfers", create_table::<immu_demo::Transfer>()?);
    assert_migration("../demo/migrations", "advisors", create_table::<immu_demo::AdvisorV1>()?);
    Ok(())
}

async fn generated_ddl_creates_a_working_table(db: Db) -> TestResult {
    // A table description built at runtime, created from its DDL, then refusing an UPDATE.
    const GADGETS: TableDef = TableDef {
        name: "gadgets",
        rust_name: "Gadget",
        columns: &[
            ColumnDef {
                name: "name",
                field: "name",
                sql_type: "text",
                nullable: false,
                json: false,
                references: None,
            },
            ColumnDef {
                name: "weight",
                field: "weight",
                sql_type: "double precision",
                nullable: true,
                json: false,
                references: None,
            },
        ],
        shape: 1,
        upcast: None,
    };
    let ddl = create_table_for(&GADGETS)?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl)).execute(&db.owner).await?;
    sqlx::raw_sql(
        "INSERT INTO gadgets (id, entity_id, version, valid_from, name, weight) VALUES (gen_random_uuid(), gen_random_uuid(), 1, now(), 'g', NULL)",
    )
    .execute(&db.owner)
    .await?;
    let err =
        Error::from(sqlx::raw_sql("UPDATE gadgets SET name = 'h'").execute(&db.owner).await.unwrap_err());
    assert!(matches!(&err, Error::AppendOnly { table, .. } if table == "gadgets"), "{err:?}");
    let indexes: Vec<String> =
        sqlx::query_scalar("SELECT indexname::text FROM pg_indexes WHERE tablename = 'gadgets' ORDER BY 1")
            .fetch_all(&db.owner)
            .await?;
    assert_eq!(
        indexes,
        ["gadgets_immu_xid", "gadgets_pkey"],
        "the history's indexes: its primary key, and the change feed's BRIN index by transaction"
    );
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE tablename = 'gadgets_current' ORDER BY 1",
    )
    .fetch_all(&db.owner)
    .await?;
    assert_eq!(indexes, ["gadgets_current_pkey"]);
    let enabled: String = sqlx::query_scalar(
        "SELECT tgenabled::text FROM pg_trigger WHERE tgrelid = 'gadgets'::regclass AND tgname = 'immu_append_only'",
    )
    .fetch_one(&db.owner)
    .await?;
    assert_eq!(enabled, "A", "the trigger is ENABLE ALWAYS");
    Ok(())
}

async fn invalid_identifiers_are_refused_at_runtime(_db: Db) -> TestResult {
    for ok in ["accounts", "order", "user", "_x", "Mixed_Case1", &"a".repeat(63)] {
        validate_identifier(ok)?;
    }
    for bad in ["", "1abc", "a b", "a\"b", "a;b", "a.b", "a-b", "café", "nul\0", &"a".repeat(64)] {
        let err = validate_identifier(bad).unwrap_err();
        assert!(matches!(&err, Error::InvalidIdentifier { name, .. } if name == bad), "{bad:?}: {err:?}");
    }
    const fn column(name: &'static str) -> ColumnDef {
        ColumnDef { name, field: "f", sql_type: "text", nullable: false, json: false, references: None }
    }
    const LONG: &str = "t_23456789_123456789_123456789_123456789_12345678"; // 49 bytes
    const RESERVED: &[ColumnDef] = &[column("version")];
    const RESERVED_OTHER_CASE: &[ColumnDef] = &[column("Entity_Id")];
    const TWICE: &[ColumnDef] = &[column("a"), column("a")];
    const INJECTION: &[ColumnDef] = &[column("x\"); drop table t; --")];
    let cases: [(&'static str, &'static [ColumnDef], &str); 6] = [
        ("drop table x", &[], "drop table x"),
        (LONG, &[], LONG),
        ("t", RESERVED, "version"),
        ("t", RESERVED_OTHER_CASE, "Entity_Id"),
        ("t", TWICE, "a"),
        ("t", INJECTION, "x\"); drop table t; --"),
    ];
    for (name, columns, bad) in cases {
        let err = create_table_for(&TableDef { name, rust_name: "T", columns, shape: 1, upcast: None })
            .unwrap_err();
        assert!(matches!(&err, Error::InvalidIdentifier { name, .. } if name == bad), "{bad:?}: {err:?}");
    }
    Ok(())
}

async fn immu_migrations_are_tracked_apart_and_rerunnable(db: Db) -> TestResult {
    let immu: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM immu._migrations ORDER BY 1").fetch_all(&db.owner).await?;
    assert_eq!(immu, immu_core::MIGRATOR.iter().map(|m| m.version).collect::<Vec<_>>());
    let app: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&db.owner).await?;
    assert_eq!(app as usize, immu_tests::MIGRATOR.iter().count());
    // Both migrators can run again: nothing to do, no "missing migration" error.
    immu_core::MIGRATOR.run(&db.owner).await?;
    immu_tests::MIGRATOR.run(&db.owner).await?;
    Ok(())
}

async fn a_table_referencing_itself_is_created_by_its_generated_ddl(db: Db) -> TestResult {
    use immu_core::Immutable;
    let ddl = create_table::<Node>()?;
    assert!(ddl.ends_with(
        "SELECT immu.add_versioning('\"nodes\"');\nALTER TABLE \"nodes\" ADD FOREIGN KEY (\"parent_id\") REFERENCES \"nodes_current\" (\"entity_id\");\n"
    ), "{ddl}");
    let mut owner = db.connect_owner().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl)).execute(&mut owner).await?;
    immu_tests::harness::grant_application_role(&mut owner, immu_tests::harness::APP_ROLE).await?;
    immu_core::schema::check::<Node>(&db.pool).await?;
    let root = Node::insert(&db.pool, Node { name: "root".into(), parent_id: None }).await?;
    let leaf = Node::insert(&db.pool, Node { name: "leaf".into(), parent_id: Some(root.entity_id) }).await?;
    assert_eq!(Node::find(&db.pool, leaf.entity_id).await?.parent_id, Some(root.entity_id));
    let err = Node::insert(&db.pool, Node { name: "orphan".into(), parent_id: Some(uuid::Uuid::now_v7()) })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownReference { .. }), "{err:?}");
    Ok(())
}

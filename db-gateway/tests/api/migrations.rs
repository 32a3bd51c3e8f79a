//! The migrator against a real database: idempotence, drift detection, concurrency, and the
//! project's own migrations together with the production registry.

use std::path::Path;

use db_gateway::migrate::{MigrationState, Migrator};
use db_gateway::ops::Registry;

use crate::helpers::{TempDir, TestDatabase, write_file};

const FIRST: &str = "CREATE TABLE widgets (id TEXT PRIMARY KEY);";
const SECOND: &str = "ALTER TABLE widgets ADD COLUMN size INT4; SELECT pg_sleep(0.3);";

fn two_migrations() -> TempDir {
    let dir = TempDir::new();
    write_file(&dir.path().join("001_widgets.sql"), FIRST);
    write_file(&dir.path().join("002_widget_size.sql"), SECOND);
    write_file(&dir.path().join("README.md"), "not a migration");
    dir
}

async fn migrate(
    database: &TestDatabase,
    dir: &Path,
) -> Result<db_gateway::migrate::MigrationReport, db_gateway::migrate::MigrateError> {
    let migrator = Migrator::from_dir(dir)?;
    let mut client = database.client().await;
    migrator.run(&mut client).await
}

async fn history(database: &TestDatabase) -> Vec<(i64, String, String)> {
    database
        .client()
        .await
        .query(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

#[tokio::test]
async fn migrations_apply_in_order_once() {
    let database = TestDatabase::create().await;
    let dir = two_migrations();

    let first = migrate(&database, dir.path()).await.unwrap();
    let second = migrate(&database, dir.path()).await.unwrap();

    assert_eq!(first.applied, ["001_widgets.sql", "002_widget_size.sql"]);
    assert_eq!(first.already_applied, 0);
    assert!(second.applied.is_empty());
    assert_eq!(second.already_applied, 2);
    let history = history(&database).await;
    assert_eq!(history.len(), 2);
    assert_eq!((history[0].0, history[0].1.as_str()), (1, "widgets"));
    use sha2::Digest as _;
    assert_eq!(
        history[0].2,
        hex::encode(sha2::Sha256::digest(FIRST.as_bytes()))
    );
}

#[tokio::test]
async fn a_changed_applied_migration_is_refused_by_name() {
    let database = TestDatabase::create().await;
    let dir = two_migrations();
    migrate(&database, dir.path()).await.unwrap();
    write_file(
        &dir.path().join("001_widgets.sql"),
        "CREATE TABLE widgets (id TEXT PRIMARY KEY, x INT4);",
    );
    write_file(
        &dir.path().join("003_more.sql"),
        "CREATE TABLE more (id INT4);",
    );

    let error = migrate(&database, dir.path()).await.unwrap_err();

    assert_eq!(error.code(), "migration_checksum_mismatch");
    assert!(error.to_string().contains("001_widgets.sql"), "{error}");
    assert_eq!(history(&database).await.len(), 2, "nothing new was applied");
    let statuses = Migrator::from_dir(dir.path())
        .unwrap()
        .status(&database.client().await)
        .await
        .unwrap();
    assert!(matches!(
        statuses[0].state,
        MigrationState::ChecksumMismatch { .. }
    ));
    assert!(matches!(statuses[1].state, MigrationState::Applied { .. }));
    assert_eq!(statuses[2].state, MigrationState::Pending);
}

#[tokio::test]
async fn a_missing_applied_migration_is_refused() {
    let database = TestDatabase::create().await;
    let dir = two_migrations();
    migrate(&database, dir.path()).await.unwrap();
    std::fs::remove_file(dir.path().join("002_widget_size.sql")).unwrap();

    let error = migrate(&database, dir.path()).await.unwrap_err();

    assert_eq!(error.code(), "migration_file_missing");
    assert!(error.to_string().contains("widget_size"), "{error}");
}

#[tokio::test]
async fn a_failing_migration_leaves_no_trace_and_names_the_file() {
    let database = TestDatabase::create().await;
    let dir = two_migrations();
    write_file(
        &dir.path().join("003_broken.sql"),
        "CREATE TABLE half (id INT4);\nSELECT * FROM nowhere;",
    );

    let error = migrate(&database, dir.path()).await.unwrap_err();

    assert_eq!(error.code(), "migration_failed");
    let message = error.to_string();
    assert!(
        message.contains("003_broken.sql") && message.contains("line 2"),
        "{message}"
    );
    assert_eq!(
        history(&database).await.len(),
        2,
        "001 and 002 stay applied"
    );
    let half_exists: bool = database
        .client()
        .await
        .query_one("SELECT to_regclass('half') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!half_exists, "the failed file's transaction rolled back");
}

#[tokio::test]
async fn two_concurrent_migrators_both_succeed_and_apply_once() {
    let database = TestDatabase::create().await;
    let dir = two_migrations();

    let (left, right) = tokio::join!(
        migrate(&database, dir.path()),
        migrate(&database, dir.path())
    );

    let (left, right) = (left.unwrap(), right.unwrap());
    let mut applied: Vec<_> = left.applied.iter().chain(&right.applied).cloned().collect();
    applied.sort();
    assert_eq!(
        applied,
        ["001_widgets.sql", "002_widget_size.sql"],
        "each file applied exactly once"
    );
    assert_eq!(history(&database).await.len(), 2);
}

#[tokio::test]
async fn project_migrations_apply_and_every_production_op_verifies() {
    let database = TestDatabase::create().await;
    let project_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");

    let report = migrate(&database, &project_dir)
        .await
        .unwrap_or_else(|error| {
            panic!("the project's migrations must apply to an empty database: {error}")
        });
    let again = migrate(&database, &project_dir).await.unwrap();

    assert_eq!(again.already_applied, report.applied.len());
    let registry = Registry::production(false).unwrap();
    registry
        .verify(&database.client().await, |_| true)
        .await
        .unwrap_or_else(|error| panic!("production registry does not match the schema: {error}"));
}

#[tokio::test]
async fn the_gateway_refuses_to_start_when_an_op_does_not_match_the_schema() {
    static BROKEN: &[db_gateway::ops::OpDef] = &[db_gateway::ops::OpDef {
        spec: &db_gateway::ops::OpSpec::new(
            "test.broken",
            &[db_gateway::ops::ParamSpec::required(
                "id",
                db_gateway::ops::ParamType::Int8,
            )],
        ),
        sql: "SELECT id FROM no_such_table WHERE id = $1",
        mode: db_gateway::ops::Mode::Read,
        expect: db_gateway::ops::Expect::Any,
        statement_timeout_ms: db_gateway::ops::DEFAULT_STATEMENT_TIMEOUT_MS,
    }];
    static WRONG_TYPE: &[db_gateway::ops::OpDef] = &[db_gateway::ops::OpDef {
        spec: &db_gateway::ops::OpSpec::new(
            "test.wrong_type",
            &[db_gateway::ops::ParamSpec::required(
                "n",
                db_gateway::ops::ParamType::Int4,
            )],
        ),
        sql: "SELECT $1::int8 AS n",
        ..BROKEN[0]
    }];
    static UNENCODABLE: &[db_gateway::ops::OpDef] = &[db_gateway::ops::OpDef {
        spec: &db_gateway::ops::OpSpec::new("test.unencodable", &[]),
        sql: "SELECT now()::timestamp AS local_time",
        ..BROKEN[0]
    }];
    let database = TestDatabase::create().await;
    let client = database.client().await;

    for (ops, expected) in [
        (BROKEN, "no_such_table"),
        (WRONG_TYPE, "parameter `n`"),
        (UNENCODABLE, "local_time"),
    ] {
        let registry = Registry::new().with(ops).unwrap();
        let error = registry
            .verify(&client, |_| true)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(expected),
            "{error:?} should mention {expected:?}"
        );
    }
}

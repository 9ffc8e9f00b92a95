//! The command line: a command's standard output is its result, never a log line.

use crate::helpers::pg_server;
use refund_worker::store;

#[tokio::test]
async fn a_one_shot_command_logs_to_stderr_and_keeps_stdout_for_its_result() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let database_url = format!("{}/rw_cli_{id}", pg_server());
    store::ensure_database(&database_url).await.unwrap();
    // Debug logs for sqlx: every migration statement is logged, so there is plenty to stray.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_refund-worker"))
        .arg("migrate")
        .env("DATABASE_URL", &database_url)
        .env("RUST_LOG", "debug")
        .output()
        .await
        .expect("refund-worker runs");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "migrations applied\n");
    assert!(
        !out.stderr.is_empty(),
        "the debug logs went somewhere: standard error"
    );
    let admin = store::connect(&format!("{}/postgres", pg_server()), 1)
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS rw_cli_{id} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
}

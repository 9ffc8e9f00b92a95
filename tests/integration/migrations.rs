//! Migrations when several pods start at once, and what a failed index build leaves.

use crate::helpers::pg_server;
use refund_worker::store;
use sqlx::PgPool;

/// A new, empty database; dropped by [`drop_database`].
async fn fresh_database() -> (String, String) {
    let name = format!(
        "rw_migrate_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    let url = format!("{}/{name}", pg_server());
    store::ensure_database(&url).await.expect("create database");
    (name, url)
}

async fn drop_database(name: &str) {
    let admin = PgPool::connect(&format!("{}/postgres", pg_server()))
        .await
        .expect("admin connection");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .expect("drop database");
}

#[tokio::test]
async fn pods_migrating_at_once_all_start_and_every_index_is_valid() {
    // Six pods' init containers on an empty database: the migrations include
    // CREATE INDEX CONCURRENTLY, which must not meet a session waiting for the lock.
    let (name, url) = fresh_database().await;
    let mut pods = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let url = url.clone();
        pods.spawn(async move {
            let pool = store::connect(&url, 2).await?;
            let result = store::migrate(&pool).await;
            pool.close().await;
            result
        });
    }
    while let Some(done) = pods.join_next().await {
        done.expect("task").expect("every pod migrates");
    }
    let pool = store::connect(&url, 1).await.unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count();
    let (applied, invalid): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM _sqlx_migrations WHERE success),
                (SELECT count(*) FROM pg_index WHERE NOT indisvalid)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((applied, invalid), (files as i64, 0));
    pool.close().await;
    drop_database(&name).await;
}

#[tokio::test]
async fn an_invalid_index_stops_the_start_and_is_named() {
    let (name, url) = fresh_database().await;
    let pool = store::connect(&url, 2).await.unwrap();
    store::migrate(&pool).await.expect("first start");
    // A unique index built concurrently over duplicates fails and stays behind INVALID,
    // as an interrupted build does.
    for statement in [
        "CREATE TABLE leftovers (x INT)",
        "INSERT INTO leftovers VALUES (1), (1)",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let build = sqlx::query("CREATE UNIQUE INDEX CONCURRENTLY leftovers_x ON leftovers (x)")
        .execute(&pool)
        .await;
    assert!(build.is_err(), "the duplicate must fail the build");
    let error = store::migrate(&pool)
        .await
        .expect_err("a pod must not start over an INVALID index")
        .to_string();
    assert!(
        error.contains("leftovers_x") && error.contains("REINDEX INDEX CONCURRENTLY"),
        "{error}"
    );
    // The advice works: without the duplicate, the index rebuilds in place and is kept.
    for statement in [
        "DELETE FROM leftovers WHERE ctid = (SELECT max(ctid) FROM leftovers)",
        "REINDEX INDEX CONCURRENTLY leftovers_x",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    store::migrate(&pool)
        .await
        .expect("starts once it is valid");
    let valid: bool = sqlx::query_scalar(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'leftovers_x'::regclass",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(valid);
    pool.close().await;
    drop_database(&name).await;
}

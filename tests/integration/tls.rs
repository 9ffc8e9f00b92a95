//! The worker can reach PostgreSQL over TLS (a managed database that enforces it, or a
//! network that must not carry refund data in clear text).

use crate::helpers::pg_server;
use refund_worker::store;
use sqlx::PgPool;

/// Whether this pool's session to the server is encrypted.
async fn encrypted(pool: &PgPool) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn database_connections_can_require_tls() {
    // The local server has TLS on (Debian's default snakeoil certificate); `require`
    // encrypts without verifying the certificate, `verify-full` would also check it.
    let url = format!("{}/postgres?sslmode=require", pg_server());
    let pool = store::connect(&url, 1)
        .await
        .expect("sslmode=require connects: sqlx is built with TLS");
    let encrypted = encrypted(&pool).await;
    assert!(encrypted, "the session is not encrypted");
    pool.close().await;
}

#[tokio::test]
async fn a_local_server_without_a_chosen_sslmode_is_reached_in_clear() {
    // Loopback: TLS would protect nothing and cost CPU on both ends. A mode in the URL (as
    // above) or in PGSSLMODE is always obeyed.
    let pool = store::connect(&format!("{}/postgres", pg_server()), 1)
        .await
        .unwrap();
    let encrypted = encrypted(&pool).await;
    assert!(!encrypted);
    pool.close().await;
}

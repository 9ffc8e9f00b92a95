//! Secrets and PII never reach the logs: a real `refund-worker run` process, at `debug`
//! level with JSON logs, configured with a distinct secret everywhere (every provider's
//! key and secret, webhook secrets, the admin token, the merchant signing secret), takes
//! refunds through all four providers, a provider that refuses our credentials, forged
//! provider webhooks, admin calls with a wrong token and failing merchant deliveries. Its
//! captured output must not contain any secret, account number or customer note.

use crate::helpers::{amqp_url, pg_server};
use refund_sandbox::{Sandbox, SandboxConfig};
use refund_worker::broker::publisher::json_properties;
use refund_worker::broker::{self, topology, Publisher, Topology};
use refund_worker::store;
use serde_json::json;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn secret(tag: &str) -> String {
    format!("S3cr3t-{tag}-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn a_full_run_never_logs_a_secret_an_account_number_or_a_note() {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let database_url = format!("{}/rw_secrets_{id}", pg_server());
    store::ensure_database(&database_url).await.unwrap();
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let sandbox_config = SandboxConfig {
        va_api_key: secret("va-key"),
        bpn_api_key: secret("bpn-key"),
        bpn_api_secret: secret("bpn-secret"),
        binance_api_key: secret("binance-key"),
        binance_api_secret: secret("binance-secret"),
        bvnk_hawk_id: secret("bvnk-id"),
        bvnk_hawk_key: secret("bvnk-key"),
        webhook_secret: secret("webhook"),
        completion_delay: Duration::from_millis(100),
        webhook_url: Some(format!("http://127.0.0.1:{http_port}")),
        webhook_bad_signature_rate: 0.5,
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::new(sandbox_config.clone());
    let (addr, _) = sandbox.spawn(0, std::future::pending()).await.unwrap();

    let admin_token = secret("admin");
    let signing_secret = refund_worker::merchant_webhooks::signing::SigningKey::generate_secret();
    // VA Services is given a wrong key: every call is refused, and the refusal is logged.
    let wrong_va_key = secret("wrong-va-key");
    let mut secrets: Vec<String> = vec![
        sandbox_config.va_api_key.clone(),
        sandbox_config.bpn_api_key.clone(),
        sandbox_config.bpn_api_secret.clone(),
        sandbox_config.binance_api_key.clone(),
        sandbox_config.binance_api_secret.clone(),
        sandbox_config.bvnk_hawk_id.clone(),
        sandbox_config.bvnk_hawk_key.clone(),
        sandbox_config.webhook_secret.clone(),
        admin_token.clone(),
        wrong_va_key.clone(),
    ];
    // The merchant secret's key material (after `whsec_`) must not appear either.
    secrets.push(signing_secret.clone());
    if let Some(material) = signing_secret.strip_prefix("whsec_") {
        secrets.push(material.to_owned());
    }

    // Connection URLs with passwords: PostgreSQL's trust authentication here ignores the
    // one in DATABASE_URL, so it can be a secret of ours; RabbitMQ's is checked, so
    // AMQP_URL keeps guest's (and a config dump would show it as `***`, checked below).
    let db_password = secret("db-password");
    secrets.push(db_password.clone());
    let database_url_with_password = database_url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{db_password}@"),
        1,
    );
    assert_ne!(
        database_url_with_password, database_url,
        "TEST_DATABASE_SERVER has no user@"
    );
    let prefix = format!("secrets-{id}.");
    let mut env: Vec<(String, String)> = sandbox_config.provider_env(addr);
    env.retain(|(k, _)| k != "PROVIDER_VA_SERVICES_API_KEY");
    env.extend(
        [
            ("PROVIDER_VA_SERVICES_API_KEY", wrong_va_key.clone()),
            ("DATABASE_URL", database_url_with_password.clone()),
            ("AMQP_URL", amqp_url()),
            ("AMQP_NAME_PREFIX", prefix.clone()),
            ("HTTP_ADDR", format!("127.0.0.1:{http_port}")),
            ("ADMIN_TOKEN", admin_token.clone()),
            ("WEBHOOK_SIGNING_SECRET", signing_secret.clone()),
            // Nothing listens there: every merchant delivery fails and is logged.
            ("WEBHOOK_DEFAULT_URL", "http://127.0.0.1:9/hook".into()),
            ("WEBHOOK_ALLOW_NETWORKS", "127.0.0.0/8".into()),
            ("WEBHOOK_RETRY_SCHEDULE", "0s,100ms".into()),
            ("MAX_SUBMIT_ATTEMPTS", "2".into()),
            ("RETRY_INITIAL_MS", "50".into()),
            ("POLL_INITIAL_MS", "100".into()),
            ("POLL_MAX_MS", "200".into()),
            ("IDLE_POLL_MS", "50".into()),
            ("LOG_FORMAT", "json".into()),
            ("RUST_LOG", "debug".into()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    // The configuration as `Debug` prints it (what a log of it would show).
    let shown = {
        let map: std::collections::HashMap<String, String> = env.iter().cloned().collect();
        format!(
            "{:?}",
            refund_worker::config::Config::from_lookup(|k| map.get(k).cloned()).unwrap()
        )
    };
    assert!(
        !shown.contains(&db_password),
        "DATABASE_URL's password in Config's Debug"
    );
    assert!(
        !shown.contains("guest:guest@"),
        "AMQP_URL's password in Config's Debug"
    );
    for s in &secrets {
        assert!(
            !shown.contains(s.as_str()),
            "a secret in Config's Debug: {}…",
            &s[..12]
        );
    }
    let log_path = std::env::temp_dir().join(format!("rw-secrets-{id}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_refund-worker"))
        .arg("run")
        .envs(env)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("worker starts");

    // Wait until it serves, then publish a refund per provider.
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{http_port}");
    let started = Instant::now();
    loop {
        let ready = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "worker never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let topology = Topology::with_prefix(&prefix);
    let connection = broker::connect(&amqp_url(), "secrets-test").await.unwrap();
    let publisher = Publisher::open(&connection).await.unwrap();
    let n = uuid::Uuid::new_v4().as_u128() % 1_000_000_000;
    let commands = [
        json!({"refundReference": format!("{id}-va"), "provider": "va_services",
               "transactionReference": format!("{id}-t1"), "amount": "10.00", "currency": "NGN",
               "reason": "r", "customerNote": "Private note for the customer",
               "destination": {"accountNumber": "0040088210", "bankCode": "000012"}}),
        json!({"refundReference": format!("{id}-bnb"), "provider": "binance_pay",
               "transactionReference": format!("5{n:09}"), "amount": "10.00", "currency": "USDT",
               "reason": "r"}),
        json!({"refundReference": format!("{id}-bvnk"), "provider": "bvnk",
               "transactionReference": format!("{id}-t3"), "amount": "10.00", "currency": "EUR",
               "reason": "r"}),
        json!({"refundReference": format!("{id}-bpn"), "provider": "bpn",
               "transactionReference": format!("{id}-order"), "amount": "1000000", "currency": "NGN",
               "reason": "r"}),
    ];
    for c in &commands {
        publisher
            .publish(broker::publisher::Outgoing {
                exchange: &topology.exchange,
                routing_key: topology::COMMAND_ROUTING_KEY,
                payload: c.to_string().as_bytes(),
                properties: json_properties(&uuid::Uuid::new_v4().to_string()),
            })
            .await
            .unwrap();
    }
    // A forged provider webhook, always (the sandbox's forgeries are random).
    let forged = client
        .post(format!("{base}/webhooks/bvnk"))
        .header("x-signature", "deadbeef")
        .body(r#"{"event":"bvnk:payment:payout:status-change","data":{}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    // Admin calls: a wrong token (refused) and the right one.
    let wrong = client
        .get(format!("{base}/v1/refunds"))
        .bearer_auth("not-the-token-at-all")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = client
        .get(format!("{base}/v1/refunds"))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);

    // Every refund ends (VA's fails: our key is wrong).
    let pool = store::connect(&database_url, 2).await.unwrap();
    let started = Instant::now();
    loop {
        let finals: i64 =
            sqlx::query_scalar("SELECT count(*) FROM refunds WHERE status <> 'PENDING'")
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
        if finals == commands.len() as i64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "refunds did not end: {finals}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let va_status: String =
        sqlx::query_scalar("SELECT status FROM refunds WHERE provider = 'va_services'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        va_status, "REFUND_FAIL",
        "VA Services must have refused the wrong key"
    );
    // Let webhooks (some forged) and merchant deliveries run, then stop the worker.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(pid) = worker.id() {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await;

    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.lines().count() > 20,
        "the run logged too little to prove anything"
    );
    assert!(
        logs.contains("provider webhook refused"),
        "forged webhooks were exercised"
    );
    for s in &secrets {
        assert!(
            !logs.contains(s.as_str()),
            "a secret leaked into the logs: {}…",
            &s[..12]
        );
    }
    assert!(
        !logs.contains("0040088210"),
        "an account number leaked into the logs"
    );
    assert!(
        !logs.contains("Private note for the customer"),
        "a customer note leaked"
    );

    let channel = connection.create_channel().await.unwrap();
    let _ = topology.delete(&channel).await;
    pool.close().await;
    let _ = std::fs::remove_file(&log_path);
    if let Ok(admin) = sqlx::PgPool::connect(&format!("{}/postgres", pg_server())).await {
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS rw_secrets_{id} WITH (FORCE)"
        ))
        .execute(&admin)
        .await;
    }
}

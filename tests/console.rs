//! The operations console (`/console`) in a real browser: headless Chromium driven over
//! WebDriver (chromedriver) by `fantoccini`, against a worker on the real PostgreSQL and
//! RabbitMQ. Through the page it lists and filters refunds, opens one, resolves a refund in
//! review, replays a dead letter (dry run first), resends a failed merchant webhook and
//! checks every result through the admin API; a refused token brings back the prompt.
//!
//! Needs Debian's `chromium` and `chromium-driver`, so the browser test is ignored by
//! default (CI runs it, see .ci/run):
//!
//! ```sh
//! apt-get install -y chromium chromium-driver
//! cargo test --test console -- --ignored
//! CONSOLE_SCREENSHOTS=1 cargo test --test console -- --ignored   # refreshes docs/console/*.png
//! ```
//!
//! `CHROMEDRIVER` and `CHROMIUM` override the binaries (defaults: `chromedriver` on the PATH,
//! `/usr/bin/chromium`). The other tests here need no browser.

#[allow(dead_code)]
#[path = "integration/helpers.rs"]
mod helpers;

use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use helpers::{va_command, Options, TestApp, ADMIN_TOKEN, WAIT};
use refund_worker::domain::RefundStatus;
use serde_json::json;
use std::time::Duration;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A merchant endpoint that refuses every webhook for good (410: no retries).
async fn refusing_merchant() -> MockServer {
    let merchant = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(410))
        .mount(&merchant)
        .await;
    merchant
}

#[tokio::test]
async fn the_console_exists_only_with_an_admin_token_and_is_served_with_a_strict_policy() {
    let app = TestApp::spawn().await;
    let base = app.serve_http().await;
    let client = reqwest::Client::new();
    for path in ["/console", "/console/console.js", "/console/console.css"] {
        let r = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert_eq!(
            h["content-security-policy"],
            refund_worker::console::CSP,
            "{path}"
        );
        assert!(h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self';"));
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["cache-control"], "no-store");
        assert!(h.get("set-cookie").is_none());
    }
    let page = client
        .get(format!("{base}/console"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("/console/console.js"));
    app.cleanup().await;

    // Without ADMIN_TOKEN there is no admin API, and no console.
    let app = TestApp::spawn_with(Options {
        env: vec![("ADMIN_TOKEN", String::new())],
        ..Options::default()
    })
    .await;
    let base = app.serve_http().await;
    for path in ["/console", "/console/console.js", "/v1/refunds"] {
        let r = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), 404, "{path}");
    }
    app.cleanup().await;
}

#[tokio::test]
async fn refunds_are_listed_by_reference_prefix_taken_literally() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let admin = app.admin().await;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let a = format!("pfx_{tag}-a");
    let b = format!("pfx_{tag}-b");
    // `_` is not a wildcard: this one must not match `pfx_{tag}`.
    let other = format!("pfxX{tag}-c");
    for r in [&a, &b, &other] {
        app.publish(&va_command(r, "1.00")).await;
        app.wait_final(r).await;
    }
    let listed = admin
        .get_json(&format!("/v1/refunds?referencePrefix=pfx_{tag}"))
        .await;
    let mut refs: Vec<&str> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["refundReference"].as_str().unwrap())
        .collect();
    refs.sort();
    assert_eq!(refs, vec![a.as_str(), b.as_str()], "{listed}");
    let none = admin.get_json("/v1/refunds?referencePrefix=%25").await;
    assert_eq!(none["items"], json!([]), "`%` is literal: {none}");
    app.cleanup().await;
}

/// chromedriver on a free loopback port, ended when dropped.
struct Driver {
    child: tokio::process::Child,
    url: String,
}

impl Driver {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let binary = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let child = tokio::process::Command::new(&binary)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{binary} could not start ({e}): apt-get install chromium chromium-driver")
            });
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not listen"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn browser(&self, profile: &std::path::Path) -> Client {
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": binary,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1360,900", "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a WebDriver session with headless Chromium")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Waits until the element `css` exists and its text contains `needle`; returns the text.
async fn wait_text(c: &Client, css: &str, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if let Ok(t) = e.text().await {
                if t.contains(needle) {
                    return t;
                }
                last = t;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("`{css}` never showed `{needle}`; last text: {last}");
}

/// Waits until the element `css` exists and is displayed.
async fn wait_for(c: &Client, css: &str) -> fantoccini::elements::Element {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if e.is_displayed().await.unwrap_or(false) {
                return e;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "`{css}` did not appear"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(c: &Client, css: &str) {
    wait_for(c, css).await.click().await.expect("click");
}

async fn fill(c: &Client, css: &str, text: &str) {
    let e = wait_for(c, css).await;
    e.clear().await.expect("clear");
    e.send_keys(text).await.expect("type");
}

/// Saves a screenshot to docs/console/NAME.png when CONSOLE_SCREENSHOTS is set.
async fn screenshot(c: &Client, name: &str) {
    if std::env::var("CONSOLE_SCREENSHOTS").is_err() {
        return;
    }
    // Let the last render and any transition finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let png = c.screenshot().await.expect("screenshot");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console");
    std::fs::create_dir_all(&dir).expect("docs/console");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

async fn goto_view(c: &Client, base: &str, view: &str) {
    c.goto(&format!("{base}/console#/{view}"))
        .await
        .expect("navigate");
}

#[tokio::test]
#[ignore = "needs Chromium and chromedriver: cargo test --test console -- --ignored"]
async fn an_operator_works_through_the_console_in_a_browser() {
    let merchant = refusing_merchant().await;
    // Refunds stay PENDING at the provider (the test settles one by hand); polls are spaced
    // out so a refund's timeline stays readable.
    let mut app = TestApp::spawn_with(Options {
        sandbox: refund_sandbox::SandboxConfig {
            completion_delay: Duration::from_secs(3600),
            ..refund_sandbox::SandboxConfig::default()
        },
        env: vec![
            ("POLL_INITIAL_MS", "2000".into()),
            ("POLL_MAX_MS", "60000".into()),
        ],
        // The gauges the overview shows, sampled often.
        metrics_every: Duration::from_millis(500),
        ..Options::default()
    })
    .await;
    app.start_worker();
    let admin = app.admin().await;
    let base = admin.base.clone();
    let tag = uuid::Uuid::new_v4().simple().to_string()[..6].to_string();

    // A few refunds; one with a merchant endpoint that refuses its webhooks, one to resolve.
    let mut refs = Vec::new();
    for (i, amount) in ["25.00", "1250.50", "99.99", "7.10"].iter().enumerate() {
        let r = format!("console-{tag}-{i}");
        let mut cmd = va_command(&r, amount);
        if i == 0 {
            cmd["callbackUrl"] = json!(merchant.uri());
        }
        app.publish(&cmd).await;
        app.wait_for(&r, RefundStatus::Pending).await;
        refs.push(r);
    }
    let (hooked, in_review) = (refs[0].clone(), refs[1].clone());
    // Flagged for review as the review sweep would after REVIEW_AFTER.
    sqlx::query(
        "UPDATE refunds SET review_reason = 'no final answer after 24h (provider says PENDING)',
             review_since = now() - interval '26 hours' WHERE refund_reference = $1",
    )
    .bind(&in_review)
    .execute(&app.pool)
    .await
    .expect("flag for review");
    // A failed merchant webhook.
    app.eventually("the webhook delivery failed", || async {
        app.deliveries(&hooked)
            .await
            .iter()
            .any(|d| d.state == "failed")
    })
    .await;
    let failed_event = app
        .deliveries(&hooked)
        .await
        .into_iter()
        .find(|d| d.state == "failed")
        .expect("failed delivery")
        .event_id;
    // A dead letter: not JSON, with an account number in it.
    app.publish_raw(br#"not json {"destination":{"accountNumber":"0040088210"}}"#)
        .await;
    let dlq = app.topology.commands_dlq.clone();
    app.eventually("the command was dead-lettered", || async {
        app.queue_depth(&dlq).await == 1
    })
    .await;

    let driver = Driver::start().await;
    let profile = std::env::temp_dir().join(format!("console-test-{tag}"));
    let c = driver.browser(&profile).await;
    let outcome = async {
        // The token prompt; the token never lands in the URL.
        c.goto(&format!("{base}/console")).await.expect("open");
        fill(&c, "#token", ADMIN_TOKEN).await;
        click(&c, "#login-submit").await;
        wait_for(&c, "#overview .cards").await;
        let url = c.current_url().await.expect("url");
        assert!(!url.as_str().contains(ADMIN_TOKEN), "{url}");
        let stored = c
            .execute(
                "return [sessionStorage.length, localStorage.length, document.cookie];",
                vec![],
            )
            .await
            .expect("storage");
        assert_eq!(stored, json!([1, 0, ""]), "token only in sessionStorage");
        wait_text(&c, "#overview", "refunds in review").await;
        // Parsed from /metrics: the flagged refund, and the PENDING ones by provider.
        wait_text(&c, "[data-metric='in-review'] .card-value", "1").await;
        wait_text(&c, "#overview", "va_services").await;
        screenshot(&c, "overview").await;

        // Refunds: the list, then filtered by reference prefix.
        goto_view(&c, &base, "refunds").await;
        for r in &refs {
            wait_for(&c, &format!("tr[data-ref='{r}']")).await;
        }
        fill(&c, "#f-prefix", &format!("console-{tag}-1")).await;
        click(&c, "#f-apply").await;
        wait_text(&c, "#refund-list", "1 refund(s)").await;
        assert!(c
            .find(Locator::Css(&format!("tr[data-ref='{}']", refs[0])))
            .await
            .is_err());
        click(&c, "#f-reset").await;
        wait_text(&c, "#refund-list", &format!("{} refund(s)", refs.len())).await;
        screenshot(&c, "refunds").await;

        // The review queue shows the flagged refund, with its reason and wait.
        goto_view(&c, &base, "review").await;
        let queue = wait_text(
            &c,
            &format!("tr[data-ref='{in_review}']"),
            "no final answer",
        )
        .await;
        assert!(queue.contains("1d 2h"), "{queue}");

        // Its page: timeline, guard source, review actions; resolve with confirmation.
        click(&c, &format!("tr[data-ref='{in_review}'] a")).await;
        wait_for(&c, "#review-actions").await;
        let page = wait_text(&c, "#refund", "Timeline").await;
        assert!(page.contains("guard source"), "{page}");
        assert!(page.contains("provider call"), "{page}");
        assert!(page.contains("1250.50 NGN"), "{page}");
        screenshot(&c, "refund-review").await;
        // Recheck: the provider still says PENDING, the refund stays in review.
        click(&c, "#recheck").await;
        wait_text(&c, "#recheck-result", "Rechecked: status PENDING").await;
        wait_for(&c, "#review-actions").await;
        wait_for(&c, "#resolve-status")
            .await
            .select_by_value("REFUND_FAIL")
            .await
            .expect("select");
        fill(
            &c,
            "#resolve-reason",
            "provider confirmed by phone: declined",
        )
        .await;
        click(&c, "#resolve").await;
        let confirm = wait_text(&c, "#resolve-confirm", "cannot be undone").await;
        assert!(confirm.contains("REFUND_FAIL"), "{confirm}");
        // Nothing is posted before the confirmation.
        assert_eq!(app.db_status(&in_review).await.as_deref(), Some("PENDING"));
        click(&c, "#resolve-confirm-yes").await;
        wait_text(&c, "#resolve-result", "final event REFUND_FAIL").await;
        let after = admin.get_json(&format!("/v1/refunds/{in_review}")).await;
        assert_eq!(after["refund"]["status"], "REFUND_FAIL", "{after}");
        assert!(
            after["transitions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["detail"].as_str().is_some_and(|d| d.contains("declined"))),
            "{after}"
        );
        // The page reloads the refund: final, no more review actions.
        wait_text(&c, "#refund h2", "REFUND_FAIL").await;

        // Dead letters: the body is masked; dry run, then the real replay.
        goto_view(&c, &base, "dlq").await;
        fill(&c, "#dlq-name-0", &dlq).await;
        click(&c, "#dlq-load-0 button").await;
        let listed = wait_text(&c, "#dlq-0", "******8210").await;
        assert!(!listed.contains("0040088210"), "{listed}");
        let webhooks_dlq = app.topology.webhooks_dlq.clone();
        fill(&c, "#dlq-name-1", &webhooks_dlq).await;
        click(&c, "#dlq-load-1 button").await;
        wait_text(&c, "#dlq-1", &format!("0 message(s) in {webhooks_dlq}")).await;
        screenshot(&c, "dead-letters").await;
        click(&c, "#dlq-0 .replay-one").await;
        wait_text(&c, "#dlq-result-0", "1 would be replayed").await;
        // The dry run left it where it was.
        assert_eq!(app.queue_depth(&dlq).await, 1);
        click(&c, "#dlq-replay-confirm-0").await;
        wait_text(&c, "#dlq-replayed-0", "Replayed 1 of 1").await;
        // Still not JSON: the worker dead-letters it again, marked as replayed once.
        app.eventually("the replayed dead letter is back, counted", || async {
            let listed = admin.get_json(&format!("/v1/dlq/{dlq}")).await;
            listed["items"][0]["replayed"] == 1
        })
        .await;

        // Merchant webhooks: the failed delivery, resent once the merchant is fixed.
        merchant.reset().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(204))
            .mount(&merchant)
            .await;
        goto_view(&c, &base, "webhooks").await;
        click(&c, &format!("tr[data-event='{failed_event}'] .resend-one")).await;
        wait_text(&c, "#webhook-resent", "Queued 1").await;
        app.eventually("the resent webhook was delivered", || async {
            let shown = admin.get_json(&format!("/v1/refunds/{hooked}")).await;
            shown["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["eventId"] == failed_event.to_string() && d["state"] == "delivered")
        })
        .await;

        // Provider webhooks: the three lists load.
        goto_view(&c, &base, "provider-webhooks").await;
        wait_text(&c, "#inbox-contradiction", "contradiction").await;

        // A refused token brings the prompt back.
        c.execute(
            "sessionStorage.setItem('refund-worker-admin-token', 'wrong-token-0123456789');",
            vec![],
        )
        .await
        .expect("script");
        goto_view(&c, &base, "refunds").await;
        wait_text(&c, "#login-error", "refused").await;
        assert!(
            wait_for(&c, "#login").await.is_displayed().await.unwrap(),
            "token prompt shown"
        );
    };
    // Close the browser and clean up whatever happened, then report.
    let result = std::panic::AssertUnwindSafe(outcome).catch_unwind().await;
    let _ = c.close().await;
    drop(driver);
    let _ = std::fs::remove_dir_all(&profile);
    app.cleanup().await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

//! The admin API: token, refunds, dead-letter replay.

use crate::helpers::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use refund_worker::broker::publisher::{json_properties, Outgoing};
use refund_worker::broker::{dlq, ERROR_HEADER};
use refund_worker::domain::RefundStatus;
use refund_worker::pipeline::intake;
use serde_json::{json, Value};

#[tokio::test]
async fn admin_routes_require_the_token_and_vanish_without_one() {
    let app = TestApp::spawn().await;
    let base = app.serve_http().await;
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/refunds");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    let wrong = client.get(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        client
            .get(&url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let doc: Value = client
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/v1/dlq/{queue}/replay"]["post"].is_object());
    app.cleanup().await;

    let off = TestApp::spawn_with(Options {
        env: vec![("ADMIN_TOKEN", String::new())],
        ..Options::default()
    })
    .await;
    let base = off.serve_http().await;
    let r = client
        .get(format!("{base}/v1/refunds"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "admin API disabled without ADMIN_TOKEN");
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    off.cleanup().await;
}

#[tokio::test]
async fn refunds_are_listed_page_by_page_and_shown_with_deliveries() {
    let app = TestApp::spawn().await;
    for i in 0..3 {
        let cmd = va_command(&format!("page-{i}"), "1.00");
        intake::handle(&app.ctx, cmd.to_string().as_bytes())
            .await
            .unwrap();
    }
    let admin = app.admin().await;
    let p1 = admin.get_json("/v1/refunds?limit=2&status=PENDING").await;
    assert_eq!(p1["items"].as_array().unwrap().len(), 2);
    let cursor = p1["nextCursor"].as_str().expect("more pages").to_string();
    let p2 = admin
        .get_json(&format!(
            "/v1/refunds?limit=2&status=PENDING&cursor={cursor}"
        ))
        .await;
    assert_eq!(p2["items"].as_array().unwrap().len(), 1);
    assert!(p2["nextCursor"].is_null());
    let mut all: Vec<String> = p1["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(p2["items"].as_array().unwrap())
        .map(|r| r["refundReference"].as_str().unwrap().to_string())
        .collect();
    all.sort();
    assert_eq!(all, vec!["page-0", "page-1", "page-2"]);
    assert_eq!(admin.get("/v1/refunds?cursor=garbage").await.status(), 400);
    assert_eq!(admin.get("/v1/refunds?status=DONE").await.status(), 400);

    let one = admin.get_json("/v1/refunds/page-1").await;
    assert_eq!(one["refund"]["status"], "PENDING");
    assert_eq!(one["transitions"][0]["toStatus"], "PENDING");
    assert!(
        one["deliveries"].as_array().unwrap().is_empty(),
        "no callbackUrl, no default endpoint"
    );
    // Where its webhooks would go is said, even when nowhere.
    assert!(one.get("callbackUrl").is_some_and(|v| v.is_null()), "{one}");
    assert!(
        one.get("defaultWebhookUrl").is_some_and(|v| v.is_null()),
        "{one}"
    );
    assert_eq!(admin.get("/v1/refunds/nope").await.status(), 404);
    app.cleanup().await;
}

#[tokio::test]
async fn replaying_dead_letters_fixes_what_can_be_fixed_and_returns_the_rest_once() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    // A bad message, dead-lettered by the worker.
    app.publish_raw(b"not json at all").await;
    let dlq_name = app.topology.commands_dlq.clone();
    let depth = || async {
        let c = refund_worker::broker::connect(&amqp_url(), "t")
            .await
            .unwrap();
        dlq::depth(&c, &dlq_name).await.unwrap()
    };
    app.eventually("dead-lettered", || async { depth().await == 1 })
        .await;
    // A good command sitting in the DLQ (e.g. dead-lettered during an outage).
    let r = reference("replayed");
    let mut headers = FieldTable::default();
    headers.insert(
        ERROR_HEADER.into(),
        AMQPValue::LongString(LongString::from("database was down")),
    );
    app.publisher
        .publish(Outgoing {
            exchange: &app.topology.dlx,
            routing_key: &app.topology.commands_dlq,
            payload: va_command(&r, "3.00").to_string().as_bytes(),
            properties: json_properties("good-one").with_headers(headers),
        })
        .await
        .unwrap();

    let admin = app.admin().await;
    let path = format!("/v1/dlq/{}", app.topology.commands_dlq);
    let listed = admin.get_json(&path).await;
    assert_eq!(listed["depth"], 2);
    assert!(listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["reason"] == "database was down"));

    let replay = format!("{path}/replay");
    let dry = admin
        .post_json(&replay, &json!({"all": true, "dryRun": true}))
        .await;
    assert_eq!(
        (dry["matched"].as_u64(), dry["replayed"].as_u64()),
        (Some(2), Some(0))
    );

    let report = admin.post_json(&replay, &json!({"all": true})).await;
    assert_eq!(report["replayed"], 2, "{report}");
    assert_eq!(report["failed"], 0);
    // The good command goes through; the bad one is back in the DLQ once, marked replayed.
    app.wait_for(&r, RefundStatus::Completed).await;
    app.eventually("bad message back in the DLQ", || async {
        depth().await == 1
    })
    .await;
    let listed = admin.get_json(&path).await;
    let item = &listed["items"][0];
    assert_eq!(item["replayed"], 1);
    assert!(
        item["reason"]
            .as_str()
            .unwrap()
            .starts_with("message is not a JSON object"),
        "{item}"
    );
    assert_eq!(listed["depth"], 1);

    assert_eq!(admin.get("/v1/dlq/some.other.queue").await.status(), 404);
    // provider.webhooks.dlq is declared with the rest of the topology, and listable.
    let webhooks_dlq = admin
        .get_json(&format!("/v1/dlq/{}", app.topology.webhooks_dlq))
        .await;
    assert_eq!(webhooks_dlq["depth"], 0, "{webhooks_dlq}");
    assert_eq!(admin.post(&replay, &json!({})).await.status(), 400);
    app.cleanup().await;
}

#[tokio::test]
async fn metrics_are_exposed_for_prometheus() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let r = reference("metrics");
    app.publish(&va_command(&r, "2.00")).await;
    app.wait_for(&r, RefundStatus::Completed).await;
    let base = app.serve_http().await;
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "refund_worker_commands_total{outcome=\"stored\"}",
        "refund_worker_refund_events_total{",
        "refund_worker_provider_call_seconds_bucket{",
        "refund_worker_provider_calls_total{provider=\"va_services\",call=\"submit\",outcome=\"accepted\"}",
        "refund_worker_retries_scheduled_total{provider=\"va_services\",kind=\"poll\"}",
        "refund_worker_events_published_total",
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
    app.cleanup().await;
}

#[tokio::test]
async fn admin_rejections_keep_the_json_error_contract() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let send = |body: String, content_type: &'static str| {
        admin
            .client
            .post(format!("{}/v1/webhooks/resend", admin.base))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    for (body, content_type, status, code) in [
        (
            "x".repeat(70 * 1024),
            "application/json",
            413,
            "payload_too_large",
        ),
        (
            "{not json".to_string(),
            "application/json",
            400,
            "bad_request",
        ),
        (
            "{}".to_string(),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
    ] {
        let answer = send(body, content_type).await.unwrap();
        assert_eq!(answer.status(), status);
        assert!(answer
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json")));
        let error: Value = answer.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{error}");
        assert!(!error["error"]["message"].as_str().unwrap().is_empty());
    }
    app.cleanup().await;
}

/// Publishes `body` straight into the commands' dead-letter queue, as the worker would.
async fn dead_letter(app: &TestApp, message_id: Option<&str>, body: &[u8], reason: &str) {
    let mut headers = FieldTable::default();
    headers.insert(
        ERROR_HEADER.into(),
        AMQPValue::LongString(LongString::from(reason)),
    );
    let properties = match message_id {
        Some(id) => json_properties(id),
        None => lapin::BasicProperties::default(),
    };
    app.publisher
        .publish(Outgoing {
            exchange: &app.topology.dlx,
            routing_key: &app.topology.commands_dlq,
            payload: body,
            properties: properties.with_headers(headers),
        })
        .await
        .unwrap();
}

/// Asserts a 400 in the error contract whose message contains `needle`; returns the message.
async fn assert_400(answer: reqwest::Response, needle: &str) -> String {
    assert_eq!(answer.status(), 400);
    let error: Value = answer.json().await.unwrap();
    let message = error["error"]["message"].as_str().unwrap_or("").to_string();
    assert!(error["error"]["code"].is_string(), "{error}");
    assert!(message.contains(needle), "`{needle}` not in {error}");
    message
}

#[tokio::test]
async fn unknown_fields_in_bodies_and_query_strings_are_refused_naming_the_closest_one() {
    let app = TestApp::spawn().await;
    dead_letter(&app, Some("dl-1"), b"{}", "bad").await;
    let admin = app.admin().await;
    let replay = format!("/v1/dlq/{}/replay", app.topology.commands_dlq);
    // snake_case instead of dryRun: this used to replay for real.
    let answer = admin
        .post(&replay, &json!({"all": true, "dry_run": true}))
        .await;
    assert_400(answer, "unknown field `dry_run`; did you mean `dryRun`?").await;
    assert_eq!(app.queue_depth(&app.topology.commands_dlq).await, 1);

    let answer = admin
        .post(
            "/v1/webhooks/resend",
            &json!({"since": "2026-01-01T00:00:00Z", "dry_run": true}),
        )
        .await;
    let message = assert_400(answer, "did you mean `dryRun`?").await;
    assert!(message.starts_with("unknown field `dry_run`"), "{message}");
    let answer = admin
        .post("/v1/webhooks/resend", &json!({"event_ids": []}))
        .await;
    assert_400(answer, "did you mean `eventIds`?").await;
    let answer = admin
        .post(&replay, &json!({"all": true, "queue": "x"}))
        .await;
    assert_400(answer, "known fields: `messageId`").await;

    for (path, needle) in [
        (
            "/v1/refunds?stauts=PENDING",
            "`stauts`; did you mean `status`?",
        ),
        (
            "/v1/webhooks/failed?limt=5",
            "`limt`; did you mean `limit`?",
        ),
        (
            &format!("/v1/dlq/{}?max=5", app.topology.commands_dlq),
            "unknown field `max`",
        ),
    ] {
        assert_400(admin.get(path).await, needle).await;
    }
    // A POST takes no query string: dryRun there would be ignored, so it is refused.
    let answer = admin
        .post(&format!("{replay}?dryRun=true"), &json!({"all": true}))
        .await;
    assert_400(answer, "unknown field `dryRun`; this takes no parameters").await;
    assert_eq!(app.queue_depth(&app.topology.commands_dlq).await, 1);
    assert_400(admin.get("/v1/refunds/r-1?verbose=1").await, "`verbose`").await;
    // A wrong type names its field.
    let answer = admin
        .post(&replay, &json!({"position": "1", "dryRun": true}))
        .await;
    assert_400(answer, "invalid body: position: invalid type").await;
    assert_400(admin.get("/v1/webhooks/failed?limit=ten").await, "limit").await;
    // Known fields still work.
    let dry = admin
        .post_json(&replay, &json!({"all": true, "dryRun": true}))
        .await;
    assert_eq!(dry["matched"], 1, "{dry}");
    assert_eq!(admin.get("/v1/webhooks/failed?limit=5").await.status(), 200);
    app.cleanup().await;
}

#[tokio::test]
async fn a_status_or_provider_outside_the_set_is_refused_naming_the_valid_values() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let window = |extra: Value| {
        let mut body = json!({"since": "2026-01-01T00:00:00Z", "dryRun": true});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    // Used to answer "0 would be queued", as if the filter were fine.
    let answer = admin
        .post(
            "/v1/webhooks/resend",
            &window(json!({"provider": "paypal"})),
        )
        .await;
    assert_400(
        answer,
        "`provider` must be one of va_services, bpn, binance_pay, bvnk",
    )
    .await;
    let answer = admin
        .post("/v1/webhooks/resend", &window(json!({"status": "done"})))
        .await;
    assert_400(
        answer,
        "`status` must be one of PENDING, COMPLETED, REFUND_FAIL",
    )
    .await;
    assert_400(
        admin.get("/v1/refunds?provider=paypal").await,
        "`provider` must be one of va_services",
    )
    .await;
    assert_400(
        admin.get("/v1/refunds?status=completed").await,
        "did you mean `COMPLETED`?",
    )
    .await;
    let fine = admin
        .post_json(
            "/v1/webhooks/resend",
            &window(json!({"provider": "bpn", "status": "COMPLETED"})),
        )
        .await;
    assert_eq!(fine["wouldQueue"], 0, "{fine}");
    assert_eq!(admin.get("/v1/refunds?provider=bvnk").await.status(), 200);
    app.cleanup().await;
}

#[tokio::test]
async fn a_replay_names_exactly_one_selector() {
    let app = TestApp::spawn().await;
    dead_letter(&app, Some("dl-1"), b"{}", "bad").await;
    dead_letter(&app, Some("dl-2"), b"{}", "worse").await;
    let admin = app.admin().await;
    let replay = format!("/v1/dlq/{}/replay", app.topology.commands_dlq);
    // These used to be ANDed: messageId dl-2 at position 1 matched nothing, silently.
    let answer = admin
        .post(
            &replay,
            &json!({"messageId": "dl-2", "position": 1, "dryRun": true}),
        )
        .await;
    assert_400(
        answer,
        "give exactly one of messageId, position, reasonContains, all",
    )
    .await;
    let answer = admin
        .post(
            &replay,
            &json!({"all": true, "reasonContains": "bad", "dryRun": true}),
        )
        .await;
    assert_400(answer, "not reasonContains and all").await;
    assert_400(
        admin.post(&replay, &json!({"dryRun": true})).await,
        "say what to replay",
    )
    .await;
    assert_400(
        admin
            .post(&replay, &json!({"position": 0, "dryRun": true}))
            .await,
        "position counts from 1",
    )
    .await;
    let one = admin
        .post_json(
            &replay,
            &json!({"messageId": "dl-2", "all": false, "dryRun": true}),
        )
        .await;
    assert_eq!(one["matched"], 1, "{one}");
    assert_eq!(app.queue_depth(&app.topology.commands_dlq).await, 2);
    // Only the worker's dead-letter queues.
    let answer = admin
        .get(&format!("/v1/dlq/{}", app.topology.unrouted))
        .await;
    assert_eq!(answer.status(), 404);
    let error: Value = answer.json().await.unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains(&app.topology.webhooks_dlq), "{message}");
    app.cleanup().await;
}

#[tokio::test]
async fn dead_letters_have_stable_ids_even_without_a_message_id() {
    let app = TestApp::spawn().await;
    dead_letter(&app, None, b"first", "bad").await;
    dead_letter(&app, None, b"second", "bad").await;
    dead_letter(&app, Some("named"), b"third", "bad").await;
    let admin = app.admin().await;
    let path = format!("/v1/dlq/{}", app.topology.commands_dlq);
    let ids = |listed: &Value| -> Vec<String> {
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let before = ids(&admin.get_json(&path).await);
    assert_eq!(before.len(), 3);
    assert!(
        before[0].starts_with("sha256:") && before[0].len() == 23,
        "{before:?}"
    );
    assert_ne!(before[0], before[1]);
    assert_eq!(before[2], "named");
    // Listing returns the messages to the queue (the broker counts a redelivery): same ids.
    assert_eq!(ids(&admin.get_json(&path).await), before);
    assert_eq!(admin.get_json(&path).await["truncated"], false);
    let part = admin.get_json(&format!("{path}?limit=2")).await;
    assert_eq!(part["truncated"], true, "{part}");

    // Replaying the first by its id leaves the others, whose positions shift but ids do not.
    let replay = format!("{path}/replay");
    let report = admin
        .post_json(&replay, &json!({"messageId": before[0]}))
        .await;
    assert_eq!(report["replayed"], 1, "{report}");
    assert_eq!(report["messages"][0]["id"], before[0].as_str());
    // (In whichever order: the partial listing above moved what it read to the back.)
    let after = ids(&admin.get_json(&path).await);
    let mut sorted = after.clone();
    sorted.sort();
    let mut rest = before[1..].to_vec();
    rest.sort();
    assert_eq!(sorted, rest);
    // A position answer says what it picked.
    let picked = admin
        .post_json(&replay, &json!({"position": 1, "dryRun": true}))
        .await;
    assert_eq!(picked["messages"][0]["id"], after[0].as_str(), "{picked}");
    app.cleanup().await;
}

#[tokio::test]
async fn a_limit_out_of_range_is_refused() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let dlq = format!("/v1/dlq/{}", app.topology.commands_dlq);
    for (path, max) in [
        ("/v1/refunds".to_string(), 500),
        ("/v1/webhooks/failed".to_string(), 1000),
        (dlq, 1000),
    ] {
        for bad in [0, -1, max + 1] {
            let answer = admin.get(&format!("{path}?limit={bad}")).await;
            assert_400(
                answer,
                &format!("`limit` must be between 1 and {max}, not {bad}"),
            )
            .await;
        }
        assert_eq!(
            admin.get(&format!("{path}?limit={max}")).await.status(),
            200
        );
        assert_eq!(admin.get(&format!("{path}?limit=1")).await.status(), 200);
    }
    app.cleanup().await;
}

#[tokio::test]
async fn a_partial_listing_leaves_every_message_visible_to_the_next_operation() {
    let app = TestApp::spawn().await;
    for body in [&b"one"[..], b"two", b"three"] {
        dead_letter(&app, None, body, "bad").await;
    }
    let queue = &app.topology.commands_dlq;
    let c = refund_worker::broker::connect(&amqp_url(), "t")
        .await
        .unwrap();
    let target = (app.topology.exchange.as_str(), "refund.request");
    // What `dlq replay --position 1 --yes` does: list up to the position, then act on the id
    // right away. The listing's returned message must be back before the replay counts.
    for round in 0..15 {
        let listed = dlq::list(&c, queue, 1).await.unwrap();
        let filter = dlq::ReplayFilter::Id(listed[0].id.clone());
        let report = dlq::replay(&c, queue, &filter, target, true, |_, _| {})
            .await
            .unwrap();
        assert_eq!(
            (report.examined, report.matched),
            (3, 1),
            "round {round}: {report:?}"
        );
    }
    app.cleanup().await;
}

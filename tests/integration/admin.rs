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
    // Set when the dispatcher starts, and at the end of every round of calls.
    let allowed: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("refund_worker_provider_calls_allowed "))
        .unwrap_or_else(|| panic!("no refund_worker_provider_calls_allowed in:\n{text}"))
        .trim()
        .parse()
        .unwrap();
    assert!(allowed >= 1.0, "{allowed}");
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

/// Checks `body` against the schema the OpenAPI document declares for `method route`
/// answering `status`, its `$ref`s resolved in the document's components (formats such as
/// `date-time` and `uuid` checked too). Every object the document describes is taken as
/// closed: the document leaves answers open (clients should ignore fields they do not
/// know), but a field the server sends and the document does not name is drift.
fn conforms(
    doc: &Value,
    method: &str,
    route: &str,
    status: u16,
    body: &Value,
) -> Result<(), String> {
    let mut response = &doc["paths"][route][method]["responses"][status.to_string()];
    if let Some(target) = response["$ref"].as_str() {
        response = doc
            .pointer(target.trim_start_matches('#'))
            .ok_or_else(|| format!("{target} points nowhere"))?;
    }
    let schema = &response["content"]["application/json"]["schema"];
    if !schema.is_object() {
        return Err(format!(
            "{method} {route} documents no JSON answer for {status}"
        ));
    }
    let mut root = schema.clone();
    root["components"] = doc["components"].clone();
    close_objects(&mut root);
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .map_err(|e| format!("{method} {route} {status}: the schema does not build: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{e} (at `{}`)", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{method} {route} {status} does not match the document: {}\nbody: {body}",
            errors.join("; ")
        ))
    }
}

/// Sets `additionalProperties: false` on every schema that lists properties and says nothing
/// of others (the document composes objects only with `oneOf`/`anyOf` of whole objects, where
/// this holds).
fn close_objects(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("properties").is_some_and(Value::is_object)
                && !map.contains_key("additionalProperties")
            {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

#[test]
fn a_body_the_document_does_not_allow_is_caught() {
    let doc = refund_worker::http::openapi::document();
    let refund = json!({
        "refundReference": "r-1", "provider": "va_services", "transactionReference": "t-1",
        "amount": "10.00", "currency": "NGN", "status": "PENDING", "phase": "NOT_SUBMITTED",
        "providerReference": null, "providerStatus": null, "providerFee": null,
        "providerFeeCurrency": null, "failureCode": null, "failureMessage": null,
        "attempts": 0, "failures": 0, "polls": 0, "nextAttemptAt": "2026-12-07T10:00:00Z",
        "createdAt": "2026-12-07T10:00:00Z", "updatedAt": "2026-12-07T10:00:00Z",
        "finishedAt": null, "reviewReason": null, "reviewSince": null, "guardSource": "none"
    });
    let page = json!({"items": [refund], "nextCursor": null});
    let check = |body: &Value| conforms(&doc, "get", "/v1/refunds", 200, body);
    check(&page).expect("a right page passes");
    let broken = |edit: &dyn Fn(&mut Value)| {
        let mut body = page.clone();
        edit(&mut body);
        check(&body).expect_err(&format!("{body} passed"))
    };
    let missing = broken(&|b| drop(b["items"][0].as_object_mut().unwrap().remove("status")));
    assert!(missing.contains("status"), "{missing}");
    broken(&|b| drop(b.as_object_mut().unwrap().remove("items")));
    broken(&|b| b["items"][0]["status"] = json!("DONE"));
    broken(&|b| b["items"][0]["guardSource"] = json!("guessed"));
    broken(&|b| b["items"][0]["attempts"] = json!("1"));
    broken(&|b| b["items"][0]["createdAt"] = json!("yesterday"));
    broken(&|b| b["items"][0]["amount"] = json!(10));
    // A field the document does not name.
    let extra = broken(&|b| b["items"][0]["secret"] = json!("x"));
    assert!(extra.contains("secret"), "{extra}");
    // The error envelope, through the shared response of the admin routes.
    let error = |body: Value| conforms(&doc, "get", "/v1/refunds", 400, &body);
    error(json!({"error": {"code": "bad_request", "message": "no"}})).expect("an error passes");
    error(json!({"error": {"code": "bad_request"}})).expect_err("an error without a message");
    error(json!({"message": "no"})).expect_err("an error outside the envelope");
    // A status the route does not document has nothing to pass.
    conforms(&doc, "get", "/v1/refunds", 418, &json!({})).expect_err("418");
}

/// An admin client that checks every answer against the served OpenAPI document.
struct Checked {
    admin: Admin,
    doc: Value,
    /// The (method, route, status) answers checked.
    seen: std::cell::RefCell<Vec<(String, String, u16)>>,
}

impl Checked {
    /// `GET path` (or `POST path` with `body`), expecting `status` with a body that matches
    /// what the document says `route` answers with it.
    async fn call(&self, route: &str, path: &str, body: Option<Value>, status: u16) -> Value {
        let (method, answer) = match &body {
            Some(body) => ("post", self.admin.post(path, body).await),
            None => ("get", self.admin.get(path).await),
        };
        assert_eq!(answer.status(), status, "{method} {path}");
        let json: Value = answer.json().await.expect("a JSON answer");
        if let Err(e) = conforms(&self.doc, method, route, status, &json) {
            panic!("{e}");
        }
        self.seen
            .borrow_mut()
            .push((method.into(), route.into(), status));
        json
    }
}

#[tokio::test]
async fn admin_answers_match_the_openapi_document() {
    let app = TestApp::spawn_with(Options {
        // So resolved refunds have a merchant webhook delivery to show (none is attempted:
        // no worker runs).
        env: vec![("WEBHOOK_DEFAULT_URL", "http://127.0.0.1:9/hook".into())],
        ..Options::default()
    })
    .await;
    let admin = app.admin().await;
    let client = reqwest::Client::new();
    let served = client
        .get(format!("{}/openapi.json", admin.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let file =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap();
    assert!(
        served == file,
        "GET /openapi.json differs from docs/openapi.json; regenerate it with \
         `UPDATE_OPENAPI=1 cargo test --lib http::openapi`"
    );
    let api = Checked {
        doc: serde_json::from_str(&served).unwrap(),
        admin,
        seen: Default::default(),
    };

    // Refunds: one flagged for review and resolved, one pending.
    let (flagged, pending) = (reference("doc-flagged"), reference("doc-pending"));
    for r in [&flagged, &pending] {
        intake::handle(&app.ctx, va_command(r, "10.00").to_string().as_bytes())
            .await
            .unwrap();
    }
    sqlx::query(
        "UPDATE refunds SET review_reason = 'no final answer', review_since = now()
         WHERE refund_reference = $1",
    )
    .bind(&flagged)
    .execute(&app.pool)
    .await
    .unwrap();
    let page = api
        .call("/v1/refunds", "/v1/refunds?limit=1", None, 200)
        .await;
    assert!(page["nextCursor"].is_string(), "{page}");
    api.call(
        "/v1/refunds",
        "/v1/refunds?review=true&provider=bvnk",
        None,
        200,
    )
    .await;
    api.call("/v1/refunds", "/v1/refunds?limt=5", None, 400)
        .await;
    let resolve = "/v1/refunds/{refundReference}/resolve";
    let body = json!({"status": "REFUND_FAIL", "reason": "the provider's support says it failed"});
    let resolved = api
        .call(
            resolve,
            &format!("/v1/refunds/{flagged}/resolve"),
            Some(body.clone()),
            200,
        )
        .await;
    assert_eq!(
        resolved["event"]["failureReason"]["code"],
        "RESOLVED_BY_OPERATOR"
    );
    api.call(
        resolve,
        &format!("/v1/refunds/{flagged}/resolve"),
        Some(body.clone()),
        409,
    )
    .await;
    api.call(
        resolve,
        &format!("/v1/refunds/{pending}/resolve"),
        Some(body.clone()),
        409,
    )
    .await;
    api.call(
        resolve,
        "/v1/refunds/no-such-refund/resolve",
        Some(body),
        404,
    )
    .await;
    let shown = api
        .call(
            "/v1/refunds/{refundReference}",
            &format!("/v1/refunds/{flagged}"),
            None,
            200,
        )
        .await;
    // The PENDING and the REFUND_FAIL event's.
    assert_eq!(
        shown["deliveries"].as_array().map(Vec::len),
        Some(2),
        "{shown}"
    );
    api.call(
        "/v1/refunds/{refundReference}",
        "/v1/refunds/nope",
        None,
        404,
    )
    .await;
    let recheck = "/v1/refunds/{refundReference}/recheck";
    let why = json!({"reason": "checking the document"});
    api.call(
        recheck,
        &format!("/v1/refunds/{flagged}/recheck"),
        Some(why.clone()),
        409,
    )
    .await;
    api.call(recheck, "/v1/refunds/nope/recheck", Some(why.clone()), 404)
        .await;
    // The pending one is submitted to the sandbox by the recheck.
    api.call(
        recheck,
        &format!("/v1/refunds/{pending}/recheck"),
        Some(why),
        200,
    )
    .await;

    // Merchant webhooks: the final event's delivery, failed, then resent.
    sqlx::query(
        "UPDATE webhook_deliveries SET state = 'failed', next_attempt_at = NULL,
             last_status_code = 502, last_error = 'bad gateway'
         WHERE refund_reference = $1 AND event_status = 'REFUND_FAIL'",
    )
    .bind(&flagged)
    .execute(&app.pool)
    .await
    .unwrap();
    let failed = api
        .call(
            "/v1/webhooks/failed",
            "/v1/webhooks/failed?limit=10",
            None,
            200,
        )
        .await;
    assert_eq!(
        failed["items"].as_array().map(Vec::len),
        Some(1),
        "{failed}"
    );
    let event_id = failed["items"][0]["eventId"].clone();
    let resend = "/v1/webhooks/resend";
    let dry = api
        .call(
            resend,
            resend,
            Some(json!({"eventIds": [event_id], "dryRun": true})),
            200,
        )
        .await;
    assert_eq!(dry["wouldQueue"], 1, "{dry}");
    let queued = api
        .call(resend, resend, Some(json!({"eventIds": [event_id]})), 200)
        .await;
    assert_eq!(queued["queued"], 1, "{queued}");
    api.call(
        resend,
        resend,
        Some(json!({"eventIds": [event_id], "dry_run": true})),
        400,
    )
    .await;

    // Provider webhooks an operator must look at.
    sqlx::query(
        "INSERT INTO provider_webhook_inbox (provider, event_key, body, state, detail)
         VALUES ('va_services', 'id:doc-1', convert_to('{\"event\": 1}', 'UTF8'), 'PARKED',
                 'its refund is not known yet')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let inbox = "/v1/provider-webhooks";
    let parked = api
        .call(inbox, "/v1/provider-webhooks?state=PARKED", None, 200)
        .await;
    assert_eq!(
        parked["items"].as_array().map(Vec::len),
        Some(1),
        "{parked}"
    );
    api.call(inbox, "/v1/provider-webhooks?state=applied", None, 400)
        .await;

    // Dead letters.
    dead_letter(
        &app,
        Some("doc-dead"),
        b"{\"not\": \"a command\"}",
        "invalid command",
    )
    .await;
    let queue = app.topology.commands_dlq.clone();
    let listed = api
        .call("/v1/dlq/{queue}", &format!("/v1/dlq/{queue}"), None, 200)
        .await;
    assert_eq!(listed["depth"], 1, "{listed}");
    api.call("/v1/dlq/{queue}", "/v1/dlq/refund.commands", None, 404)
        .await;
    let replay = "/v1/dlq/{queue}/replay";
    let report = api
        .call(
            replay,
            &format!("/v1/dlq/{queue}/replay"),
            Some(json!({"messageId": "doc-dead", "dryRun": true})),
            200,
        )
        .await;
    assert_eq!(report["matched"], 1, "{report}");
    api.call(
        replay,
        &format!("/v1/dlq/{queue}/replay"),
        Some(json!({})),
        400,
    )
    .await;

    // A dry-run recovery, followed to its summary.
    let job = api
        .call(
            "/v1/recover",
            "/v1/recover",
            Some(json!({"since": "2020-01-01", "dryRun": true})),
            202,
        )
        .await;
    let path = format!("/v1/recover/{}", job["id"].as_str().unwrap());
    let mut done = Value::Null;
    for _ in 0..100 {
        done = api.call("/v1/recover/{id}", &path, None, 200).await;
        if done["status"] != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(done["status"], "done", "{done}");
    assert!(done["summary"]["webhookResends"].is_array(), "{done}");
    api.call("/v1/recover/{id}", "/v1/recover/not-a-job", None, 404)
        .await;

    // Every admin route was checked with a success.
    let seen = api.seen.borrow().clone();
    for (method, route) in refund_worker::http::ROUTES
        .iter()
        .filter(|(_, r)| r.starts_with("/v1/"))
    {
        assert!(
            seen.iter()
                .any(|(m, r, s)| m == method && r == route && *s < 300),
            "{method} {route}: no success checked"
        );
    }

    // Without the token, and the public routes.
    let base = &api.admin.base;
    let doc = &api.doc;
    let check = |route: &str, status: u16, body: &Value| {
        let method = if route.starts_with("/webhooks/") {
            "post"
        } else {
            "get"
        };
        conforms(doc, method, route, status, body).unwrap_or_else(|e| panic!("{e}"))
    };
    let answer = client
        .get(format!("{base}/v1/refunds"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    check("/v1/refunds", 401, &answer.json().await.unwrap());
    let answer = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    check("/healthz", 200, &answer.json().await.unwrap());
    // The test's server has no broker connection of its own: not ready.
    let answer = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(answer.status(), 503);
    check("/readyz", 503, &answer.json().await.unwrap());
    let answer = client
        .post(format!("{base}/webhooks/paypal"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    check("/webhooks/{provider}", 404, &answer.json().await.unwrap());
    app.cleanup().await;
}

//! The OpenAPI document of the HTTP routes, generated from the handlers' own request and
//! response types: utoipa's derives on the types (which read their serde attributes and doc
//! comments) and `#[utoipa::path]` on each handler, next to its code. The event an operator's
//! resolution publishes is described by its published JSON Schema ([`crate::schema::event`]).
//!
//! Served at `GET /openapi.json`, and kept in the repository as `docs/openapi.json`; a test
//! keeps the two identical. After changing a handler or a type it answers with, regenerate the
//! file with `UPDATE_OPENAPI=1 cargo test --lib http::openapi`.

use crate::schema::api::EVENT_SCHEMA;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::Value;
use std::sync::LazyLock;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, PathItem, Ref, RefOr, ResponseBuilder, Schema, SecurityRequirement,
};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "refund-worker",
        description = "Health endpoints, the provider webhook ingress and the operators' admin API of refund-worker. The /v1 routes (and the console) exist only when ADMIN_TOKEN is set and require `Authorization: Bearer <ADMIN_TOKEN>`."
    ),
    paths(
        super::health::healthz,
        super::health::readyz,
        serve,
        super::health::metrics,
        super::ingress::receive,
        super::admin::list_refunds,
        super::admin::get_refund,
        super::admin::recheck_refund,
        super::admin::resolve_refund,
        super::admin::list_provider_webhooks,
        super::admin::resend_webhooks,
        super::admin::failed_webhooks,
        super::admin::list_dlq,
        super::admin::replay_dlq,
        super::admin::start_recovery,
        super::admin::get_recovery,
        crate::console::page,
        crate::console::script,
        crate::console::stylesheet,
    ),
    modifiers(&AdminRoutes, &Tidy),
    tags(
        (name = "health", description = "Liveness, readiness, metrics and this document"),
        (name = "ingress", description = "Provider webhooks in (public: providers call it)"),
        (name = "refunds", description = "Refunds: list, show, recheck, resolve by hand"),
        (name = "webhooks", description = "Merchant webhook deliveries out, and provider webhooks an operator must look at"),
        (name = "dead letters", description = "Dead-letter queues: list and replay"),
        (name = "recovery", description = "Recovery after an outage"),
        (name = "console", description = "The operations console, a static page over this API"),
    )
)]
struct ApiDoc;

/// What the admin router's layers answer on every `/v1/...` route, whatever the handler: the
/// bearer token is required (401, and 429 after repeated failures), and an unknown query
/// parameter or body field is refused (400, [`super::validation`]).
struct AdminRoutes;

/// The shared responses, as `#/components/responses/<name>`.
const SHARED_RESPONSES: [(&str, &str); 4] = [
    ("Error", "error"),
    ("Unauthorized", "missing or wrong bearer token"),
    (
        "AuthRateLimited",
        "too many failed authentications from this source address (IPv6: its /64): 5, then one \
         a second (`rate_limited`); the token is not compared; `Retry-After` says when to retry",
    ),
    (
        "BadRequest",
        "invalid request: an unknown body field or query parameter (code `unknown_field`, the \
         message names it and the closest known name, e.g. \"unknown field `dry_run`; did you \
         mean `dryRun`?\"), or an invalid value (code `bad_request`, the message names the field \
         and its valid values)",
    ),
];

impl Modify for AdminRoutes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for (name, description) in SHARED_RESPONSES {
            let response = ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Error")))
                        .build(),
                )
                .build();
            components.responses.insert(name.into(), RefOr::T(response));
        }
        let shared = |name: &str| RefOr::Ref(Ref::from_response_name(name));
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            for operation in operations(item) {
                operation.security = Some(vec![SecurityRequirement::new(
                    "bearer",
                    Vec::<String>::new(),
                )]);
                let responses = &mut operation.responses.responses;
                responses.insert("400".into(), shared("BadRequest"));
                responses.insert("401".into(), shared("Unauthorized"));
                responses.insert("429".into(), shared("AuthRateLimited"));
            }
        }
    }
}

/// What utoipa writes differently from what the server does, set right once for every route:
/// a summary is the handler's first doc paragraph on one line; a path parameter is required
/// (utoipa leaves it optional when its schema comes from a function); an optional body
/// (`Option<T>`) is left out, never sent as JSON `null`, so it is documented as `T`.
struct Tidy;

impl Modify for Tidy {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for operation in operations(item) {
                if let Some(summary) = &mut operation.summary {
                    *summary = summary.replace('\n', " ");
                }
                for parameter in operation.parameters.iter_mut().flatten() {
                    if matches!(parameter.parameter_in, ParameterIn::Path) {
                        parameter.required = utoipa::openapi::Required::True;
                    }
                }
                let contents = operation
                    .request_body
                    .iter_mut()
                    .flat_map(|b| b.content.values_mut());
                for content in contents {
                    if let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema {
                        let body = one_of.items.iter().find(|s| matches!(s, RefOr::Ref(_)));
                        content.schema = body.cloned().or(content.schema.take());
                    }
                }
            }
        }
    }
}

/// A path's operations.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.post,
        &mut item.put,
        &mut item.patch,
        &mut item.delete,
    ]
    .into_iter()
    .flatten()
}

/// The document, as JSON.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    embed_schema(&mut doc, EVENT_SCHEMA, crate::schema::event());
    doc
}

/// Adds a JSON Schema made by schemars (2020-12, which OpenAPI 3.1 takes as it is) to the
/// document's components as `name`, with its `$defs` beside it and their references pointed
/// there.
fn embed_schema(doc: &mut Value, name: &str, mut schema: Value) {
    let defs = schema.as_object_mut().and_then(|s| {
        s.remove("$schema");
        s.remove("$defs")
    });
    let schemas = &mut doc["components"]["schemas"];
    if let Some(Value::Object(defs)) = defs {
        for (def, mut def_schema) in defs {
            point_refs_to_components(&mut def_schema);
            schemas[def.as_str()] = def_schema;
        }
    }
    point_refs_to_components(&mut schema);
    schemas[name] = schema;
}

fn point_refs_to_components(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match v {
                    Value::String(target) if key == "$ref" => {
                        if let Some(def) = target.strip_prefix("#/$defs/") {
                            *target = format!("#/components/schemas/{def}");
                        }
                    }
                    _ => point_refs_to_components(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(point_refs_to_components),
        _ => {}
    }
}

/// The document as served and as `docs/openapi.json` holds it: pretty-printed, one newline
/// at the end.
pub fn json() -> &'static str {
    static JSON: LazyLock<String> =
        LazyLock::new(|| serde_json::to_string_pretty(&document()).unwrap_or_default() + "\n");
    &JSON
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health", operation_id = "openapi_document", responses(
    (status = 200, description = "the OpenAPI document", body = serde_json::Value),
))]
pub(super) async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json())
}

#[cfg(test)]
mod tests {
    use super::super::ROUTES;
    use super::*;
    use std::path::Path;

    #[test]
    fn docs_openapi_json_is_the_served_document() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
        if std::env::var("UPDATE_OPENAPI").is_ok() {
            std::fs::write(&path, json()).unwrap();
        }
        let stored = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            stored == json(),
            "docs/openapi.json differs from the document the server generates from its \
             handlers' types; regenerate it with `UPDATE_OPENAPI=1 cargo test --lib http::openapi`"
        );
    }

    #[test]
    fn the_document_covers_every_route_and_no_other() {
        let doc = document();
        assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3.1"));
        for (method, path) in ROUTES {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} missing from the document"
            );
        }
        let documented: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|m| m.as_object().map_or(0, |o| o.len()))
            .sum();
        assert_eq!(
            documented,
            ROUTES.len(),
            "the document has routes the server does not"
        );
    }

    #[test]
    fn admin_routes_say_they_need_the_token_and_refuse_unknown_fields() {
        let doc = document();
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let mut bodies = 0;
        for (method, path) in ROUTES.iter().filter(|(_, p)| p.starts_with("/v1/")) {
            let op = &doc["paths"][path][method];
            assert_eq!(op["security"][0]["bearer"], serde_json::json!([]), "{path}");
            for status in ["400", "401", "429"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path}: no {status}"
                );
            }
            // Admin bodies refuse unknown fields (validation::StrictJson); the document
            // says so.
            let body = &op["requestBody"]["content"]["application/json"]["schema"];
            if let Some(name) = body["$ref"].as_str() {
                let name = name.trim_start_matches("#/components/schemas/");
                assert_eq!(
                    doc["components"]["schemas"][name]["additionalProperties"], false,
                    "{name} (body of {method} {path}) must say additionalProperties: false"
                );
                bodies += 1;
            }
        }
        assert_eq!(bodies, 5, "recheck, resolve, resend, replay, recover");
    }

    #[test]
    fn every_reference_resolves() {
        fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
            match value {
                Value::Object(map) => {
                    for (key, v) in map {
                        match v.as_str() {
                            Some(target) if key == "$ref" => out.push(target),
                            _ => refs(v, out),
                        }
                    }
                }
                Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let doc = document();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.contains(&"#/components/schemas/RefundEvent"));
        assert!(found.contains(&"#/components/schemas/FailureReason"));
        for target in found {
            let pointer = target.strip_prefix('#').unwrap_or(target);
            assert!(doc.pointer(pointer).is_some(), "{target} points nowhere");
        }
    }

    #[test]
    fn the_event_schema_takes_no_name_the_handlers_types_use() {
        let generated = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let event = crate::schema::event();
        let taken = generated["components"]["schemas"].as_object().unwrap();
        for def in event["$defs"].as_object().unwrap().keys() {
            assert!(!taken.contains_key(def), "`{def}` would overwrite a schema");
        }
        assert!(!taken.contains_key(EVENT_SCHEMA));
    }

    #[test]
    fn the_documented_states_are_the_ones_the_server_accepts() {
        let values = |o: utoipa::openapi::Object| serde_json::to_value(o).unwrap()["enum"].clone();
        assert_eq!(
            values(crate::schema::api::operator_state()),
            serde_json::json!(crate::store::provider_webhooks::OPERATOR_STATES)
        );
        assert_eq!(
            values(crate::schema::api::refund_status()),
            serde_json::json!(super::super::validation::status_names())
        );
        assert_eq!(
            values(crate::schema::api::provider()),
            serde_json::json!(super::super::validation::provider_names())
        );
    }

    #[test]
    fn the_documented_query_parameters_are_the_query_types_fields() {
        use super::super::admin::{InboxQuery, LimitQuery};
        use super::super::validation::{fields_of, NoQuery};
        let doc = document();
        let documented = |route: &str| -> Vec<String> {
            doc["paths"][route]["get"]["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query")
                .map(|p| {
                    let name = p["name"].as_str().unwrap_or("").to_owned();
                    let required = p["required"] == true;
                    format!("{name}{}", if required { "" } else { "?" })
                })
                .collect()
        };
        assert_eq!(
            documented("/v1/provider-webhooks"),
            ["state", "limit?"],
            "InboxQuery"
        );
        for (route, fields) in [
            (
                "/v1/refunds",
                fields_of::<crate::store::refunds::ListFilter>(),
            ),
            ("/v1/provider-webhooks", fields_of::<InboxQuery>()),
            ("/v1/webhooks/failed", fields_of::<LimitQuery>()),
            ("/v1/dlq/{queue}", fields_of::<LimitQuery>()),
            ("/v1/refunds/{refundReference}", fields_of::<NoQuery>()),
            ("/v1/recover/{id}", fields_of::<NoQuery>()),
        ] {
            let names: Vec<String> = documented(route)
                .into_iter()
                .map(|n| n.trim_end_matches('?').to_owned())
                .collect();
            assert_eq!(names, fields, "{route}");
        }
    }
}

//! The operations console: a browser page served by the worker itself (`GET /console`) on
//! the admin API's listener, only when `ADMIN_TOKEN` is set.
//!
//! Plain HTML, one vanilla JavaScript module and one stylesheet, embedded in the binary
//! with `include_str!`: nothing to fetch from elsewhere, nothing to build, a few KB. The page
//! itself holds no data and needs no token; everything it shows comes from the admin API
//! (`/v1/...`, bearer token kept in the tab's `sessionStorage`) and `/metrics`. No cookies,
//! so no CSRF; a strict Content-Security-Policy allows only these same-origin files (no
//! inline script or style, no other origin), and everything rendered goes through
//! `textContent`.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page.
pub const INDEX_HTML: &str = include_str!("index.html");
/// The script (an ES module).
pub const CONSOLE_JS: &str = include_str!("console.js");
/// The stylesheet.
pub const CONSOLE_CSS: &str = include_str!("console.css");

/// The Content-Security-Policy of every console response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The console's routes; merged by `http::router` only when the admin API exists.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/console", get(page))
        .route("/console/console.js", get(script))
        .route("/console/console.css", get(stylesheet))
}

/// The operations console (HTML page).
///
/// A browser page over this admin API: refunds, review queue and actions, dead letters,
/// merchant and provider webhooks, an overview from /metrics. It asks for the admin token and
/// keeps it in the tab's sessionStorage. Exists only when ADMIN_TOKEN is set (404 otherwise);
/// needs no token itself. Served with Content-Security-Policy (same-origin script, style and
/// connections only; no inline script), X-Content-Type-Options: nosniff, Referrer-Policy:
/// no-referrer, Cache-Control: no-store.
#[utoipa::path(get, path = "/console", tag = "console", operation_id = "console_page", responses(
    (status = 200, description = "The operations console (HTML page)", body = String, content_type = "text/html"),
    (status = 404, description = "ADMIN_TOKEN is not set"),
))]
pub(crate) async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// The operations console's script (ES module).
///
/// Loaded by /console. Exists only when ADMIN_TOKEN is set (404 otherwise); needs no token
/// itself. Served with Content-Security-Policy (same-origin script, style and connections
/// only; no inline script), X-Content-Type-Options: nosniff, Referrer-Policy: no-referrer,
/// Cache-Control: no-store.
#[utoipa::path(get, path = "/console/console.js", tag = "console", operation_id = "console_script", responses(
    (status = 200, description = "The operations console's script (ES module)", body = String, content_type = "text/javascript"),
    (status = 404, description = "ADMIN_TOKEN is not set"),
))]
pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", CONSOLE_JS)
}

/// The operations console's stylesheet.
///
/// Loaded by /console. Exists only when ADMIN_TOKEN is set (404 otherwise); needs no token
/// itself. Served with Content-Security-Policy (same-origin script, style and connections
/// only; no inline script), X-Content-Type-Options: nosniff, Referrer-Policy: no-referrer,
/// Cache-Control: no-store.
#[utoipa::path(get, path = "/console/console.css", tag = "console", operation_id = "console_stylesheet", responses(
    (status = 200, description = "The operations console's stylesheet", body = String, content_type = "text/css"),
    (status = 404, description = "ADMIN_TOKEN is not set"),
))]
pub(crate) async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", CONSOLE_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_script_style_or_handlers() {
        let page = INDEX_HTML.to_ascii_lowercase();
        // Only the external module, which the CSP's script-src 'self' allows.
        assert_eq!(page.matches("<script").count(), 1);
        assert!(page.contains(r#"<script type="module" src="/console/console.js"></script>"#));
        assert!(!page.contains("<style"), "no inline style");
        assert!(!page.contains(" style="), "no inline style attribute");
        // No inline event handler: no attribute named on... in any tag.
        for tag in page.split('<').skip(1) {
            let tag = tag.split('>').next().unwrap_or("");
            assert!(
                !tag.split_whitespace().skip(1).any(|a| a.starts_with("on")),
                "inline handler in <{tag}>"
            );
        }
        assert!(!page.contains("http://") && !page.contains("https://"));
    }

    #[test]
    fn the_script_never_renders_data_as_html() {
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(
                !CONSOLE_JS.contains(forbidden),
                "console.js uses {forbidden}"
            );
        }
        // The token is kept for the tab only.
        assert!(!CONSOLE_JS.contains("localStorage"));
        assert!(!CONSOLE_JS.contains("document.cookie"));
    }
}

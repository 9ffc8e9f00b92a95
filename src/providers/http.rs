//! Classification of HTTP-level results shared by every adapter: transport errors and
//! status codes that mean the same thing whichever provider answered.

use crate::domain::ProviderOutcome;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;

/// Maps a transport error. A connect failure never reached the provider, so it is safe to
/// resend; anything after the request left (timeouts, broken bodies) may have been applied.
pub fn classify_send_error(e: &reqwest::Error) -> ProviderOutcome {
    let reason = describe(e);
    if e.is_connect() || e.is_builder() {
        ProviderOutcome::Retryable {
            reason,
            retry_after: None,
            may_have_reached_provider: false,
        }
    } else {
        ProviderOutcome::Unknown { reason }
    }
}

/// Maps status codes with the same meaning for every provider: 429, 5xx and 3xx are
/// retryable. Returns `None` for the others, which the adapter interprets. `Retry-After`
/// (seconds or an HTTP-date) is kept, clamped to [`crate::retry::MAX_RETRY_AFTER`].
pub fn classify_status(status: StatusCode, headers: &HeaderMap) -> Option<ProviderOutcome> {
    let retry_after = crate::retry::retry_after_header(headers);
    if status == StatusCode::TOO_MANY_REQUESTS {
        // Rate-limited requests are rejected before processing.
        return Some(ProviderOutcome::Retryable {
            reason: "HTTP 429 Too Many Requests".into(),
            retry_after,
            may_have_reached_provider: false,
        });
    }
    if status.is_redirection() {
        // The client follows no redirects (they would carry our signed headers to another
        // host), so a 3xx is what we get. It is neither success nor a refusal: a moved API
        // is an operator's problem to fix, and a status lookup must never turn it into a
        // final failure. Whether a submit took effect is unknown, so the pipeline asks the
        // provider before sending it again.
        return Some(ProviderOutcome::Retryable {
            reason: format!("HTTP {status} (redirects are not followed)"),
            retry_after,
            may_have_reached_provider: true,
        });
    }
    if status.is_server_error() {
        return Some(ProviderOutcome::Retryable {
            reason: format!("HTTP {status}"),
            retry_after,
            may_have_reached_provider: true,
        });
    }
    None
}

/// `base` joined with a path template such as `/va/refunds/{refundReference}`: each
/// `{name}` is replaced by its value from `vars`, percent-encoded as one path segment (a `/`
/// in a reference cannot change the path). Unknown placeholders are left as written, so a
/// typo in a configured template shows in the provider's 404 rather than silently vanishing.
pub fn templated_url(base: &reqwest::Url, template: &str, vars: &[(&str, &str)]) -> reqwest::Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty();
        for segment in template.split('/').filter(|s| !s.is_empty()) {
            let mut value = segment.to_owned();
            for (name, v) in vars {
                value = value.replace(&format!("{{{name}}}"), v);
            }
            path.push(&value);
        }
    }
    url
}

/// Whether a configured optional path means "this endpoint is not used".
pub fn is_disabled(path: &str) -> bool {
    let p = path.trim();
    p.is_empty() || p.eq_ignore_ascii_case("off") || p.eq_ignore_ascii_case("none")
}

/// A short description of a transport error without the URL (it may carry credentials or
/// account data in a query string).
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response body could not be read"
    } else {
        "request failed"
    };
    match std::error::Error::source(e) {
        Some(src) => format!("{kind}: {src}"),
        None => kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::RETRY_AFTER;
    use std::time::Duration;

    #[test]
    fn status_codes_classify() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(
            classify_status(StatusCode::TOO_MANY_REQUESTS, &h),
            Some(ProviderOutcome::Retryable {
                reason: "HTTP 429 Too Many Requests".into(),
                retry_after: Some(Duration::from_secs(7)),
                may_have_reached_provider: false
            })
        );
        assert!(matches!(
            classify_status(StatusCode::BAD_GATEWAY, &HeaderMap::new()),
            Some(ProviderOutcome::Retryable {
                may_have_reached_provider: true,
                ..
            })
        ));
        for redirect in [
            StatusCode::FOUND,
            StatusCode::MOVED_PERMANENTLY,
            StatusCode::TEMPORARY_REDIRECT,
            StatusCode::NOT_MODIFIED,
        ] {
            assert!(matches!(
                classify_status(redirect, &HeaderMap::new()),
                Some(ProviderOutcome::Retryable {
                    may_have_reached_provider: true,
                    ..
                })
            ));
        }
        // A huge Retry-After is clamped to the ceiling, never taken as is.
        let mut huge = HeaderMap::new();
        huge.insert(RETRY_AFTER, "1000000000000".parse().unwrap());
        assert!(matches!(
            classify_status(StatusCode::SERVICE_UNAVAILABLE, &huge),
            Some(ProviderOutcome::Retryable { retry_after: Some(d), .. }) if d == crate::retry::MAX_RETRY_AFTER
        ));
        assert_eq!(classify_status(StatusCode::OK, &HeaderMap::new()), None);
        assert_eq!(
            classify_status(StatusCode::BAD_REQUEST, &HeaderMap::new()),
            None
        );
    }

    #[test]
    fn templates_fill_and_encode_one_segment_each() {
        let base = reqwest::Url::parse("http://h:1/api/").unwrap();
        let url = templated_url(
            &base,
            "/va/refunds/{refundReference}",
            &[("refundReference", "a/b c?")],
        );
        assert_eq!(url.as_str(), "http://h:1/api/va/refunds/a%2Fb%20c%3F");
        let url = templated_url(
            &base,
            "payment/v1/payins/{transactionReference}/refund",
            &[("transactionReference", "t-1")],
        );
        assert_eq!(url.as_str(), "http://h:1/api/payment/v1/payins/t-1/refund");
        assert!(is_disabled("off") && is_disabled(" NONE ") && is_disabled(""));
        assert!(!is_disabled("/va/refunds/details/{transactionReference}"));
    }

    #[tokio::test]
    async fn connect_refused_is_safe_to_resend() {
        // Port 9 on loopback (discard) is closed here: the connection is refused.
        let e = reqwest::Client::new()
            .get("http://127.0.0.1:9/")
            .send()
            .await
            .unwrap_err();
        assert!(matches!(
            classify_send_error(&e),
            ProviderOutcome::Retryable {
                may_have_reached_provider: false,
                ..
            }
        ));
    }
}

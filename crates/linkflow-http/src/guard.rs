//! What every request passes before its handler, and what every refusal looks like after it.
//!
//! [`check_request`]: a request target longer than [`MAX_URI_BYTES`] is a 414, headers larger
//! than [`MAX_HEADER_BYTES`] in all a 431, a path, query or read header's value that is not
//! UTF-8 (after percent-decoding) a 400, and the body is read whole before the handler runs, within
//! [`MAX_BODY_BYTES`] (413, sent after up to [`MAX_DRAINED_BYTES`] of the body were read and
//! dropped) and [`BODY_TIMEOUT`] (408): a client that sends its body slowly is cut off, not
//! waited for.
//!
//! [`json_errors`]: every refusal is `{"error", "detail"}` JSON, also those axum and its
//! extractors produce as plain text (a bad query value, a repeated parameter, 405, ...), and
//! each is counted by status and error code.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorCode};
use crate::metrics::Metrics;

/// The largest request body accepted (413 past it).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long a client may take to send a request's body by default (408 past it;
/// `HttpConfig::body_timeout`).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest request target (path and query) accepted (414 past it).
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The most header bytes (names and values) a request may carry (431 past it).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// The request headers linkflow reads: a value of one of them that is not UTF-8 is a 400.
const READ_HEADERS: [&str; 6] = [
    "authorization",
    "content-type",
    "knot-signature",
    "plaid-verification",
    "last-event-id",
    "content-length",
];
/// The most of a plain-text refusal's body kept as the JSON `detail`.
const MAX_DETAIL_BYTES: usize = 1024;

/// Checks a request's target, headers and body before its handler; see the module docs.
pub(crate) async fn check_request(
    State(body_timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let uri = request.uri();
    let target = uri
        .path_and_query()
        .map_or(uri.path(), |target| target.as_str());
    if target.len() > MAX_URI_BYTES {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!(
                "the request target is {} bytes; at most {MAX_URI_BYTES} are accepted",
                target.len()
            ),
        ));
    }
    if !decodes_to_utf8(uri.path().as_bytes()) {
        return Err(ApiError::bad_request(
            "invalid_utf8",
            "the path is not UTF-8 once percent-decoded",
        ));
    }
    if let Some(query) = uri.query() {
        if !decodes_to_utf8(query.as_bytes()) {
            return Err(ApiError::bad_request(
                "invalid_utf8",
                "the query string is not UTF-8 once percent-decoded",
            ));
        }
    }
    let mut header_bytes = 0;
    for (name, value) in request.headers() {
        header_bytes += name.as_str().len() + value.len();
        // Only the headers linkflow reads: a provider's webhook is not refused for an odd byte
        // in a header nobody looks at (nothing a provider sends is lost).
        if READ_HEADERS.contains(&name.as_str()) && std::str::from_utf8(value.as_bytes()).is_err() {
            return Err(ApiError::bad_request(
                "invalid_utf8",
                format!("the value of header `{name}` is not UTF-8"),
            ));
        }
    }
    if header_bytes > MAX_HEADER_BYTES {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the headers hold {header_bytes} bytes; at most {MAX_HEADER_BYTES} are accepted"
            ),
        ));
    }
    let (parts, body) = request.into_parts();
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared_over = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|length| length > MAX_BODY_BYTES as u64);
    let body: Bytes = match tokio::time::timeout(body_timeout, read_body(body, declared_over)).await
    {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the body did not arrive within {} s",
                    body_timeout.as_secs_f64()
                ),
            ))
        }
        Ok(Err(BodyError::TooLarge)) => return Err(too_large()),
        Ok(Err(BodyError::Broken(error))) => {
            return Err(ApiError::bad_request(
                "incomplete_body",
                format!("the body could not be read: {error}"),
            ));
        }
        Ok(Ok(body)) => body,
    };
    Ok(next.run(Request::from_parts(parts, Body::from(body))).await)
}

/// Runs a request in a span (`request`: a fresh id, the method and the path; the id is also
/// the `x-request-id` response header) and logs its status and duration: at debug level,
/// warn for a 5xx.
pub(crate) async fn trace_request(request: Request, next: Next) -> Response {
    use tracing::Instrument;
    let id = uuid::Uuid::now_v7();
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %request.method(),
        path = %logged_path(request.uri().path()),
    );
    let started = std::time::Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let micros = started.elapsed().as_micros() as u64;
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(status, micros, "request failed");
        } else {
            tracing::debug!(status, micros, "request answered");
        }
    });
    if let Ok(value) = axum::http::HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// A request's path as logs show it: a user's id (`/v1/users/{id}`) is personal and left out
/// (docs/privacy.md); session ids and the rest are kept.
pub(crate) fn logged_path(path: &str) -> &str {
    if path.starts_with("/v1/users/") {
        "/v1/users/{id}"
    } else {
        path
    }
}

/// Whether a body read failed because the body is over the limit.
/// How much of a body over [`MAX_BODY_BYTES`] is read and thrown away before the 413 is sent:
/// a client still writing its body when the server answers and closes would see the
/// connection reset instead of the answer. Past it the connection is closed unread.
pub const MAX_DRAINED_BYTES: usize = 8 * 1024 * 1024;

enum BodyError {
    TooLarge,
    Broken(axum::Error),
}

/// The whole body within [`MAX_BODY_BYTES`]; past it (or when its declared length is), the rest
/// read and dropped up to [`MAX_DRAINED_BYTES`] and [`BodyError::TooLarge`].
async fn read_body(body: Body, declared_over: bool) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt as _;
    let mut body = body;
    let mut kept = Vec::new();
    let mut seen = 0usize;
    let mut over = declared_over;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            // Broken off while being drained: the answer is the 413 all the same.
            Err(_) if over => return Err(BodyError::TooLarge),
            Err(error) => return Err(BodyError::Broken(error)),
        };
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(chunk.len());
        if seen > MAX_BODY_BYTES {
            over = true;
            kept = Vec::new();
        }
        if over {
            if seen > MAX_DRAINED_BYTES {
                break;
            }
            continue;
        }
        kept.extend_from_slice(&chunk);
    }
    if over {
        return Err(BodyError::TooLarge);
    }
    Ok(Bytes::from(kept))
}

/// Whether `text`, percent-decoded (and `+` as a space), is UTF-8.
fn decodes_to_utf8(text: &[u8]) -> bool {
    let mut decoded = Vec::with_capacity(text.len());
    let mut at = 0;
    while at < text.len() {
        let byte = text[at];
        if byte == b'%' {
            let hex = text
                .get(at + 1..at + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok());
            if let Some(value) = hex {
                decoded.push(value);
                at += 3;
                continue;
            }
        }
        decoded.push(byte);
        at += 1;
    }
    std::str::from_utf8(&decoded).is_ok()
}

/// The error code of a refusal that does not name its own.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "body_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        status if status.is_server_error() => "internal",
        _ => "refused",
    }
}

/// Turns every refusal that is not JSON yet into `{"error", "detail"}` and counts each
/// refusal by status and code.
pub(crate) async fn json_errors(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>().copied() {
        metrics.refused(status.as_u16(), code);
        return response;
    }
    let code = code_of(status);
    metrics.refused(status.as_u16(), code);
    let allow = response.headers().get(header::ALLOW).cloned();
    let text = match axum::body::to_bytes(response.into_body(), MAX_DETAIL_BYTES).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let detail = match (status, text.is_empty()) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => format!(
            "{method} is not allowed on {path}{}",
            allow
                .as_ref()
                .and_then(|allow| allow.to_str().ok())
                .map(|allow| format!("; allowed: {allow}"))
                .unwrap_or_default()
        ),
        (StatusCode::NOT_FOUND, true) => format!("no route {method} {path}"),
        (_, true) => status
            .canonical_reason()
            .unwrap_or("refused")
            .to_lowercase(),
        (_, false) => text,
    };
    let mut response = ApiError::new(status, code, detail).into_response();
    if let Some(allow) = allow {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    response
}

#[cfg(test)]
mod tests {

    #[test]
    fn logs_leave_user_ids_out_of_paths() {
        assert_eq!(logged_path("/v1/users/alice@example.com"), "/v1/users/{id}");
        assert_eq!(
            logged_path("/v1/sessions/s1/history"),
            "/v1/sessions/s1/history"
        );
    }

    use super::*;

    #[test]
    fn percent_decoding_finds_invalid_utf8() {
        assert!(decodes_to_utf8(b"session_id=abc%20def"));
        assert!(decodes_to_utf8(b"session_id=%C3%A9"));
        assert!(!decodes_to_utf8(b"session_id=%FF"));
        assert!(!decodes_to_utf8(b"session_id=%C3"));
        // A `%` not followed by two hex digits stands for itself.
        assert!(decodes_to_utf8(b"a=%zz&b=%"));
    }

    #[test]
    fn every_refusal_status_has_a_code() {
        for status in [
            400, 401, 403, 404, 405, 408, 413, 414, 415, 422, 431, 500, 503,
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_ne!(code_of(status), "refused", "{status}");
        }
    }
}

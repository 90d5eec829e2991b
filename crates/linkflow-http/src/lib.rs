//! `linkflow-http`: the HTTP front door of the engine. [`router`] is an axum `Router` a backend
//! can mount in its own app; [`serve`] runs it with graceful shutdown (what `linkflow serve`
//! does).
//!
//! Endpoints: `POST /v1/events/moneykit`, `POST /v1/events/benji`, `POST /v1/events/knot`
//! (Knot's SDK callbacks), `POST /v1/events/plaid` (Plaid Link's callbacks; `?session_id=`,
//! `?external_user_id=` on all four), `POST /v1/webhooks/knot` (signature checked when a secret
//! is configured), `POST /v1/webhooks/plaid` (the `Plaid-Verification` JWT checked when keys are
//! configured: [`plaid_keys`]); `GET /v1/sessions`,
//! `/v1/sessions/{id}`, `/v1/sessions/{id}/history`, `/v1/parked`, `/v1/quarantine`,
//! `POST /v1/quarantine/redrive`, `/v1/accounts`, `/v1/merchants`; `GET /v1/stream`
//! (server-sent events); `GET`/`POST /v1/endpoints`, `PATCH`/`DELETE /v1/endpoints/{id}`,
//! `GET /v1/deliveries`, `POST /v1/deliveries/redeliver` (outbound notifications);
//! `GET /healthz`; `GET /metrics`; the web console under `/ui` ([`console_router`]).
//!
//! Modules: `error` (responses for refused requests), `metrics` (Prometheus text), `stream`
//! (server-sent events), [`deliver`] (notification delivery in Standard Webhooks form),
//! `endpoints` (its routes).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod console;
pub mod deliver;
mod endpoints;
mod error;
mod guard;
mod metrics;
pub mod plaid_keys;
mod server;
mod stream;
pub mod webhook_guard;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use axum_extra::headers::authorization::Bearer;
use axum_extra::headers::Authorization;
use axum_extra::typed_header::TypedHeaderRejection;
use axum_extra::TypedHeader;
use chrono::Utc;
use linkflow::views::{AccountJson, HistoryJson, MerchantJson, RejectedListJson, SessionJson};
use linkflow::{
    DeliveryError, Engine, Feed, IngestOutcome, PayloadContext, QuarantineFilter,
    QuarantineRedrive, SessionFilter,
};
use linkflow_core::{Phase, Provider, SessionId};
use linkflow_providers::signature;
use serde::Deserialize;
use tokio::sync::{watch, Semaphore};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use console::{
    ATTENTION_PAGE, ATTENTION_SCAN_ACCOUNTS, CONSOLE_ACCOUNT_HISTORY, CONSOLE_CSS,
    CONSOLE_HISTORY_PAGE, CONSOLE_JS, CONSOLE_LOGIN_TTL, CONSOLE_PAGE_SESSIONS, MAX_CONSOLE_LOGINS,
    MAX_FUNNEL_COLUMNS, MAX_SEARCH_BYTES,
};
pub use error::ApiError;
pub use guard::{BODY_TIMEOUT, MAX_BODY_BYTES, MAX_HEADER_BYTES, MAX_URI_BYTES};
pub use metrics::Metrics;
pub use server::{
    ServeConfig, CONNECTION_BUFFER_BYTES, DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT, DEFAULT_SHUTDOWN_DEADLINE,
};
pub use stream::{
    CATCHING_UP, CATCH_UP_LAG, RENDERED_EVENTS, SUBSCRIBER_BUFFER_EVENTS, SUBSCRIBER_STALL,
    TURN_EVENTS,
};

/// Events per second sent to catching-up subscribers, all together, by default.
pub const DEFAULT_CATCH_UP_EVENTS_PER_SECOND: u64 = 200_000;
/// Event-stream subscribers served at once by default.
pub const DEFAULT_MAX_SUBSCRIBERS: usize = 256;
/// The free space below which `/readyz` says the data directory's disk is full, by default.
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 64 * 1024 * 1024;

/// How the API is secured and bounded. Clones share their counters and limits: build the
/// [`api_router`] and the [`ops_router`] from clones of one config so that `/metrics` counts
/// what the API refused.
#[derive(Clone)]
pub struct HttpConfig {
    /// Knot's client secret: when set, every Knot webhook must carry a valid `Knot-Signature`.
    pub knot_secret: Option<Vec<u8>>,
    /// When set, every endpoint except `/healthz`, `/readyz` and the webhooks needs
    /// `Authorization: Bearer <token>` (the scheme in any case).
    pub token: Option<String>,
    /// The keys of Plaid's webhooks: when set, every Plaid webhook must carry a valid
    /// `Plaid-Verification` JWT.
    pub plaid_keys: Option<Arc<plaid_keys::PlaidKeys>>,
    /// Event-stream subscribers served at once ([`DEFAULT_MAX_SUBSCRIBERS`]); read when the
    /// config is first used by a router.
    pub max_subscribers: usize,
    /// The networks webhooks (`/v1/webhooks/...`) may come from; others get 403
    /// `source_not_allowed`. None: any. The address is the connection's peer (a proxy in front
    /// of linkflow is the peer: list the proxy, and filter the providers' networks there).
    pub webhook_sources: Option<webhook_guard::SourceNetworks>,
    /// Events per second that event-stream subscribers catching up (far behind the log) may be
    /// sent, all together ([`DEFAULT_CATCH_UP_EVENTS_PER_SECOND`]; none: no limit). Live
    /// subscribers are not limited. Read when the config is first used by a router.
    pub catch_up_events_per_second: Option<u64>,
    /// How long a client may take to send a request's body ([`BODY_TIMEOUT`]; 408 past it).
    pub body_timeout: std::time::Duration,
    /// How long an event-stream subscriber's buffer may stay full before the subscriber is
    /// cut off ([`SUBSCRIBER_STALL`]).
    pub subscriber_stall: std::time::Duration,
    /// The data directory whose free space `/readyz` checks (none: not checked).
    pub data_dir: Option<PathBuf>,
    /// The delivery state the `/v1/endpoints` and `/v1/deliveries` routes read and change
    /// (none: they answer 409 `delivery_unavailable`).
    pub delivery: Option<Arc<dyn linkflow::delivery::DeliveryState>>,
    /// `/readyz` answers 503 when the data directory's disk has less free space than this.
    pub min_free_disk_bytes: u64,
    shared: Arc<std::sync::OnceLock<Arc<Shared>>>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            knot_secret: None,
            token: None,
            plaid_keys: None,
            max_subscribers: DEFAULT_MAX_SUBSCRIBERS,
            webhook_sources: None,
            catch_up_events_per_second: Some(DEFAULT_CATCH_UP_EVENTS_PER_SECOND),
            body_timeout: BODY_TIMEOUT,
            subscriber_stall: SUBSCRIBER_STALL,
            data_dir: None,
            delivery: None,
            min_free_disk_bytes: DEFAULT_MIN_FREE_DISK_BYTES,
            shared: Arc::default(),
        }
    }
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secrets are not printed, only whether they are set.
        formatter
            .debug_struct("HttpConfig")
            .field("knot_secret", &self.knot_secret.as_ref().map(|_| "[set]"))
            .field("token", &self.token.as_ref().map(|_| "[set]"))
            .field("plaid_keys", &self.plaid_keys.as_ref().map(|_| "[set]"))
            .field("max_subscribers", &self.max_subscribers)
            .field("webhook_sources", &self.webhook_sources)
            .field(
                "catch_up_events_per_second",
                &self.catch_up_events_per_second,
            )
            .field("body_timeout", &self.body_timeout)
            .field("subscriber_stall", &self.subscriber_stall)
            .field("data_dir", &self.data_dir)
            .field("min_free_disk_bytes", &self.min_free_disk_bytes)
            .finish_non_exhaustive()
    }
}

/// What the routers of one config share.
struct Shared {
    catch_up_budget: Option<Arc<stream::CatchUpBudget>>,
    metrics: Arc<Metrics>,
    catching_up: Arc<Semaphore>,
    rendered: Arc<stream::Rendered>,
    knot_signatures: Arc<webhook_guard::RecentSignatures>,
    /// One permit per event-stream subscriber.
    subscribers: Arc<Semaphore>,
    /// Turns true when the server starts shutting down: open event streams end, so that
    /// graceful shutdown is not held up by subscribers that never disconnect.
    closing: watch::Sender<bool>,
    /// The web console's logins.
    console_logins: Arc<console::Logins>,
}

impl HttpConfig {
    fn shared(&self) -> &Arc<Shared> {
        self.shared.get_or_init(|| {
            Arc::new(Shared {
                catch_up_budget: self
                    .catch_up_events_per_second
                    .map(|rate| Arc::new(stream::CatchUpBudget::new(rate))),
                metrics: Arc::new(Metrics::default()),
                catching_up: Arc::new(Semaphore::new(stream::CATCHING_UP)),
                rendered: Arc::default(),
                knot_signatures: Arc::default(),
                subscribers: Arc::new(Semaphore::new(self.max_subscribers)),
                closing: watch::Sender::new(false),
                console_logins: Arc::default(),
            })
        })
    }

    /// The counters behind `/metrics`, shared by every router built from this config.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared().metrics)
    }
}

#[derive(Clone)]
struct AppState {
    engine: Engine,
    config: Arc<HttpConfig>,
    shared: Arc<Shared>,
}

fn state(engine: Engine, config: HttpConfig) -> AppState {
    let shared = Arc::clone(config.shared());
    AppState {
        engine,
        config: Arc::new(config),
        shared,
    }
}

/// The API (`/v1/...`) as a `Router`, to serve or to mount in another app: every refusal is
/// `{"error", "detail"}` JSON, bodies are read whole within [`MAX_BODY_BYTES`] and
/// [`BODY_TIMEOUT`]. It holds no route at the root, so it merges with an app's own:
///
/// ```
/// use axum::{routing::get, Router};
/// use linkflow_http::{api_router, ops_router, HttpConfig};
///
/// # async fn example(engine: linkflow::Engine) {
/// let config = HttpConfig::default();
/// let app: Router = Router::new()
///     .route("/healthz", get(|| async { "my app is fine" }))
///     .merge(api_router(engine.clone(), config.clone()))
///     .nest("/linkflow", ops_router(engine, config));
/// # let _ = app;
/// # }
/// ```
pub fn api_router(engine: Engine, config: HttpConfig) -> Router {
    let state = state(engine, config);
    let (protected, _) = protected_routes().split_for_parts();
    let protected = protected
        .layer(middleware::from_fn_with_state(state.clone(), open_sealed))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let (webhooks, _) = webhook_routes().split_for_parts();
    let webhooks = webhooks.route_layer(middleware::from_fn_with_state(
        state.clone(),
        require_webhook_source,
    ));
    Router::new()
        .merge(webhooks)
        .merge(protected)
        .with_state(state.clone())
        .layer(middleware::from_fn_with_state(
            state.config.body_timeout,
            guard::check_request,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state.shared.metrics),
            guard::json_errors,
        ))
        .layer(middleware::from_fn(guard::trace_request))
}

/// The routes behind the token, with their OpenAPI operations.
fn protected_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ingest_moneykit))
        .routes(routes!(ingest_benji))
        .routes(routes!(ingest_knot_sdk))
        .routes(routes!(ingest_plaid))
        .routes(routes!(list_quarantine))
        .routes(routes!(redrive_quarantine))
        .routes(routes!(list_sessions))
        .routes(routes!(show_session))
        .routes(routes!(session_history))
        .routes(routes!(list_parked))
        .routes(routes!(list_accounts))
        .routes(routes!(show_user, erase_user))
        .routes(routes!(list_merchants))
        .routes(routes!(stream::events))
        .routes(routes!(funnel))
        .routes(routes!(endpoints::list_endpoints, endpoints::add_endpoint))
        .routes(routes!(
            endpoints::change_endpoint,
            endpoints::remove_endpoint
        ))
        .routes(routes!(endpoints::list_deliveries))
        .routes(routes!(endpoints::redeliver))
}

/// The webhook routes (their providers' signatures, not the token).
fn webhook_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ingest_knot))
        .routes(routes!(ingest_plaid_webhook))
}

/// The probes (no token) and the metrics (the token).
fn ops_routes() -> (OpenApiRouter<AppState>, OpenApiRouter<AppState>) {
    (
        OpenApiRouter::new()
            .routes(routes!(healthz))
            .routes(routes!(readyz)),
        OpenApiRouter::new().routes(routes!(render_metrics)),
    )
}

/// What an ingest route answers.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum IngestResponses {
    /// Every payload's outcome (`accepted`, `duplicate`, `rejected`: stored and parked,
    /// `quarantined`) and the counts
    #[response(status = 200)]
    Stored,
    /// Every payload was quarantined: stored, naming no session
    #[response(status = 202)]
    Quarantined,
    /// `invalid_json` (nothing stored), `invalid_session_id`
    #[response(status = 400)]
    Invalid(ErrorBody),
    /// `unauthorized`: the token is missing or wrong
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `too_large`: the body, a payload, or one event's record is over its limit (nothing
    /// stored)
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// `engine_unavailable`: the store failed or is closed (nothing acknowledged)
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// What a read route refuses with.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum ReadRefusals {
    /// `invalid_query`, `invalid_cursor`, `bad_request`: a parameter that does not parse, or an
    /// invalid session id
    #[response(status = 400)]
    Invalid(ErrorBody),
    /// `unauthorized`
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `engine_unavailable`
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The body of every refusal.
#[derive(ToSchema)]
#[allow(dead_code)]
struct ErrorBody {
    /// A stable code (`invalid_json`, `too_large`, `unauthorized`, ...).
    error: String,
    /// What was wrong, and where.
    detail: String,
}

/// The OpenAPI 3.1 document of every route [`router`] serves, generated from the handlers'
/// annotations (the routes are registered from the same annotations, so the two cannot
/// differ). `docs/openapi.json` is this document; a test keeps it in sync.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::openapi::{self, Components, ContentBuilder, ResponseBuilder};
    let (_, mut doc) = protected_routes().split_for_parts();
    doc.merge(webhook_routes().split_for_parts().1);
    let (probes, metrics) = ops_routes();
    doc.merge(probes.split_for_parts().1);
    doc.merge(metrics.split_for_parts().1);
    doc.info = openapi::InfoBuilder::new()
        .title("linkflow HTTP API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Link sessions of connect flows (MoneyKit, Benji, Knot, Plaid Link) as state machines over a durable log. Every refusal is `{\"error\", \"detail\"}` JSON.",
        ))
        .license(Some(openapi::LicenseBuilder::new().name("Apache-2.0").build()))
        .build();
    let mut components = doc.components.take().unwrap_or_else(Components::new);
    components.schemas.insert(
        "ErrorBody".into(),
        <ErrorBody as utoipa::PartialSchema>::schema(),
    );
    doc.components = Some(components);
    // What the checks before every handler can answer, on every route.
    let common = [
        (
            "400",
            "`invalid_utf8`: the path, the query or a header linkflow reads is not UTF-8",
        ),
        ("405", "`method_not_allowed`"),
        ("408", "`body_timeout`: the body did not arrive in time"),
        ("413", "`too_large`: the body is over 1 MiB"),
        ("414", "`uri_too_long`: the request target is over 8 KiB"),
        ("431", "`headers_too_large`: the headers hold over 32 KiB"),
    ];
    for item in doc.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            for (status, description) in common {
                operation
                    .responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| {
                        ResponseBuilder::new()
                            .description(description)
                            .content(
                                "application/json",
                                ContentBuilder::new()
                                    .schema(Some(openapi::Ref::from_schema_name("ErrorBody")))
                                    .build(),
                            )
                            .build()
                            .into()
                    });
            }
        }
    }
    doc
}

/// The operator's routes: `GET /healthz` (liveness: the engine takes writes), `GET /readyz`
/// (readiness: also the disk has room and the server is not shutting down) and `GET /metrics`
/// (Prometheus text; behind the token when one is set). Mount it at the root or nest it.
pub fn ops_router(engine: Engine, config: HttpConfig) -> Router {
    let state = state(engine, config);
    let (probes, metrics) = ops_routes();
    let (probes, _) = probes.split_for_parts();
    let (metrics, _) = metrics.split_for_parts();
    let metrics = metrics.route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(probes)
        .merge(metrics)
        .with_state(state.clone())
        .layer(middleware::from_fn_with_state(
            state.config.body_timeout,
            guard::check_request,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state.shared.metrics),
            guard::json_errors,
        ))
        .layer(middleware::from_fn(guard::trace_request))
}

/// The web console (`/ui` and the pages under it: find, session, user, funnel, attention),
/// signed in with the API token when one is set. Merge it at the root of an app: its pages link
/// to `/ui/...`.
pub fn console_router(engine: Engine, config: HttpConfig) -> Router {
    console::routes(state(engine, config))
}

/// The API, the operator's routes and the web console in one `Router` (what [`serve`] serves),
/// with a JSON 404 for every other path.
pub fn router(engine: Engine, config: HttpConfig) -> Router {
    let metrics = config.metrics();
    api_router(engine.clone(), config.clone())
        .merge(ops_router(engine.clone(), config.clone()))
        .merge(console_router(engine, config))
        .fallback(move |request: Request| {
            let metrics = Arc::clone(&metrics);
            async move {
                metrics.refused(404, "not_found");
                ApiError::not_found(format!(
                    "no route {} {}",
                    request.method(),
                    request.uri().path()
                ))
            }
        })
}

/// Serves [`router`] on `listener` with the default [`ServeConfig`] until `shutdown`
/// completes; see [`serve_with`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Engine,
    config: HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, engine, config, ServeConfig::default(), shutdown).await
}

/// Serves [`router`] on `listener` within `limits` until `shutdown` completes; then stops
/// accepting, ends the event streams, lets requests in flight finish until
/// `limits.shutdown_deadline` (then cuts the connections left), and shuts the engine down:
/// every acknowledged write is durable before this returns.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    engine: Engine,
    config: HttpConfig,
    limits: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if config.knot_secret.is_none() {
        tracing::warn!("no Knot secret configured (LINKFLOW_KNOT_SECRET): Knot webhooks are accepted without a signature check");
    }
    if config.plaid_keys.is_none() {
        tracing::warn!("no Plaid keys configured (LINKFLOW_PLAID_JWKS, or LINKFLOW_PLAID_CLIENT_ID and LINKFLOW_PLAID_SECRET): Plaid webhooks are accepted without verification");
    }
    let metrics = config.metrics();
    let closing = config.shared().closing.clone();
    let app = router(engine.clone(), config);
    let signal = async move {
        shutdown.await;
        let _ = closing.send(true);
    };
    server::run(listener, app, &limits, metrics, signal).await;
    engine
        .shutdown()
        .await
        .map_err(|error| std::io::Error::other(error.to_string()))
}

/// Lets a request through when no token is configured or it carries the token (compared in
/// constant time; the `Bearer` scheme in any case).
async fn require_token(
    State(state): State<AppState>,
    bearer: Result<TypedHeader<Authorization<Bearer>>, TypedHeaderRejection>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &state.config.token {
        // No header, another scheme, or a malformed one: no token.
        let presented = bearer.as_ref().map_or("", |bearer| bearer.token());
        let matches: bool =
            subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), token.as_bytes()).into();
        if !matches {
            return ApiError::unauthorized("a valid `Authorization: Bearer <token>` is required")
                .into_response();
        }
    }
    next.run(request).await
}

/// The most bytes of a JSON response [`open_sealed`] reads to open its sealed fields: far
/// above the largest page (1,000 sessions or history entries of bounded records).
pub const MAX_OPENED_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// With a master key, opens the sealed fields of a read's JSON response (personal fields and
/// raw payloads; `[erased]` for destroyed keys) on its way out: the store, the cache and the
/// engine's views hold only the sealed form.
async fn open_sealed(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if state.engine.privacy().is_none() {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_OPENED_RESPONSE_BYTES).await {
        Ok(bytes) => bytes,
        Err(error) => {
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "response_too_large",
                format!("the response could not be read to open its sealed fields: {error}"),
            )
            .into_response()
        }
    };
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    state.engine.show_json(&mut value);
    let opened = value.to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(opened))
}

/// Lets a webhook through when no source networks are configured or its peer is in one.
async fn require_webhook_source(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(networks) = &state.config.webhook_sources {
        // `serve` puts the peer in every request; an embedding app serves with
        // `into_make_service_with_connect_info`, or every webhook is refused.
        let peer = request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .copied();
        let allowed = peer.is_some_and(|peer| networks.allows(peer.0.ip()));
        if !allowed {
            let from = peer.map_or("an unknown address".to_owned(), |peer| {
                peer.0.ip().to_string()
            });
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "source_not_allowed",
                format!("webhooks are not accepted from {from}"),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Liveness: `ok`, or 503 with the reason once the engine takes no more writes (a sync
/// failed: restarting the process reopens the store and recovers).
#[utoipa::path(get, path = "/healthz", tag = "operations",
    description = "Liveness: the engine takes writes (no token needed).",
    responses(
        (status = 200, description = "`{\"status\": \"ok\"}`"),
        (status = 503, description = "`engine_failed`: a sync failed; restarting reopens the store", body = ErrorBody),
    ))]
async fn healthz(State(state): State<AppState>) -> Response {
    match state.engine.health() {
        Ok(()) => Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(error) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "engine_failed",
            error.to_string(),
        )
        .into_response(),
    }
}

/// Readiness for writes: the engine takes writes, the data directory's disk has at least
/// `min_free_disk_bytes` free, and the server is not shutting down; else 503 naming which.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    description = "Readiness for writes: the engine takes writes, the data directory's disk has room, and the server is not shutting down (no token needed).",
    responses(
        (status = 200, description = "`{\"status\": \"ready\", \"disk_free_bytes\"}`"),
        (status = 503, description = "`engine_failed`, `disk_full`, `disk_unknown`, `shutting_down`", body = ErrorBody),
    ))]
async fn readyz(State(state): State<AppState>) -> Response {
    let unavailable =
        |error, detail: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error, detail);
    if let Err(error) = state.engine.health() {
        return unavailable("engine_failed", error.to_string()).into_response();
    }
    if *state.shared.closing.borrow() {
        return unavailable("shutting_down", "the server is shutting down".into()).into_response();
    }
    let mut free = None;
    if let Some(dir) = &state.config.data_dir {
        match fs2::available_space(dir) {
            Ok(bytes) if bytes < state.config.min_free_disk_bytes => {
                return unavailable(
                    "disk_full",
                    format!(
                        "{} has {bytes} bytes free, less than the {} writes need",
                        dir.display(),
                        state.config.min_free_disk_bytes
                    ),
                )
                .into_response()
            }
            Ok(bytes) => free = Some(bytes),
            Err(error) => {
                return unavailable(
                    "disk_unknown",
                    format!("cannot read the free space of {}: {error}", dir.display()),
                )
                .into_response()
            }
        }
    }
    Json(serde_json::json!({"status": "ready", "disk_free_bytes": free})).into_response()
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct IngestQuery {
    session_id: Option<String>,
    external_user_id: Option<String>,
}

fn outcome_name(outcome: &IngestOutcome) -> &'static str {
    match outcome {
        IngestOutcome::Accepted { .. } => "accepted",
        IngestOutcome::Duplicate { .. } => "duplicate",
        IngestOutcome::Rejected { .. } => "rejected",
        IngestOutcome::Quarantined { .. } => "quarantined",
        IngestOutcome::Refused { .. } => "refused",
    }
}

/// Decodes and ingests a whole body through [`Engine::ingest_payload`]: a payload that is not
/// JSON is a 400 and one over a limit a 413, with nothing stored; a payload that names no
/// stream is quarantined (202 when every payload of the request was).
async fn ingest(
    state: &AppState,
    feed: Feed,
    body: &[u8],
    query: IngestQuery,
    channel: &str,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let mut context = PayloadContext::new(channel, Utc::now());
    if let Some(session) = &query.session_id {
        let session = SessionId::new(session.as_str())
            .map_err(|error| ApiError::bad_request("invalid_session_id", error.to_string()))?;
        context = context.with_session(session);
    }
    if let Some(user) = query.external_user_id {
        context = context.with_user(user);
    }
    let report = match state.engine.ingest_payload(feed, body, &context).await {
        Ok(report) => report,
        Err(DeliveryError::Engine(error)) => return Err(error.into()),
        Err(error) if error.is_limit() => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                error.to_string(),
            ))
        }
        Err(DeliveryError::Empty) => {
            return Err(ApiError::bad_request(
                "invalid_json",
                "the body holds no payload",
            ))
        }
        Err(error) => return Err(ApiError::bad_request("invalid_json", error.to_string())),
    };
    for result in &report.results {
        state
            .shared
            .metrics
            .ingested(feed.as_str(), outcome_name(&result.outcome));
        if !result.warnings.is_empty() {
            state.shared.metrics.warned(feed.as_str());
        }
    }
    state.shared.metrics.latency(started.elapsed());
    let all_quarantined = report.counts.quarantined == report.results.len() as u64;
    let status = if all_quarantined {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(report)).into_response())
}

#[utoipa::path(post, path = "/v1/events/moneykit", tag = "ingest",
    description = "MoneyKit Connect SDK events: one payload, a JSON array or JSON Lines; all of it stored or, when any payload is not JSON or is over a limit, none of it.",
    params(IngestQuery),
    request_body(content = String, content_type = "application/json"),
    responses(IngestResponses))]
async fn ingest_moneykit(
    State(state): State<AppState>,
    Query(query): Query<IngestQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    ingest(
        &state,
        Feed::Moneykit,
        &body,
        query,
        "POST /v1/events/moneykit",
    )
    .await
}

#[utoipa::path(post, path = "/v1/events/benji", tag = "ingest",
    description = "Benji Connect SDK callbacks: one payload, a JSON array or JSON Lines; all of it stored or, when any payload is not JSON or is over a limit, none of it.",
    params(IngestQuery),
    request_body(content = String, content_type = "application/json"),
    responses(IngestResponses))]
async fn ingest_benji(
    State(state): State<AppState>,
    Query(query): Query<IngestQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    ingest(&state, Feed::Benji, &body, query, "POST /v1/events/benji").await
}

#[utoipa::path(post, path = "/v1/events/knot", tag = "ingest",
    description = "Knot client SDK callbacks: one payload, a JSON array or JSON Lines; all of it stored or, when any payload is not JSON or is over a limit, none of it.",
    params(IngestQuery),
    request_body(content = String, content_type = "application/json"),
    responses(IngestResponses))]
async fn ingest_knot_sdk(
    State(state): State<AppState>,
    Query(query): Query<IngestQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    ingest(&state, Feed::KnotSdk, &body, query, "POST /v1/events/knot").await
}

#[utoipa::path(post, path = "/v1/events/plaid", tag = "ingest",
    description = "Plaid Link callbacks: one payload, a JSON array or JSON Lines; all of it stored or, when any payload is not JSON or is over a limit, none of it.",
    params(IngestQuery),
    request_body(content = String, content_type = "application/json"),
    responses(IngestResponses))]
async fn ingest_plaid(
    State(state): State<AppState>,
    Query(query): Query<IngestQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    ingest(&state, Feed::Plaid, &body, query, "POST /v1/events/plaid").await
}

#[utoipa::path(post, path = "/v1/webhooks/knot", tag = "webhooks",
    description = "Knot webhooks; `Knot-Signature` checked when a secret is configured. The signature covers the body's length, content type, event and session id: a signature seen before with another body is refused as a replay.",
    request_body(content = String, content_type = "application/json"),
    responses(
        (status = 200, description = "Each payload's outcome"),
        (status = 202, description = "Every payload was quarantined"),
        (status = 400, description = "`invalid_json` (nothing stored)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: the signature is missing or wrong; `signature_replayed`", body = ErrorBody),
        (status = 403, description = "`source_not_allowed`: the peer is outside `LINKFLOW_WEBHOOK_SOURCES`", body = ErrorBody),
        (status = 413, description = "`too_large` (nothing stored)", body = ErrorBody),
        (status = 503, description = "`engine_unavailable`", body = ErrorBody),
    ))]
async fn ingest_knot(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if let Some(secret) = &state.config.knot_secret {
        let signature_header = headers
            .get("Knot-Signature")
            .and_then(|value| value.to_str().ok());
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("application/json");
        signature::verify(secret, signature_header, &body, content_type).map_err(|error| {
            state.shared.metrics.signature_failed("/v1/webhooks/knot");
            ApiError::unauthorized(error.to_string())
        })?;
        // Knot's signature does not cover the whole body: the same signature with another
        // body is a replay (`webhook_guard`).
        if let Some(signature) = signature_header {
            if !state.shared.knot_signatures.check(signature.trim(), &body) {
                state.shared.metrics.signature_failed("/v1/webhooks/knot");
                tracing::warn!(
                    "a Knot signature seen before came with a different body: refused as a replay"
                );
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "signature_replayed",
                    "this Knot-Signature came before with a different body: Knot's signature covers the body's length, content type, event and session id only, and Knot resends a webhook with the same body",
                ));
            }
        }
    }
    // A webhook names its own streams: no query parameters.
    let query = IngestQuery::default();
    ingest(&state, Feed::Knot, &body, query, "POST /v1/webhooks/knot").await
}

#[utoipa::path(post, path = "/v1/webhooks/plaid", tag = "webhooks",
    description = "Plaid webhooks; the `Plaid-Verification` JWT checked when keys are configured.",
    request_body(content = String, content_type = "application/json"),
    responses(
        (status = 200, description = "Each payload's outcome"),
        (status = 202, description = "Every payload was quarantined"),
        (status = 400, description = "`invalid_json` (nothing stored)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: the JWT is missing, expired or does not match the body", body = ErrorBody),
        (status = 403, description = "`source_not_allowed`", body = ErrorBody),
        (status = 413, description = "`too_large` (nothing stored)", body = ErrorBody),
        (status = 503, description = "`verification_unavailable`: Plaid's keys could not be fetched; `engine_unavailable`", body = ErrorBody),
    ))]
async fn ingest_plaid_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if let Some(keys) = &state.config.plaid_keys {
        let header = headers
            .get("Plaid-Verification")
            .and_then(|value| value.to_str().ok());
        keys.verify(header, &body, Utc::now())
            .await
            .map_err(|error| match error {
                plaid_keys::KeyError::Refused(error) => {
                    state.shared.metrics.signature_failed("/v1/webhooks/plaid");
                    ApiError::unauthorized(error.to_string())
                }
                plaid_keys::KeyError::Unavailable(reason) => {
                    tracing::error!(%reason, "a Plaid webhook could not be verified");
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "verification_unavailable",
                        reason,
                    )
                }
            })?;
    }
    ingest(
        &state,
        Feed::PlaidWebhook,
        &body,
        IngestQuery::default(),
        "POST /v1/webhooks/plaid",
    )
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct QuarantineQuery {
    pending: Option<bool>,
    provider: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /v1/quarantine`: a page of quarantined payloads (`?pending=true`, `?provider=`,
/// `?limit=` default 100 at most 1,000, `?cursor=`), with the counts of all.
#[utoipa::path(get, path = "/v1/quarantine", tag = "read",
    description = "A page of quarantined payloads, with the counts of all.",
    params(QuarantineQuery),
    responses(
        (status = 200, description = "`{counts, entries, next_cursor}`"),
        ReadRefusals,
    ))]
async fn list_quarantine(
    State(state): State<AppState>,
    Query(query): Query<QuarantineQuery>,
) -> Result<Json<linkflow::QuarantineList>, ApiError> {
    let provider = query
        .provider
        .map(|text| text.parse::<Provider>())
        .transpose()
        .map_err(|error| ApiError::bad_request("invalid_query", error.to_string()))?;
    let filter = QuarantineFilter {
        pending_only: query.pending.unwrap_or(false),
        provider,
    };
    let (limit, after) = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    }
    .parse()?;
    Ok(Json(state.engine.quarantine(filter, limit, after).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveBody {
    entry: Option<String>,
    session_id: Option<String>,
    external_user_id: Option<String>,
}

/// `POST /v1/quarantine/redrive`: decodes quarantined payloads again (`{"entry"}` one, else
/// every pending one), with `session_id` / `external_user_id` for payloads that name none.
#[utoipa::path(post, path = "/v1/quarantine/redrive", tag = "ingest",
    description = "Decodes quarantined payloads again: `{\"entry\"}` one, else every pending one; `session_id` / `external_user_id` for payloads that name none.",
    request_body(content = String, content_type = "application/json"),
    responses(
        (status = 200, description = "What the redrive did with each entry"),
        (status = 400, description = "`invalid_json`, `invalid_entry`, `invalid_session_id`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such quarantine entry", body = ErrorBody),
        (status = 503, description = "`engine_unavailable`", body = ErrorBody),
    ))]
async fn redrive_quarantine(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<linkflow::RedriveReport>, ApiError> {
    let request: RedriveBody = if body.is_empty() {
        RedriveBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|error| ApiError::bad_request("invalid_json", error.to_string()))?
    };
    let id = |text: Option<String>, what: &'static str| {
        text.map(|text| {
            SessionId::new(text).map_err(|error| ApiError::bad_request(what, error.to_string()))
        })
        .transpose()
    };
    let redrive = QuarantineRedrive {
        entry: id(request.entry, "invalid_entry")?,
        session_id: id(request.session_id, "invalid_session_id")?,
        external_user_id: request.external_user_id,
    };
    match state.engine.redrive_quarantine(redrive).await {
        Ok(report) => Ok(Json(report)),
        Err(linkflow::EngineError::NotQuarantined { entry }) => Err(ApiError::not_found(format!(
            "`{entry}` is not a quarantine entry"
        ))),
        Err(error) => Err(error.into()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SessionsQuery {
    phase: Option<String>,
    provider: Option<String>,
    institution: Option<String>,
    user: Option<String>,
    abandoned: Option<bool>,
    first_event_from: Option<chrono::DateTime<Utc>>,
    first_event_until: Option<chrono::DateTime<Utc>>,
    last_event_from: Option<chrono::DateTime<Utc>>,
    last_event_until: Option<chrono::DateTime<Utc>>,
    /// `newest`: the newest first by their first event time (the first-event index read from
    /// its end, every other filter checked on the session); else the filter's index order.
    order: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// Sessions per page of `GET /v1/sessions` when `limit` is not given.
pub const DEFAULT_PAGE_SESSIONS: usize = 100;

/// `GET /v1/sessions`: one page of sessions (`limit`, default [`DEFAULT_PAGE_SESSIONS`], at
/// most `linkflow::MAX_PAGE_SESSIONS`; `cursor`: the previous page's `next_cursor`), filtered
/// by `phase`, `provider`, `institution`, `user`, `abandoned` and first/last event time;
/// `order=newest` lists the newest first by first event time.
#[utoipa::path(get, path = "/v1/sessions", tag = "read",
    description = "One page of sessions, filtered.",
    params(SessionsQuery),
    responses(
        (status = 200, description = "`{sessions, next_cursor}`"),
        ReadRefusals,
    ))]
async fn list_sessions(
    State(state): State<AppState>,
    Query(query): Query<SessionsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let invalid = |error: String| ApiError::bad_request("invalid_query", error);
    let phase = query
        .phase
        .map(|text| text.parse::<Phase>())
        .transpose()
        .map_err(|error| invalid(error.to_string()))?;
    let provider = query
        .provider
        .map(|text| text.parse::<Provider>())
        .transpose()
        .map_err(|error| invalid(error.to_string()))?;
    let (limit, after) = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    }
    .parse()?;
    let filter = SessionFilter {
        phase,
        provider,
        institution: query.institution,
        external_user_id: query.user,
        abandoned: query.abandoned,
        first_event_from: query.first_event_from,
        first_event_until: query.first_event_until,
        last_event_from: query.last_event_from,
        last_event_until: query.last_event_until,
    };
    let page = match query.order.as_deref() {
        None | Some("index") => state.engine.sessions_page(filter, limit, after).await?,
        Some("newest") => {
            state
                .engine
                .recent_sessions_page(filter, limit, after)
                .await?
        }
        Some(other) => return Err(invalid(format!("order: `{other}` is not newest or index"))),
    };
    let sessions: Vec<SessionJson> = page
        .sessions
        .iter()
        .map(|view| SessionJson::new(view, state.engine.is_abandoned(&view.state)))
        .collect();
    Ok(Json(serde_json::json!({
        "sessions": sessions,
        "next_cursor": page.next.map(|cursor| cursor.to_string()),
    })))
}

fn session_id(id: &str) -> Result<SessionId, ApiError> {
    SessionId::new(id)
        .map_err(|error| ApiError::bad_request("invalid_session_id", error.to_string()))
}

#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "read",
    description = "One session's state.",
    params(("id" = String, Path, description = "The session id")),
    responses(
        (status = 200, description = "The session"),
        (status = 404, description = "`not_found`", body = ErrorBody),
        ReadRefusals,
    ))]
async fn show_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SessionJson>, ApiError> {
    let session = state
        .engine
        .session(&session_id(&id)?)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no session `{id}`")))?;
    Ok(Json(SessionJson::new(
        &session,
        state.engine.is_abandoned(&session.state),
    )))
}

/// A page of a session's history: `{"history": [...], "next_cursor"}` (`?limit=`, default
/// 100, at most 1,000; `?cursor=`).
#[utoipa::path(get, path = "/v1/sessions/{id}/history", tag = "read",
    description = "A page of one session's history in event-time order.",
    params(("id" = String, Path, description = "The session id"), PageQuery),
    responses(
        (status = 200, description = "`{history, next_cursor}`"),
        (status = 404, description = "`not_found`", body = ErrorBody),
        ReadRefusals,
    ))]
async fn session_history(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (limit, after) = page.parse()?;
    let history = state
        .engine
        .history_page(&session_id(&id)?, limit, after)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no session `{id}` with accepted events")))?;
    let entries: Vec<HistoryJson> = history.entries.iter().map(HistoryJson::from).collect();
    Ok(Json(serde_json::json!({
        "history": entries,
        "next_cursor": history.next.map(|cursor| cursor.to_string()),
    })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ParkedQuery {
    session: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// The events their streams' folds reject now: of one session with `?session=` (at most
/// [`linkflow::MAX_REJECTED_LISTED`]; `truncated` says whether more are), else a page of every
/// stream's (`?limit=`, default 100, at most 1,000; `?cursor=` the previous `next_cursor`).
#[utoipa::path(get, path = "/v1/parked", tag = "read",
    description = "Rejected (parked) events: of one session, or a page of every stream's.",
    params(ParkedQuery),
    responses(
        (status = 200, description = "`{events, truncated, next_cursor}`"),
        ReadRefusals,
    ))]
async fn list_parked(
    State(state): State<AppState>,
    Query(query): Query<ParkedQuery>,
) -> Result<Json<RejectedListJson>, ApiError> {
    let list = match query.session.as_deref().map(session_id).transpose()? {
        Some(session) => state.engine.rejected(Some(session)).await?,
        None => {
            let (limit, after) = PageQuery {
                limit: query.limit,
                cursor: query.cursor,
            }
            .parse()?;
            state.engine.rejected_page(limit, after).await?
        }
    };
    Ok(Json(RejectedListJson::from(&list)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

impl PageQuery {
    /// The limit (default [`DEFAULT_PAGE_SESSIONS`], 1 to `linkflow::MAX_PAGE_SESSIONS`) and
    /// the cursor, or a 400 naming what is wrong.
    fn parse(self) -> Result<(usize, Option<linkflow::Cursor>), ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE_SESSIONS);
        if !(1..=linkflow::MAX_PAGE_SESSIONS).contains(&limit) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!(
                    "limit: {limit} is not between 1 and {}",
                    linkflow::MAX_PAGE_SESSIONS
                ),
            ));
        }
        let cursor = self
            .cursor
            .map(|text| text.parse::<linkflow::Cursor>())
            .transpose()
            .map_err(|error| ApiError::bad_request("invalid_query", error.to_string()))?;
        Ok((limit, cursor))
    }
}

/// `GET /v1/accounts`: one page of linked accounts, `{accounts, next_cursor}`.
#[utoipa::path(get, path = "/v1/accounts", tag = "read",
    description = "One page of linked accounts.",
    params(PageQuery),
    responses(
        (status = 200, description = "`{accounts, next_cursor}`"),
        ReadRefusals,
    ))]
async fn list_accounts(
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (limit, after) = query.parse()?;
    let page = state.engine.accounts_page(limit, after).await?;
    let accounts: Vec<AccountJson> = page.accounts.iter().map(AccountJson::from).collect();
    Ok(Json(serde_json::json!({
        "accounts": accounts,
        "next_cursor": page.next.map(|cursor| cursor.to_string()),
    })))
}

/// `GET /v1/users/{id}`: the end user's accounts (every provider) and one page of their
/// sessions (`limit`, `cursor` as for `/v1/sessions`).
#[utoipa::path(get, path = "/v1/users/{id}", tag = "read",
    description = "An end user's accounts and one page of their sessions.",
    params(("id" = String, Path, description = "The external user id"), PageQuery),
    responses(
        (status = 200, description = "`{external_user_id, accounts, sessions, next_cursor}`"),
        ReadRefusals,
    ))]
async fn show_user(
    State(state): State<AppState>,
    Path(user): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (limit, after) = query.parse()?;
    let filter = SessionFilter {
        external_user_id: Some(user.clone()),
        ..SessionFilter::default()
    };
    let page = state.engine.sessions_page(filter, limit, after).await?;
    let sessions: Vec<SessionJson> = page
        .sessions
        .iter()
        .map(|view| SessionJson::new(view, state.engine.is_abandoned(&view.state)))
        .collect();
    let accounts: Vec<AccountJson> = state
        .engine
        .user_accounts(&user)
        .await?
        .iter()
        .map(AccountJson::from)
        .collect();
    Ok(Json(serde_json::json!({
        "external_user_id": user,
        "accounts": accounts,
        "sessions": sessions,
        "next_cursor": page.next.map(|cursor| cursor.to_string()),
    })))
}

/// `DELETE /v1/users/{id}`'s query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EraseQuery {
    /// Who asks for the erasure (an operator, a ticket), kept in the tombstone; `http` when
    /// not given. At most 256 bytes.
    requested_by: Option<String>,
}

/// `DELETE /v1/users/{id}`: erases the end user (see `linkflow::Engine::erase_user`). Needs
/// the API token to be configured, and a master key.
#[utoipa::path(delete, path = "/v1/users/{id}", tag = "privacy",
    description = "Erases an end user: destroys the keys of their sessions' and accounts' personal fields and raw payloads (reads show `[erased]`), and records a tombstone. Idempotent.",
    params(("id" = String, Path, description = "The external user id"), EraseQuery),
    responses(
        (status = 200, description = "`{subject, streams, erased, tombstone}`"),
        (status = 403, description = "`token_required`: no API token is configured", body = ErrorBody),
        (status = 409, description = "`erasure_unavailable`: no master key is configured", body = ErrorBody),
        ReadRefusals,
    ))]
async fn erase_user(
    State(state): State<AppState>,
    Path(user): Path<String>,
    Query(query): Query<EraseQuery>,
) -> Result<Json<linkflow::ErasureReport>, ApiError> {
    if state.config.token.is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "token_required",
            "erasure over HTTP needs the API token to be configured (--token or LINKFLOW_TOKEN)",
        ));
    }
    let requested_by = query.requested_by.unwrap_or_else(|| "http".to_owned());
    if requested_by.len() > 256 {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("requested_by: {} bytes; at most 256", requested_by.len()),
        ));
    }
    match state.engine.erase_user(&user, &requested_by).await {
        Ok(report) => Ok(Json(report)),
        Err(linkflow::EngineError::ErasureUnavailable) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "erasure_unavailable",
            linkflow::EngineError::ErasureUnavailable.to_string(),
        )),
        Err(error) => Err(error.into()),
    }
}

/// `GET /v1/merchants`: one page of merchant availability, `{merchants, next_cursor}`.
#[utoipa::path(get, path = "/v1/merchants", tag = "read",
    description = "One page of merchant availability (Knot).",
    params(PageQuery),
    responses(
        (status = 200, description = "`{merchants, next_cursor}`"),
        ReadRefusals,
    ))]
async fn list_merchants(
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (limit, after) = query.parse()?;
    let (merchants, next) = state.engine.merchants_page(limit, after).await?;
    let merchants: Vec<MerchantJson> = merchants.iter().map(MerchantJson::from).collect();
    Ok(Json(serde_json::json!({
        "merchants": merchants,
        "next_cursor": next.map(|cursor| cursor.to_string()),
    })))
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct FunnelParams {
    pub(crate) since: Option<String>,
    pub(crate) until: Option<String>,
    pub(crate) provider: Option<String>,
    pub(crate) institution: Option<String>,
    pub(crate) link_type: Option<String>,
    pub(crate) by: Option<String>,
    pub(crate) format: Option<String>,
}

fn time_param(
    name: &str,
    value: Option<String>,
) -> Result<Option<chrono::DateTime<Utc>>, ApiError> {
    value
        .map(|text| {
            chrono::DateTime::parse_from_rfc3339(&text)
                .map(|time| time.with_timezone(&Utc))
                .map_err(|error| {
                    ApiError::bad_request(
                        "invalid_query",
                        format!("{name}: `{text}` is not an RFC 3339 time: {error}"),
                    )
                })
        })
        .transpose()
}

/// The funnel query of `GET /v1/funnel`'s parameters (the console's funnel page reads the same
/// ones), judged at `now`.
pub(crate) fn funnel_query(
    engine: &Engine,
    params: FunnelParams,
    now: chrono::DateTime<Utc>,
) -> Result<linkflow_core::funnel::FunnelQuery, ApiError> {
    use linkflow_core::funnel::{FunnelQuery, GroupBy};
    let mut query = FunnelQuery::at(now);
    query.inactivity_timeout = engine.inactivity_timeout();
    query.since = time_param("since", params.since)?;
    query.until = time_param("until", params.until)?;
    query.provider = params
        .provider
        .map(|text| text.parse::<Provider>())
        .transpose()
        .map_err(|error| ApiError::bad_request("invalid_query", error.to_string()))?;
    query.institution = params.institution;
    query.link_type = match params.link_type.as_deref() {
        None => None,
        Some("link") => Some(linkflow_core::LinkType::Link),
        Some("relink") => Some(linkflow_core::LinkType::Relink),
        Some("failover_link") => Some(linkflow_core::LinkType::FailoverLink),
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("link_type: `{other}` is not link, relink or failover_link"),
            ))
        }
    };
    query.group_by = match params.by.as_deref() {
        None => GroupBy::Nothing,
        Some("provider") => GroupBy::Provider,
        Some("institution") => GroupBy::Institution,
        Some("link_type") => GroupBy::LinkType,
        Some("screen") => GroupBy::Screen,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("by: `{other}` is not provider, institution, link_type or screen"),
            ))
        }
    };
    Ok(query)
}

/// `GET /v1/funnel`: the filters of `linkflow funnel`; `?format=svg` returns the chart of the
/// first group.
#[utoipa::path(get, path = "/v1/funnel", tag = "read",
    description = "The funnel: conversion and drop-off by step, with filters and grouping; `format=svg` for the chart.",
    params(FunnelParams),
    responses(
        (status = 200, description = "The funnels (JSON), or the first one's chart (`image/svg+xml`)"),
        ReadRefusals,
    ))]
async fn funnel(
    State(state): State<AppState>,
    Query(params): Query<FunnelParams>,
) -> Result<Response, ApiError> {
    let query = funnel_query(&state.engine, params.clone(), Utc::now())?;
    let funnels = state.engine.funnel(query.clone()).await?;
    match params.format.as_deref() {
        None | Some("json") => Ok(Json(funnels).into_response()),
        Some("svg") => {
            let svg = funnels
                .first()
                .map(|funnel| linkflow::chart::funnel_svg(funnel, &query))
                .unwrap_or_default();
            Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
        }
        Some(other) => Err(ApiError::bad_request(
            "invalid_query",
            format!("format: `{other}` is not json or svg"),
        )),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    description = "Prometheus text metrics.",
    responses(
        (status = 200, description = "Prometheus text", content_type = "text/plain"),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 503, description = "`engine_unavailable`", body = ErrorBody),
    ))]
async fn render_metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = state.shared.metrics.render(&state.engine).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

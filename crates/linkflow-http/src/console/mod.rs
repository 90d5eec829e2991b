//! The web console at `/ui`: server-rendered pages over the engine's reads, for the people who
//! ask "why did this user's link fail?" and "where do users drop?".
//!
//! Pages: `/ui` (find: search by session id, user id or institution, and the sessions with
//! filters), `/ui/sessions/{id}` (the state card, the path on the state diagram, the timeline
//! in event-time order), `/ui/users/{id}` (a user's sessions and accounts with their
//! histories), `/ui/funnel?...` (the funnel with the API's filters and grouping, and a second
//! window side by side), `/ui/attention` (accounts needing their user, parked events,
//! quarantined payloads with a confirmed redrive). Everything is rendered here (`render`),
//! the two assets are compiled into the binary, and nothing is fetched from elsewhere: the
//! console runs air-gapped.
//!
//! **Sign-in.** With an API token configured, `/ui/login` exchanges it for a console login: a
//! random id in a cookie (`HttpOnly`, `SameSite=Strict`, `Path=/ui`, `Secure` behind an HTTPS
//! proxy that says so) naming an entry of a bounded table ([`MAX_CONSOLE_LOGINS`], each for
//! [`CONSOLE_LOGIN_TTL`]). Without a token the console is as open as the API, and a login is
//! made on the first visit (it carries the CSRF token). **Every action** (a redrive, a logout)
//! is a POST carrying the login's CSRF token, checked in constant time, and its `Origin`, when
//! sent, must be this host.

mod diagram;
mod render;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use chrono::{DateTime, Utc};
use linkflow::views::{AccountJson, HistoryJson, RejectedListJson, SessionJson};
use linkflow::{Engine, QuarantineFilter, QuarantineRedrive, SessionFilter};
use linkflow_core::funnel::Funnel;
use linkflow_core::{Phase, Provider, SessionId};
use serde::Deserialize;
use serde_json::Value;

use crate::{AppState, FunnelParams};

pub use render::{CONSOLE_CSS, CONSOLE_JS};

/// Console logins held at once; a new one past it replaces the oldest.
pub const MAX_CONSOLE_LOGINS: usize = 1024;
/// How long a console login lasts.
pub const CONSOLE_LOGIN_TTL: Duration = Duration::from_secs(12 * 60 * 60);
/// Sessions per page of the find and user pages.
pub const CONSOLE_PAGE_SESSIONS: usize = 50;
/// Timeline entries per page of the session page.
pub const CONSOLE_HISTORY_PAGE: usize = 200;
/// Events of an account's history shown on the user page.
pub const CONSOLE_ACCOUNT_HISTORY: usize = 50;
/// Accounts one attention page examines for those needing their user.
pub const ATTENTION_SCAN_ACCOUNTS: usize = 1000;
/// Parked events and quarantined payloads per attention page.
pub const ATTENTION_PAGE: usize = 50;
/// Funnels shown side by side (the largest groups first).
pub const MAX_FUNNEL_COLUMNS: usize = 8;
/// The longest search text the find page takes.
pub const MAX_SEARCH_BYTES: usize = 512;

/// The cookie naming a console login.
const COOKIE: &str = "linkflow_console";

/// One console login: what its cookie names.
#[derive(Debug, Clone)]
pub(crate) struct Login {
    id: String,
    /// The token every action must carry.
    csrf: String,
}

#[derive(Debug)]
struct LoginEntry {
    csrf: String,
    created: Instant,
}

/// The console logins of one config, at most [`MAX_CONSOLE_LOGINS`].
#[derive(Debug, Default)]
pub(crate) struct Logins {
    entries: Mutex<HashMap<String, LoginEntry>>,
}

/// 244 random bits (two version-4 UUIDs, from the operating system's generator) as hex.
fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn same(a: &str, b: &str) -> bool {
    subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()).into()
}

impl Logins {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LoginEntry>> {
        // A panic while holding the lock leaves a map that is still whole.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn create(&self) -> Login {
        let login = Login {
            id: random_token(),
            csrf: random_token(),
        };
        let mut entries = self.lock();
        entries.retain(|_, entry| entry.created.elapsed() < CONSOLE_LOGIN_TTL);
        if entries.len() >= MAX_CONSOLE_LOGINS {
            if let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, entry)| entry.created)
                .map(|(id, _)| id.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(
            login.id.clone(),
            LoginEntry {
                csrf: login.csrf.clone(),
                created: Instant::now(),
            },
        );
        login
    }

    fn find(&self, id: &str) -> Option<Login> {
        let entries = self.lock();
        // The map is keyed by the id, so its lookup is not constant-time; the ids are 244
        // random bits, which a timing difference in a hash lookup does not reveal.
        let entry = entries.get(id)?;
        (entry.created.elapsed() < CONSOLE_LOGIN_TTL).then(|| Login {
            id: id.to_owned(),
            csrf: entry.csrf.clone(),
        })
    }

    fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Logins held now (for the tests of the bound).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The console's routes: `/ui` and everything under it. [`crate::router`] serves them; an app
/// of its own merges this at its root (the pages link to `/ui/...`).
pub(crate) fn routes(state: AppState) -> Router {
    let pages = Router::new()
        .route("/ui", get(find_page))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/search", get(search))
        .route("/ui/sessions/{id}", get(session_page))
        .route("/ui/users/{id}", get(user_page))
        .route("/ui/funnel", get(funnel_page))
        .route("/ui/attention", get(attention_page))
        .route("/ui/quarantine/redrive", post(redrive))
        .route("/ui/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_login));
    Router::new()
        .merge(pages)
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/assets/console.css", get(css))
        .route("/ui/assets/console.js", get(js))
        .with_state(state)
        .layer(middleware::from_fn(check_origin))
        .layer(middleware::from_fn(security_headers))
}

/// What a console page answers when it cannot show what was asked: an HTML page with the
/// status and what was wrong.
#[derive(Debug)]
pub(crate) struct PageError {
    status: StatusCode,
    detail: String,
}

impl PageError {
    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        PageError {
            status,
            detail: detail.into(),
        }
    }

    fn bad_request(detail: impl Into<String>) -> Self {
        PageError::new(StatusCode::BAD_REQUEST, detail)
    }

    fn not_found(detail: impl Into<String>) -> Self {
        PageError::new(StatusCode::NOT_FOUND, detail)
    }
}

impl From<linkflow::EngineError> for PageError {
    fn from(error: linkflow::EngineError) -> Self {
        let status = match error {
            linkflow::EngineError::WrongCursor { .. } => StatusCode::BAD_REQUEST,
            linkflow::EngineError::Compacted { .. } => StatusCode::GONE,
            _ => {
                tracing::error!(%error, "engine error in the console");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        PageError::new(status, error.to_string())
    }
}

impl From<crate::ApiError> for PageError {
    fn from(error: crate::ApiError) -> Self {
        PageError::new(error.status(), error.detail().to_owned())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        (self.status, render::error_page(self.status, &self.detail)).into_response()
    }
}

type PageResult = Result<Response, PageError>;

/// Every console response: nothing may load from elsewhere (the console runs air-gapped and
/// a page that tried would show it), no framing, no sniffing, no caching of pages.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// A POST whose `Origin` names another host is refused (a cross-site form): with
/// `SameSite=Strict` cookies and the CSRF token, the third of three checks.
async fn check_origin(request: Request, next: Next) -> Response {
    if request.method() == Method::POST {
        let headers = request.headers();
        if let Some(origin) = headers.get(header::ORIGIN) {
            // The host the browser asked for: a proxy in front may rewrite `Host` and say the
            // original in `X-Forwarded-Host`.
            let hosts: Vec<&str> = [header::HOST.as_str(), "x-forwarded-host"]
                .into_iter()
                .filter_map(|name| headers.get(name)?.to_str().ok())
                .collect();
            let origin_host = origin
                .to_str()
                .ok()
                .and_then(|origin| origin.split_once("://").map(|(_, rest)| rest));
            if !origin_host.is_some_and(|origin| hosts.contains(&origin)) {
                return PageError::new(
                    StatusCode::FORBIDDEN,
                    "this form was sent from another site's page",
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

fn login_cookie(id: String, headers: &HeaderMap) -> Cookie<'static> {
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"));
    Cookie::build((COOKIE, id))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/ui")
        .secure(secure)
        .build()
}

/// The console's pages need a login: its cookie's, or (no token configured) a new one. A GET
/// without one is sent to the login form, which brings it back; any other request is refused.
async fn require_login(
    State(state): State<AppState>,
    jar: CookieJar,
    mut request: Request,
    next: Next,
) -> Response {
    let logins = &state.shared.console_logins;
    if let Some(login) = jar
        .get(COOKIE)
        .and_then(|cookie| logins.find(cookie.value()))
    {
        request.extensions_mut().insert(login);
        return next.run(request).await;
    }
    if state.config.token.is_none() {
        let login = logins.create();
        let cookie = login_cookie(login.id.clone(), request.headers());
        request.extensions_mut().insert(login);
        let response = next.run(request).await;
        return (jar.add(cookie), response).into_response();
    }
    if request.method() == Method::GET {
        let target = request
            .uri()
            .path_and_query()
            .map_or("/ui", |target| target.as_str());
        let query = serde_urlencoded::to_string([("next", target)]).unwrap_or_default();
        return Redirect::to(&format!("/ui/login?{query}")).into_response();
    }
    PageError::new(
        StatusCode::FORBIDDEN,
        "you are not signed in (or your sign-in expired): sign in again",
    )
    .into_response()
}

/// A console path to go back to after signing in; anything else is `/ui`.
fn local_target(next: Option<&str>) -> String {
    match next {
        Some(next) if next.starts_with("/ui") && !next.starts_with("//") => next.to_owned(),
        _ => "/ui".to_owned(),
    }
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_page(State(state): State<AppState>, Query(query): Query<LoginQuery>) -> Response {
    let next = local_target(query.next.as_deref());
    if state.config.token.is_none() {
        return Redirect::to(&next).into_response();
    }
    render::login_page(&next, None).into_response()
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: CookieJar,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = local_target(form.next.as_deref());
    let Some(token) = &state.config.token else {
        return Redirect::to(&next).into_response();
    };
    if !same(form.token.trim(), token) {
        return (
            StatusCode::UNAUTHORIZED,
            render::login_page(
                &next,
                Some("That token is not the API token of this server."),
            ),
        )
            .into_response();
    }
    let login = state.shared.console_logins.create();
    (
        jar.add(login_cookie(login.id, &headers)),
        Redirect::to(&next),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct ActionForm {
    csrf: String,
}

fn check_csrf(login: &Login, presented: &str) -> Result<(), PageError> {
    if same(presented, &login.csrf) {
        Ok(())
    } else {
        Err(PageError::new(
            StatusCode::FORBIDDEN,
            "this form's CSRF token is not your sign-in's: reload the page and send it again",
        ))
    }
}

async fn logout(
    State(state): State<AppState>,
    Extension(login): Extension<Login>,
    jar: CookieJar,
    Form(form): Form<ActionForm>,
) -> PageResult {
    check_csrf(&login, &form.csrf)?;
    state.shared.console_logins.remove(&login.id);
    let removal = Cookie::build((COOKIE, "")).path("/ui").build();
    let target = if state.config.token.is_some() {
        "/ui/login"
    } else {
        "/ui"
    };
    Ok((jar.remove(removal), Redirect::to(target)).into_response())
}

/// A JSON view as the API shows it: sealed fields opened (or `[erased]`).
fn opened(engine: &Engine, view: &impl serde::Serialize) -> Value {
    let mut value = serde_json::to_value(view).unwrap_or(Value::Null);
    engine.show_json(&mut value);
    value
}

fn parse_cursor(cursor: Option<&str>) -> Result<Option<linkflow::Cursor>, PageError> {
    cursor
        .filter(|text| !text.is_empty())
        .map(|text| text.parse::<linkflow::Cursor>())
        .transpose()
        .map_err(|error| PageError::bad_request(format!("cursor: {error}")))
}

fn session_id(text: &str) -> Result<SessionId, PageError> {
    SessionId::new(text).map_err(|error| PageError::bad_request(error.to_string()))
}

/// The find page's filters, as its form sends them (empty fields are no filter).
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct FindQuery {
    #[serde(default)]
    provider: String,
    #[serde(default)]
    phase: String,
    #[serde(default)]
    institution: String,
    /// `yes`, `no`, or empty.
    #[serde(default)]
    abandoned: String,
    /// `1h`, `24h`, `7d`, `30d`, or empty: sessions whose first event is that recent.
    #[serde(default)]
    window: String,
    #[serde(default)]
    cursor: String,
    /// What the search found nothing for (set by `/ui/search`).
    #[serde(default)]
    missing: String,
}

/// The windows the find page offers, and their lengths.
pub(crate) const WINDOWS: [(&str, &str, i64); 4] = [
    ("1h", "last hour", 3_600),
    ("24h", "last 24 hours", 86_400),
    ("7d", "last 7 days", 7 * 86_400),
    ("30d", "last 30 days", 30 * 86_400),
];

impl FindQuery {
    fn filter(&self, now: DateTime<Utc>) -> Result<SessionFilter, PageError> {
        let nonempty = |text: &str| (!text.trim().is_empty()).then(|| text.trim().to_owned());
        let provider = nonempty(&self.provider)
            .map(|text| text.parse::<Provider>())
            .transpose()
            .map_err(|error| PageError::bad_request(error.to_string()))?;
        let phase = nonempty(&self.phase)
            .map(|text| text.parse::<Phase>())
            .transpose()
            .map_err(|error| PageError::bad_request(error.to_string()))?;
        let abandoned = match self.abandoned.as_str() {
            "" => None,
            "yes" => Some(true),
            "no" => Some(false),
            other => {
                return Err(PageError::bad_request(format!(
                    "abandoned: `{other}` is not yes or no"
                )))
            }
        };
        let first_event_from = match self.window.as_str() {
            "" => None,
            window => {
                let seconds = WINDOWS
                    .iter()
                    .find(|(name, _, _)| *name == window)
                    .map(|(_, _, seconds)| *seconds)
                    .ok_or_else(|| {
                        PageError::bad_request(format!(
                            "window: `{window}` is not 1h, 24h, 7d or 30d"
                        ))
                    })?;
                Some(now - chrono::Duration::seconds(seconds))
            }
        };
        Ok(SessionFilter {
            phase,
            provider,
            institution: nonempty(&self.institution),
            abandoned,
            first_event_from,
            ..SessionFilter::default()
        })
    }

    /// The query string of these filters on another page (`cursor`), for the next page's link.
    fn with_cursor(&self, cursor: &str) -> String {
        serde_urlencoded::to_string([
            ("provider", self.provider.as_str()),
            ("phase", self.phase.as_str()),
            ("institution", self.institution.as_str()),
            ("abandoned", self.abandoned.as_str()),
            ("window", self.window.as_str()),
            ("cursor", cursor),
        ])
        .unwrap_or_default()
    }
}

/// A page of sessions as the API lists them.
async fn sessions_json(
    engine: &Engine,
    filter: SessionFilter,
    limit: usize,
    cursor: Option<linkflow::Cursor>,
) -> Result<(Vec<Value>, Option<String>), PageError> {
    let page = engine.sessions_page(filter, limit, cursor).await?;
    Ok(listed(engine, page))
}

/// A page's sessions as the API shows them, and its next cursor.
fn listed(engine: &Engine, page: linkflow::SessionPage) -> (Vec<Value>, Option<String>) {
    let sessions = page
        .sessions
        .iter()
        .map(|view| {
            opened(
                engine,
                &SessionJson::new(view, engine.is_abandoned(&view.state)),
            )
        })
        .collect();
    (sessions, page.next.map(|cursor| cursor.to_string()))
}

async fn find_page(
    State(state): State<AppState>,
    Extension(login): Extension<Login>,
    Query(query): Query<FindQuery>,
) -> PageResult {
    let filter = query.filter(Utc::now())?;
    let cursor = parse_cursor(Some(&query.cursor))?;
    // An institution's sessions come from its index (in id order: a rare institution's
    // would be far apart among the newest); every other list is the newest first.
    let (sessions, next) = if filter.institution.is_some() {
        sessions_json(&state.engine, filter, CONSOLE_PAGE_SESSIONS, cursor).await?
    } else {
        let page = state
            .engine
            .recent_sessions_page(filter, CONSOLE_PAGE_SESSIONS, cursor)
            .await?;
        listed(&state.engine, page)
    };
    let next = next.map(|cursor| format!("/ui?{}", query.with_cursor(&cursor)));
    Ok(render::find_page(
        &render::Chrome::new(&state, &login),
        &query,
        &sessions,
        next.as_deref(),
    )
    .into_response())
}

#[derive(Debug, Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
}

/// `/ui/search?q=`: a session id opens the session, a user id the user, an institution id the
/// sessions at it; nothing found says so on the find page.
async fn search(State(state): State<AppState>, Query(query): Query<SearchQuery>) -> PageResult {
    let q = query.q.trim();
    if q.is_empty() {
        return Ok(Redirect::to("/ui").into_response());
    }
    if q.len() > MAX_SEARCH_BYTES {
        return Err(PageError::bad_request(format!(
            "the search text is {} bytes; at most {MAX_SEARCH_BYTES}",
            q.len()
        )));
    }
    if let Ok(id) = SessionId::new(q) {
        if state.engine.session(&id).await?.is_some() {
            return Ok(
                Redirect::to(&format!("/ui/sessions/{}", render::segment(q))).into_response(),
            );
        }
    }
    let by_user = SessionFilter {
        external_user_id: Some(q.to_owned()),
        ..SessionFilter::default()
    };
    let has_sessions = !state
        .engine
        .sessions_page(by_user, 1, None)
        .await?
        .sessions
        .is_empty();
    if has_sessions || !state.engine.user_accounts(q).await?.is_empty() {
        return Ok(Redirect::to(&format!("/ui/users/{}", render::segment(q))).into_response());
    }
    let at_institution = SessionFilter {
        institution: Some(q.to_owned()),
        ..SessionFilter::default()
    };
    if !state
        .engine
        .sessions_page(at_institution, 1, None)
        .await?
        .sessions
        .is_empty()
    {
        let query = serde_urlencoded::to_string([("institution", q)]).unwrap_or_default();
        return Ok(Redirect::to(&format!("/ui?{query}")).into_response());
    }
    let query = serde_urlencoded::to_string([("missing", q)]).unwrap_or_default();
    Ok(Redirect::to(&format!("/ui?{query}")).into_response())
}

#[derive(Debug, Default, Deserialize)]
struct CursorQuery {
    #[serde(default)]
    cursor: String,
}

/// What the session page shows.
pub(crate) struct SessionPage {
    pub(crate) session: Value,
    pub(crate) history: Vec<Value>,
    /// The phase moves of the accepted events on this page, in the fold's order.
    pub(crate) path: Vec<(Phase, Phase)>,
    pub(crate) next: Option<String>,
    pub(crate) first_page: bool,
}

async fn session_page(
    State(state): State<AppState>,
    Extension(login): Extension<Login>,
    Path(id): Path<String>,
    Query(query): Query<CursorQuery>,
) -> PageResult {
    let session_id = session_id(&id)?;
    let engine = &state.engine;
    let view = engine
        .session(&session_id)
        .await?
        .ok_or_else(|| PageError::not_found(format!("no session `{id}`")))?;
    let cursor = parse_cursor(Some(&query.cursor))?;
    let first_page = cursor.is_none();
    let history = engine
        .history_page(&session_id, CONSOLE_HISTORY_PAGE, cursor)
        .await?;
    let (entries, next) = match history {
        Some(page) => (page.entries, page.next.map(|cursor| cursor.to_string())),
        None => (Vec::new(), None),
    };
    let path = entries
        .iter()
        .filter(|entry| entry.accepted)
        .filter_map(|entry| Some((entry.phase_before?, entry.phase_after?)))
        .collect();
    let page = SessionPage {
        session: opened(
            engine,
            &SessionJson::new(&view, engine.is_abandoned(&view.state)),
        ),
        history: entries
            .iter()
            .map(|entry| opened(engine, &HistoryJson::from(entry)))
            .collect(),
        path,
        next,
        first_page,
    };
    Ok(render::session_page(&render::Chrome::new(&state, &login), &id, &page).into_response())
}

/// One account on the user page, with the newest part of its history.
pub(crate) struct AccountCard {
    pub(crate) account: Value,
    pub(crate) history: Vec<Value>,
    pub(crate) more_history: bool,
}

async fn user_page(
    State(state): State<AppState>,
    Extension(login): Extension<Login>,
    Path(user): Path<String>,
    Query(query): Query<CursorQuery>,
) -> PageResult {
    if user.len() > MAX_SEARCH_BYTES {
        return Err(PageError::bad_request(format!(
            "the user id is {} bytes; at most {MAX_SEARCH_BYTES}",
            user.len()
        )));
    }
    let engine = &state.engine;
    let cursor = parse_cursor(Some(&query.cursor))?;
    let filter = SessionFilter {
        external_user_id: Some(user.clone()),
        ..SessionFilter::default()
    };
    let (sessions, next) = sessions_json(engine, filter, CONSOLE_PAGE_SESSIONS, cursor).await?;
    let mut views = engine.user_accounts(&user).await?;
    // Plaid's items name no user: the items of this page's sessions.
    let mut items: Vec<&str> = sessions
        .iter()
        .filter_map(|session| session.get("item_id").and_then(Value::as_str))
        .collect();
    items.sort_unstable();
    items.dedup();
    for item in items {
        if let Some(view) = engine
            .account(&linkflow_core::AccountKey::plaid_item(item))
            .await?
        {
            views.push(view);
        }
    }
    let mut accounts = Vec::new();
    for account in views {
        let (history, more_history) = match account.key.stream_id() {
            Ok(stream) => match engine
                .history_page(&stream, CONSOLE_ACCOUNT_HISTORY, None)
                .await?
            {
                Some(page) => (
                    page.entries
                        .iter()
                        .map(|entry| opened(engine, &HistoryJson::from(entry)))
                        .collect(),
                    page.next.is_some(),
                ),
                None => (Vec::new(), false),
            },
            Err(_) => (Vec::new(), false),
        };
        accounts.push(AccountCard {
            account: opened(engine, &AccountJson::from(&account)),
            history,
            more_history,
        });
    }
    let next = next.map(|cursor| {
        format!(
            "/ui/users/{}?{}",
            render::segment(&user),
            serde_urlencoded::to_string([("cursor", cursor.as_str())]).unwrap_or_default()
        )
    });
    Ok(render::user_page(
        &render::Chrome::new(&state, &login),
        &user,
        &accounts,
        &sessions,
        next.as_deref(),
    )
    .into_response())
}

/// The funnel page's query: the API's filters and grouping (`since`, `until`, `provider`,
/// `institution`, `link_type`, `by`), and a second window to compare (`compare_since`,
/// `compare_until`).
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct FunnelPageQuery {
    #[serde(default)]
    pub(crate) since: String,
    #[serde(default)]
    pub(crate) until: String,
    #[serde(default)]
    pub(crate) provider: String,
    #[serde(default)]
    pub(crate) institution: String,
    #[serde(default)]
    pub(crate) link_type: String,
    #[serde(default)]
    pub(crate) by: String,
    #[serde(default)]
    pub(crate) compare_since: String,
    #[serde(default)]
    pub(crate) compare_until: String,
}

fn nonempty(text: &str) -> Option<String> {
    (!text.trim().is_empty()).then(|| text.trim().to_owned())
}

impl FunnelPageQuery {
    fn params(&self, since: &str, until: &str) -> FunnelParams {
        FunnelParams {
            since: nonempty(since),
            until: nonempty(until),
            provider: nonempty(&self.provider),
            institution: nonempty(&self.institution),
            link_type: nonempty(&self.link_type),
            by: nonempty(&self.by),
            format: None,
        }
    }

    /// The same funnel's JSON in the API.
    pub(crate) fn api_query(&self) -> String {
        let params = self.params(&self.since, &self.until);
        let pairs: Vec<(&str, &str)> = [
            ("since", &params.since),
            ("until", &params.until),
            ("provider", &params.provider),
            ("institution", &params.institution),
            ("link_type", &params.link_type),
            ("by", &params.by),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_deref().map(|value| (name, value)))
        .collect();
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }

    pub(crate) fn comparing(&self) -> bool {
        nonempty(&self.compare_since).is_some() || nonempty(&self.compare_until).is_some()
    }
}

/// One column of the funnel page: its label and its funnel.
pub(crate) struct FunnelColumn {
    pub(crate) label: String,
    pub(crate) funnel: Funnel,
}

async fn funnel_page(
    State(state): State<AppState>,
    Extension(login): Extension<Login>,
    Query(query): Query<FunnelPageQuery>,
) -> PageResult {
    let now = Utc::now();
    let first = crate::funnel_query(&state.engine, query.params(&query.since, &query.until), now)?;
    let mut windows = vec![("", first)];
    if query.comparing() {
        let second = crate::funnel_query(
            &state.engine,
            query.params(&query.compare_since, &query.compare_until),
            now,
        )?;
        windows[0].0 = "A";
        windows.push(("B", second));
    }
    let mut columns = Vec::new();
    let mut omitted = 0;
    let mut chart = String::new();
    for (label, funnel_query) in windows {
        let mut funnels = state.engine.funnel(funnel_query.clone()).await?;
        if chart.is_empty() {
            if let Some(funnel) = funnels.first() {
                chart = linkflow::chart::funnel_svg(funnel, &funnel_query);
            }
        }
        // The largest groups first (the engine lists them by key).
        funnels.sort_by(|a, b| b.sessions.cmp(&a.sessions).then(a.group.cmp(&b.group)));
        let room = MAX_FUNNEL_COLUMNS / if query.comparing() { 2 } else { 1 };
        omitted += funnels.len().saturating_sub(room);
        for funnel in funnels.into_iter().take(room) {
            let label = match (label, funnel.group.as_str()) {
                ("", group) => group.to_owned(),
                (window, "all") => format!("window {window}"),
                (window, group) => format!("{window}: {group}"),
            };
            columns.push(FunnelColumn { label, funnel });
        }
    }
    Ok(render::funnel_page(
        &render::Chrome::new(&state, &login),
        &query,
        &columns,
        omitted,
        &chart,
    )
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
struct AttentionQuery {
    #[serde(default)]
    accounts_cursor: String,
    #[serde(default)]
    parked_cursor: String,
    #[serde(default)]
    quarantine_cursor: String,
}

/// The account states that need their user.
pub(crate) const NEEDS_USER: [&str; 3] = ["login_required", "pending_expiration", "revoked"];

/// What the attention page shows.
pub(crate) struct AttentionPage {
    pub(crate) accounts: Vec<Value>,
    pub(crate) accounts_scanned: usize,
    pub(crate) accounts_next: Option<String>,
    pub(crate) parked: Value,
    pub(crate) parked_next: Option<String>,
    pub(crate) quarantine: Value,
    pub(crate) quarantine_next: Option<String>,
}

async fn attention_page(
    State(state): State<AppState>,
    Extension(login): Extension<Login>,
    Query(query): Query<AttentionQuery>,
) -> PageResult {
    let engine = &state.engine;
    let accounts = engine
        .accounts_page(
            ATTENTION_SCAN_ACCOUNTS,
            parse_cursor(Some(&query.accounts_cursor))?,
        )
        .await?;
    let accounts_scanned = accounts.accounts.len();
    let needing: Vec<Value> = accounts
        .accounts
        .iter()
        .map(AccountJson::from)
        .filter(|account| NEEDS_USER.contains(&account.state))
        .map(|account| opened(engine, &account))
        .collect();
    let parked = engine
        .rejected_page(ATTENTION_PAGE, parse_cursor(Some(&query.parked_cursor))?)
        .await?;
    let quarantine = engine
        .quarantine(
            QuarantineFilter {
                pending_only: true,
                provider: None,
            },
            ATTENTION_PAGE,
            parse_cursor(Some(&query.quarantine_cursor))?,
        )
        .await?;
    let link = |name: &str, cursor: Option<String>| {
        cursor.map(|cursor| {
            let mut pairs = vec![
                ("accounts_cursor", query.accounts_cursor.clone()),
                ("parked_cursor", query.parked_cursor.clone()),
                ("quarantine_cursor", query.quarantine_cursor.clone()),
            ];
            for pair in &mut pairs {
                if pair.0 == name {
                    pair.1 = cursor.clone();
                }
            }
            format!(
                "/ui/attention?{}",
                serde_urlencoded::to_string(pairs).unwrap_or_default()
            )
        })
    };
    let page = AttentionPage {
        accounts: needing,
        accounts_scanned,
        accounts_next: link(
            "accounts_cursor",
            accounts.next.map(|cursor| cursor.to_string()),
        ),
        parked_next: link(
            "parked_cursor",
            parked.next.as_ref().map(ToString::to_string),
        ),
        parked: opened(engine, &RejectedListJson::from(&parked)),
        quarantine_next: link("quarantine_cursor", quarantine.next_cursor.clone()),
        quarantine: opened(engine, &quarantine),
    };
    Ok(render::attention_page(&render::Chrome::new(&state, &login), &page).into_response())
}

#[derive(Debug, Deserialize)]
struct RedriveForm {
    csrf: String,
    entry: String,
    #[serde(default)]
    session_id: String,
    #[serde(default)]
    external_user_id: String,
    /// `yes` on the confirmation page's button; without it the page asks.
    #[serde(default)]
    confirm: String,
}

/// A redrive of one quarantined payload: the first POST shows what will be done and asks; the
/// confirmation's POST does it and shows what it did.
async fn redrive(
    State(state): State<AppState>,
    Extension(login): Extension<Login>,
    Form(form): Form<RedriveForm>,
) -> PageResult {
    check_csrf(&login, &form.csrf)?;
    let entry = SessionId::new(form.entry.trim())
        .map_err(|error| PageError::bad_request(format!("entry: {error}")))?;
    let session = nonempty(&form.session_id)
        .map(|text| {
            SessionId::new(text)
                .map_err(|error| PageError::bad_request(format!("session id: {error}")))
        })
        .transpose()?;
    let user = nonempty(&form.external_user_id);
    let chrome = render::Chrome::new(&state, &login);
    if form.confirm != "yes" {
        return Ok(
            render::redrive_confirm(&chrome, &entry, session.as_ref(), user.as_deref())
                .into_response(),
        );
    }
    let request = QuarantineRedrive {
        entry: Some(entry.clone()),
        session_id: session,
        external_user_id: user,
    };
    match state.engine.redrive_quarantine(request).await {
        Ok(report) => {
            Ok(render::redrive_done(&chrome, &opened(&state.engine, &report)).into_response())
        }
        Err(linkflow::EngineError::NotQuarantined { entry }) => Err(PageError::not_found(format!(
            "`{entry}` is not a quarantine entry"
        ))),
        Err(error) => Err(error.into()),
    }
}

/// An asset: its body, with an `ETag` of its contents so a reload revalidates it cheaply.
fn asset(headers: &HeaderMap, content_type: &'static str, body: &'static str) -> Response {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    let etag = format!("\"{:016x}\"", hasher.finish());
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        == Some(etag.as_str())
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CACHE_CONTROL, "no-cache".to_owned()),
            (header::ETAG, etag),
        ],
        body,
    )
        .into_response()
}

async fn css(headers: HeaderMap) -> Response {
    asset(&headers, "text/css; charset=utf-8", CONSOLE_CSS)
}

async fn js(headers: HeaderMap) -> Response {
    asset(&headers, "text/javascript; charset=utf-8", CONSOLE_JS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_table_holds_at_most_its_bound_and_drops_the_oldest() {
        let logins = Logins::default();
        let first = logins.create();
        for _ in 0..MAX_CONSOLE_LOGINS {
            logins.create();
        }
        assert_eq!(logins.len(), MAX_CONSOLE_LOGINS);
        assert!(logins.find(&first.id).is_none(), "the oldest login went");
        let last = logins.create();
        assert_eq!(
            logins.find(&last.id).map(|login| login.csrf),
            Some(last.csrf)
        );
    }

    #[test]
    fn a_removed_login_is_gone() {
        let logins = Logins::default();
        let login = logins.create();
        assert!(logins.find(&login.id).is_some());
        logins.remove(&login.id);
        assert!(logins.find(&login.id).is_none());
    }

    #[test]
    fn only_console_paths_are_targets_after_sign_in() {
        assert_eq!(local_target(Some("/ui/users/u1")), "/ui/users/u1");
        assert_eq!(local_target(Some("https://evil.example/ui")), "/ui");
        assert_eq!(local_target(Some("//evil.example/ui")), "/ui");
        assert_eq!(local_target(Some("/v1/sessions")), "/ui");
        assert_eq!(local_target(None), "/ui");
    }

    #[test]
    fn the_find_filters_refuse_what_they_do_not_know() {
        let query = FindQuery {
            window: "2w".to_owned(),
            ..FindQuery::default()
        };
        let error = query.filter(Utc::now()).unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert!(error.detail.contains("2w"), "{}", error.detail);
        let query = FindQuery {
            phase: "nowhere".to_owned(),
            ..FindQuery::default()
        };
        assert!(query.filter(Utc::now()).is_err());
    }
}

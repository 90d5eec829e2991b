//! The console's HTML, written with `maud` (every value escaped unless marked): the layout and
//! one function per page. Pages read the same JSON views the API answers with, opened as the
//! API opens them, so a page and the API's JSON cannot disagree.

use axum::http::StatusCode;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;

use super::{
    AccountCard, AttentionPage, FindQuery, FunnelColumn, FunnelPageQuery, Login, SessionPage,
    NEEDS_USER, WINDOWS,
};
use crate::AppState;
use linkflow_core::{Phase, Provider, SessionId};

/// The console's stylesheet, compiled into the binary.
pub const CONSOLE_CSS: &str = include_str!("console.css");
/// The console's script (keyboard shortcuts, local times), compiled into the binary.
pub const CONSOLE_JS: &str = include_str!("console.js");

/// What every page's frame needs: the CSRF token for its forms, and whether signing out means
/// anything (a token is configured).
pub(crate) struct Chrome {
    csrf: String,
    signed_in: bool,
}

impl Chrome {
    pub(crate) fn new(state: &AppState, login: &Login) -> Self {
        Chrome {
            csrf: login.csrf.clone(),
            signed_in: state.config.token.is_some(),
        }
    }
}

/// What a path segment or query value keeps as it is: RFC 3986's unreserved characters.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A path segment (or a query value), percent-encoded.
pub(crate) fn segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, UNRESERVED).to_string()
}

fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// A stored time as the console shows it (UTC, to the second); the script adds the reader's
/// local time as a tooltip.
fn when(value: Option<&Value>) -> Markup {
    match value.and_then(Value::as_str) {
        Some(time) => {
            let shown = chrono::DateTime::parse_from_rfc3339(time).map_or_else(
                |_| time.to_owned(),
                |parsed| {
                    parsed
                        .with_timezone(&chrono::Utc)
                        .format("%Y-%m-%d %H:%M:%S UTC")
                        .to_string()
                },
            );
            html! { time datetime=(time) { (shown) } }
        }
        None => html! { span.muted { "—" } },
    }
}

fn phase_badge(phase: Option<&str>) -> Markup {
    match phase {
        Some(phase) => html! { span class={ "badge phase-" (phase) } { (phase) } },
        None => html! { span.muted { "—" } },
    }
}

/// A rendered page.
pub(crate) type Page = axum::response::Html<String>;

fn layout(chrome: Option<&Chrome>, title: &str, body: Markup) -> Page {
    axum::response::Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · linkflow" }
                    // No favicon request (it would 404 on every page).
                    link rel="icon" href="data:,";
                    link rel="stylesheet" href="/ui/assets/console.css";
                    script src="/ui/assets/console.js" defer {}
                }
                body {
                    a.skip href="#main" { "Skip to content" }
                    header.top {
                        a.brand href="/ui" { "linkflow" }
                        @if let Some(chrome) = chrome {
                            nav aria-label="Console" {
                                a href="/ui" { "Find" }
                                a href="/ui/funnel" { "Funnel" }
                                a href="/ui/attention" { "Attention" }
                            }
                            @if chrome.signed_in {
                                form.logout method="post" action="/ui/logout" {
                                    input type="hidden" name="csrf" value=(chrome.csrf);
                                    button type="submit" id="logout" { "Sign out" }
                                }
                            }
                        }
                    }
                    main #main { (body) }
                }
            }
        }
        .into_string(),
    )
}

pub(crate) fn error_page(status: StatusCode, detail: &str) -> Page {
    layout(
        None,
        status.canonical_reason().unwrap_or("Error"),
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.error #error-detail { (detail) }
            p { a href="/ui" { "Back to the console" } }
        },
    )
}

pub(crate) fn login_page(next: &str, failure: Option<&str>) -> Page {
    layout(
        None,
        "Sign in",
        html! {
            h1 { "Sign in" }
            p { "Sign in with this server's API token (" code { "--token" } " or " code { "LINKFLOW_TOKEN" } ")." }
            @if let Some(failure) = failure {
                p.error role="alert" #login-error { (failure) }
            }
            form.card method="post" action="/ui/login" {
                input type="hidden" name="next" value=(next);
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                button type="submit" #sign-in { "Sign in" }
            }
        },
    )
}

fn option(value: &str, label: &str, selected: &str) -> Markup {
    html! { option value=(value) selected[value == selected] { (label) } }
}

fn search_form(value: &str) -> Markup {
    html! {
        form.search role="search" method="get" action="/ui/search" {
            label for="q" { "Session id, user id or institution id" }
            div.row {
                input #q type="search" name="q" value=(value) required autofocus
                    placeholder="sess_…, user_42, ins_109508" maxlength="512";
                button type="submit" #search { "Find" }
            }
        }
    }
}

fn sessions_table(sessions: &[Value], show_user: bool) -> Markup {
    html! {
        @if sessions.is_empty() {
            p.muted { "No sessions." }
        } @else {
            table.sessions {
                thead { tr {
                    th scope="col" { "Session" }
                    th scope="col" { "Provider" }
                    th scope="col" { "Phase" }
                    th scope="col" { "Institution" }
                    @if show_user { th scope="col" { "User" } }
                    th scope="col" { "Exit status" }
                    th scope="col" { "Last error" }
                    th scope="col" { "First event" }
                    th scope="col" { "Last event" }
                } }
                tbody {
                    @for session in sessions {
                        @let id = text(session, "session_id").unwrap_or("");
                        @let failed = session.get("last_error").is_some_and(|error| !error.is_null())
                            || text(session, "phase") == Some("exited");
                        tr class=[failed.then_some("failed")] {
                            td { a href={ "/ui/sessions/" (segment(id)) } { (id) } }
                            td { (text(session, "provider").unwrap_or("")) }
                            td {
                                (phase_badge(text(session, "phase")))
                                @if session.get("abandoned").and_then(Value::as_bool) == Some(true) {
                                    " " span.badge.abandoned { "abandoned" }
                                }
                            }
                            td { (session.get("institution").and_then(|i| text(i, "name").or_else(|| text(i, "id"))).unwrap_or("—")) }
                            @if show_user {
                                td {
                                    @if let Some(user) = text(session, "external_user_id") {
                                        a href={ "/ui/users/" (segment(user)) } { (user) }
                                    } @else { span.muted { "—" } }
                                }
                            }
                            td { (session.get("exit").and_then(|exit| text(exit, "status")).unwrap_or("—")) }
                            td.error-code { (session.get("last_error").and_then(|error| text(error, "code")).unwrap_or("")) }
                            td { (when(session.get("first_event_at"))) }
                            td { (when(session.get("last_event_at"))) }
                        }
                    }
                }
            }
        }
    }
}

/// Whether a stream id is a session's (else an account's, a merchant's, a quarantine entry's or
/// an erasure's, whose ids carry their kind as a prefix).
fn is_session_stream(stream: &str) -> bool {
    !["account:", "merchant:", "quarantine:", "erasure:"]
        .iter()
        .any(|prefix| stream.starts_with(prefix))
}

fn next_link(next: Option<&str>) -> Markup {
    html! {
        @if let Some(next) = next {
            p.pager { a rel="next" href=(next) { "Next page →" } }
        }
    }
}

pub(crate) fn find_page(
    chrome: &Chrome,
    query: &FindQuery,
    sessions: &[Value],
    next: Option<&str>,
) -> Page {
    layout(
        Some(chrome),
        "Find",
        html! {
            h1 { "Find a session" }
            (search_form(&query.missing))
            @if !query.missing.is_empty() {
                p.error role="alert" #not-found {
                    "Nothing found for “" (query.missing) "”: no session, user or institution has that id."
                }
            }
            h2 { "Sessions" }
            form.filters method="get" action="/ui" {
                div { label for="provider" { "Provider" }
                    select #provider name="provider" {
                        (option("", "any", &query.provider))
                        @for provider in Provider::ALL { (option(provider.as_str(), provider.as_str(), &query.provider)) }
                    } }
                div { label for="phase" { "Phase" }
                    select #phase name="phase" {
                        (option("", "any", &query.phase))
                        @for phase in Phase::ALL { (option(phase.as_str(), phase.as_str(), &query.phase)) }
                    } }
                div { label for="abandoned" { "Abandoned" }
                    select #abandoned name="abandoned" {
                        (option("", "either", &query.abandoned))
                        (option("yes", "yes", &query.abandoned))
                        (option("no", "no", &query.abandoned))
                    } }
                div { label for="window" { "First event" }
                    select #window name="window" {
                        (option("", "any time", &query.window))
                        @for (value, label, _) in WINDOWS { (option(value, label, &query.window)) }
                    } }
                div { label for="institution" { "Institution id" }
                    input #institution name="institution" value=(query.institution); }
                div { button type="submit" { "Filter" } }
            }
            p.muted {
                @if query.institution.trim().is_empty() { "The newest first, by their first event." }
                @else { "The institution's sessions, in session id order." }
            }
            (sessions_table(sessions, true))
            (next_link(next))
        },
    )
}

fn field(label: &str, value: Markup) -> Markup {
    html! { dt { (label) } dd { (value) } }
}

fn plain(value: Option<&str>) -> Markup {
    match value {
        Some(value) => html! { (value) },
        None => html! { span.muted { "—" } },
    }
}

/// The error an event carries, if any (its canonical attributes').
fn event_error(entry: &Value) -> Option<&Value> {
    entry
        .get("canonical")?
        .get("session")?
        .get("attributes")?
        .get("error")
        .filter(|error| !error.is_null())
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

pub(crate) fn session_page(chrome: &Chrome, id: &str, page: &SessionPage) -> Page {
    let session = &page.session;
    let phase = text(session, "phase");
    let exit = session.get("exit").filter(|exit| !exit.is_null());
    let error = session.get("last_error").filter(|error| !error.is_null());
    let abandoned = session.get("abandoned").and_then(Value::as_bool) == Some(true);
    layout(
        Some(chrome),
        &format!("Session {id}"),
        html! {
            h1 { "Session " code #session-id { (id) } }
            section.outcome aria-label="Outcome" #outcome {
                @match phase {
                    Some("succeeded") => { p.ok { "Linked: the session succeeded." } }
                    Some("exited") => {
                        p.bad {
                            "The user left in phase "
                            strong #exit-phase { (exit.and_then(|exit| text(exit, "phase")).unwrap_or("?")) }
                            @if let Some(status) = exit.and_then(|exit| text(exit, "status")) {
                                " with status " strong #exit-status { (status) }
                            }
                            @if let Some(step) = exit.and_then(|exit| text(exit, "step")) {
                                " at step " strong { (step) }
                            }
                            "."
                        }
                    }
                    _ if abandoned => { p.bad { "Abandoned in phase " strong #abandoned-phase { (phase.unwrap_or("?")) } ": no event for the inactivity timeout." } }
                    _ => { p { "In progress, in phase " strong { (phase.unwrap_or("?")) } "." } }
                }
                @if let Some(error) = error {
                    p.bad {
                        "Last error: " strong #last-error-code { (text(error, "code").unwrap_or("(no code)")) }
                        @if let Some(message) = text(error, "message") {
                            " — " span #last-error-message { (message) }
                        }
                    }
                }
            }
            div.split {
                section.card aria-labelledby="state-title" {
                    h2 #state-title { "State" }
                    dl.state {
                        (field("Phase", phase_badge(phase)))
                        (field("Provider", plain(text(session, "provider"))))
                        (field("Institution", match session.get("institution").filter(|i| !i.is_null()) {
                            Some(institution) => html! {
                                (text(institution, "name").unwrap_or(""))
                                " " code { (text(institution, "id").unwrap_or("")) }
                            },
                            None => plain(None),
                        }))
                        (field("Link type", plain(text(session, "link_type"))))
                        (field("User", match text(session, "external_user_id") {
                            Some(user) => html! { a href={ "/ui/users/" (segment(user)) } #user-link { (user) } },
                            None => plain(None),
                        }))
                        @if let Some(item) = text(session, "item_id") { (field("Item", html! { code { (item) } })) }
                        (field("Exit", match exit {
                            Some(exit) => html! {
                                (text(exit, "phase").unwrap_or("")) " "
                                @if let Some(status) = text(exit, "status") { code { (status) } }
                            },
                            None => plain(None),
                        }))
                        (field("Abandoned", html! { (if abandoned { "yes" } else { "no" }) }))
                        (field("Last error", match error {
                            Some(error) => html! { code.error-code { (text(error, "code").unwrap_or("")) } " " (text(error, "message").unwrap_or("")) },
                            None => plain(None),
                        }))
                        (field("Screen", plain(text(session, "current_screen"))))
                        (field("Events", html! {
                            (session.get("accepted").and_then(Value::as_u64).unwrap_or(0)) " accepted, "
                            (session.get("rejected").and_then(Value::as_u64).unwrap_or(0)) " parked"
                        }))
                        (field("First event", when(session.get("first_event_at"))))
                        (field("Last event", when(session.get("last_event_at"))))
                    }
                }
                section.card aria-labelledby="diagram-title" {
                    h2 #diagram-title { "Path" }
                    (PreEscaped(super::diagram::session_svg(&page.path, phase)))
                    @if !page.first_page { p.muted { "The path of this page's events." } }
                }
            }
            section aria-labelledby="timeline-title" {
                h2 #timeline-title { "Timeline" }
                p.muted { "In event-time order (the order the session's fold takes its events), not arrival order." }
                button type="button" #expand-all hidden { "Expand every payload" }
                table.timeline {
                    thead { tr {
                        th scope="col" { "Event time" }
                        th scope="col" { "Provider's name" }
                        th scope="col" { "Event" }
                        th scope="col" { "Phase" }
                        th scope="col" { "Marks" }
                        th scope="col" { "Received" }
                    } }
                    tbody {
                        @for entry in &page.history {
                            @let accepted = entry.get("accepted").and_then(Value::as_bool) == Some(true);
                            @let late = entry.get("late").and_then(Value::as_bool) == Some(true);
                            @let error = event_error(entry);
                            tr class={ @if !accepted { "parked " } @if error.is_some() { "error" } } {
                                td { (when(entry.get("event_time"))) }
                                td { code { (text(entry, "raw_name").unwrap_or("—")) } }
                                td {
                                    strong { (text(entry, "event").unwrap_or("")) }
                                    @if let Some(error) = error {
                                        div.error-detail {
                                            code.error-code { (text(error, "code").unwrap_or("error")) }
                                            @if let Some(message) = text(error, "message") { " " (message) }
                                        }
                                    }
                                    details {
                                        summary { "payload" }
                                        @match entry.get("raw").filter(|raw| !raw.is_null()) {
                                            Some(Value::String(raw)) => { pre { (raw) } }
                                            Some(raw) => { pre { (pretty(raw)) } }
                                            None => { p.muted { "No raw payload kept (expired or compacted)." } }
                                        }
                                        p.muted { "Canonical:" }
                                        pre { (pretty(entry.get("canonical").unwrap_or(&Value::Null))) }
                                    }
                                }
                                td {
                                    @let before = text(entry, "phase_before");
                                    @let after = text(entry, "phase_after");
                                    @if before.is_some() || after.is_some() {
                                        (phase_badge(before))
                                        @if before != after { " → " (phase_badge(after)) }
                                    }
                                }
                                td {
                                    @if !accepted {
                                        span.badge.parked { "parked" }
                                        @if let Some(reason) = text(entry, "rejection") { div.reason { (reason) } }
                                    }
                                    @if late { span.badge.late title="It arrived after an event it comes before" { "late" } }
                                }
                                td { (when(entry.get("received_at"))) }
                            }
                        }
                    }
                }
                @if page.history.is_empty() { p.muted { "No events stored (the session was compacted)." } }
                (next_link(page.next.as_ref().map(|cursor| format!("/ui/sessions/{}?cursor={}", segment(id), segment(cursor))).as_deref()))
                p.muted { "Duplicate deliveries are not stored twice: they are answered as duplicates at intake." }
            }
        },
    )
}

pub(crate) fn user_page(
    chrome: &Chrome,
    user: &str,
    accounts: &[AccountCard],
    sessions: &[Value],
    next: Option<&str>,
) -> Page {
    layout(
        Some(chrome),
        &format!("User {user}"),
        html! {
            h1 { "User " code #user-id { (user) } }
            section aria-labelledby="sessions-title" {
                h2 #sessions-title { "Sessions" }
                (sessions_table(sessions, false))
                (next_link(next))
            }
            section aria-labelledby="accounts-title" {
                h2 #accounts-title { "Linked accounts" }
                @if accounts.is_empty() { p.muted { "No linked accounts." } }
                div.cards {
                    @for card in accounts {
                        @let account = &card.account;
                        @let state = text(account, "state").unwrap_or("");
                        article.card {
                            h3 {
                                (text(account, "provider").unwrap_or("")) " · "
                                // A Plaid item's account names no user: its id is the item's.
                                @if text(account, "external_user_id").is_some_and(str::is_empty) { "item " }
                                code { (text(account, "institution_id").unwrap_or("")) } " "
                                span class={ "badge account-" (state) } { (state) }
                            }
                            dl.state {
                                (field("Link type", plain(text(account, "link_type"))))
                                (field("Expires", when(account.get("expires_at"))))
                            }
                            @if let Some(operations) = account.get("operations").and_then(Value::as_array).filter(|ops| !ops.is_empty()) {
                                h4 { "Operations" }
                                table { tbody {
                                    @for operation in operations {
                                        tr {
                                            td { (when(operation.get("event_time"))) }
                                            td { (operation.get("kind").and_then(Value::as_str).unwrap_or("")) }
                                            td { (operation.get("outcome").and_then(Value::as_str).unwrap_or("")) }
                                            td { (text(operation, "reason").unwrap_or("")) }
                                        }
                                    }
                                } }
                            }
                            h4 { "History" }
                            table { tbody {
                                @for entry in &card.history {
                                    tr class=[(entry.get("accepted").and_then(Value::as_bool) == Some(false)).then_some("parked")] {
                                        td { (when(entry.get("event_time"))) }
                                        td { strong { (text(entry, "event").unwrap_or("")) } }
                                        td { code { (text(entry, "raw_name").unwrap_or("")) } }
                                        td { @if let Some(reason) = text(entry, "rejection") { span.badge.parked { "parked" } " " (reason) } }
                                    }
                                }
                            } }
                            @if card.more_history { p.muted { "Older events are not shown (the first " (super::CONSOLE_ACCOUNT_HISTORY) ")." } }
                        }
                    }
                }
            }
        },
    )
}

fn percent(value: Option<f64>) -> Markup {
    match value {
        Some(value) => html! { (format!("{:.1}%", value * 100.0)) },
        None => html! { span.muted { "—" } },
    }
}

fn success_rate(funnel: &linkflow_core::funnel::Funnel) -> Option<f64> {
    (funnel.sessions > 0).then(|| funnel.succeeded as f64 / funnel.sessions as f64)
}

fn seconds(value: Option<f64>) -> String {
    match value {
        Some(seconds) if seconds >= 3600.0 => format!("{:.1} h", seconds / 3600.0),
        Some(seconds) if seconds >= 60.0 => format!("{:.1} min", seconds / 60.0),
        Some(seconds) => format!("{seconds:.0} s"),
        None => "—".to_owned(),
    }
}

fn text_input(name: &str, label: &str, value: &str, placeholder: &str) -> Markup {
    html! {
        div { label for=(name) { (label) } input id=(name) name=(name) value=(value) placeholder=(placeholder); }
    }
}

pub(crate) fn funnel_page(
    chrome: &Chrome,
    query: &FunnelPageQuery,
    columns: &[FunnelColumn],
    omitted: usize,
    chart: &str,
) -> Page {
    let steps: Vec<Phase> = columns
        .first()
        .map(|column| column.funnel.steps.iter().map(|step| step.phase).collect())
        .unwrap_or_default();
    layout(
        Some(chrome),
        "Funnel",
        html! {
            h1 { "Funnel" }
            form.filters method="get" action="/ui/funnel" {
                (text_input("since", "Since (RFC 3339)", &query.since, "2026-12-01T00:00:00Z"))
                (text_input("until", "Until", &query.until, ""))
                div { label for="provider" { "Provider" }
                    select #provider name="provider" {
                        (option("", "any", &query.provider))
                        @for provider in Provider::ALL { (option(provider.as_str(), provider.as_str(), &query.provider)) }
                    } }
                (text_input("institution", "Institution id", &query.institution, ""))
                div { label for="link_type" { "Link type" }
                    select #link_type name="link_type" {
                        (option("", "any", &query.link_type))
                        @for link_type in ["link", "relink", "failover_link"] { (option(link_type, link_type, &query.link_type)) }
                    } }
                div { label for="by" { "Group by" }
                    select #by name="by" {
                        (option("", "nothing", &query.by))
                        @for by in ["provider", "institution", "link_type", "screen"] { (option(by, by, &query.by)) }
                    } }
                (text_input("compare_since", "Compare with: since", &query.compare_since, ""))
                (text_input("compare_until", "Compare with: until", &query.compare_until, ""))
                div { button type="submit" #apply { "Show" } }
            }
            p.muted {
                "The same funnel as the API's "
                code { "GET /v1/funnel?" (query.api_query()) }
                ". Conversion is each step's sessions over the step before."
            }
            @if columns.is_empty() {
                p.muted { "No sessions match." }
            } @else {
                table.funnel #funnel {
                    thead {
                        tr {
                            th scope="col" { "Step" }
                            @for column in columns {
                                th scope="colgroup" colspan="3" data-group=(column.label) { (column.label) }
                            }
                        }
                        tr {
                            th {}
                            @for _ in columns { th scope="col" { "Reached" } th scope="col" { "Conversion" } th scope="col" { "Dropped" } }
                        }
                    }
                    tbody {
                        tr.totals {
                            th scope="row" { "sessions" }
                            @for column in columns {
                                td data-group=(column.label) data-field="sessions" { (column.funnel.sessions) }
                                td { (percent(success_rate(&column.funnel))) " succeed" }
                                td { (column.funnel.exited) " exited, " (column.funnel.abandoned) " abandoned" }
                            }
                        }
                        @for (index, phase) in steps.iter().enumerate() {
                            tr {
                                th scope="row" { (phase.as_str()) }
                                @for column in columns {
                                    @let step = column.funnel.steps.get(index);
                                    td data-group=(column.label) data-step=(phase.as_str()) data-field="reached" { (step.map_or(0, |step| step.reached)) }
                                    td { (percent(step.and_then(|step| step.conversion))) }
                                    td { @if let Some(step) = step { (step.dropped_exited) " / " (step.dropped_abandoned) } }
                                }
                            }
                        }
                    }
                }
                p.muted { "Dropped: exited here / abandoned here." }
                @if omitted > 0 { p.muted { (omitted) " smaller groups are not shown (at most " (super::MAX_FUNNEL_COLUMNS) " columns)." } }
                div.cards {
                    @for column in columns {
                        article.card {
                            h3 { (column.label) }
                            table {
                                thead { tr { th scope="col" { "Step" } th scope="col" { "Top exit statuses" } th scope="col" { "Top errors" } th scope="col" { "Time in phase p50 / p90" } } }
                                tbody {
                                    @for step in &column.funnel.steps {
                                        tr {
                                            th scope="row" { (step.phase.as_str()) }
                                            td { @for (status, count) in step.exit_statuses.iter().take(3) { code { (status) } " " (count) br; } }
                                            td { @for (code, count) in step.error_codes.iter().take(3) { code.error-code { (code) } " " (count) br; } }
                                            td { (seconds(step.time_in_phase_p50_s)) " / " (seconds(step.time_in_phase_p90_s)) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                @if !chart.is_empty() {
                    figure.chart {
                        (PreEscaped(chart))
                        figcaption { "The first column's funnel." }
                    }
                }
            }
        },
    )
}

pub(crate) fn attention_page(chrome: &Chrome, page: &AttentionPage) -> Page {
    let empty = Vec::new();
    let parked = page
        .parked
        .get("events")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let entries = page
        .quarantine
        .get("entries")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    layout(
        Some(chrome),
        "Attention",
        html! {
            h1 { "Needs attention" }
            section aria-labelledby="accounts-title" {
                h2 #accounts-title { "Accounts needing their user" }
                p.muted { "States " @for (index, state) in NEEDS_USER.iter().enumerate() { @if index > 0 { ", " } code { (state) } } "; " (page.accounts_scanned) " accounts examined on this page." }
                @if page.accounts.is_empty() { p.muted { "None here." } } @else {
                    table #attention-accounts {
                        thead { tr { th scope="col" { "User" } th scope="col" { "Provider" } th scope="col" { "Institution" } th scope="col" { "State" } th scope="col" { "Expires" } } }
                        tbody {
                            @for account in &page.accounts {
                                @let user = text(account, "external_user_id").unwrap_or("");
                                @let state = text(account, "state").unwrap_or("");
                                tr {
                                    td { @if user.is_empty() { span.muted { "(a Plaid item)" } } @else { a href={ "/ui/users/" (segment(user)) } { (user) } } }
                                    td { (text(account, "provider").unwrap_or("")) }
                                    td { code { (text(account, "institution_id").unwrap_or("")) } }
                                    td { span class={ "badge account-" (state) } { (state) } }
                                    td { (when(account.get("expires_at"))) }
                                }
                            }
                        }
                    }
                }
                @if let Some(next) = &page.accounts_next { p.pager { a href=(next) { "Examine the next accounts →" } } }
            }
            section aria-labelledby="parked-title" {
                h2 #parked-title { "Parked events" }
                p.muted { "Events their session's fold rejects, kept. They are judged again on every fold: an earlier event arriving late can accept them, so there is nothing to redrive." }
                @if parked.is_empty() { p.muted { "None." } } @else {
                    table #parked {
                        thead { tr { th scope="col" { "Stream" } th scope="col" { "Event" } th scope="col" { "Why" } th scope="col" { "Event time" } th scope="col" { "Received" } } }
                        tbody {
                            @for event in parked {
                                @let stream = text(event, "session_id").unwrap_or("");
                                tr {
                                    td {
                                        // Sessions have a page; account and merchant streams are
                                        // shown on their user's page and in the API.
                                        @if !is_session_stream(stream) { code { (stream) } }
                                        @else { a href={ "/ui/sessions/" (segment(stream)) } { (stream) } }
                                    }
                                    td { strong { (text(event, "event").unwrap_or("")) } " " code { (text(event, "raw_name").unwrap_or("")) } }
                                    td.reason { (text(event, "reason").unwrap_or("")) }
                                    td { (when(event.get("event_time"))) }
                                    td { (when(event.get("received_at"))) }
                                }
                            }
                        }
                    }
                }
                @if let Some(next) = &page.parked_next { p.pager { a href=(next) { "More parked events →" } } }
            }
            section aria-labelledby="quarantine-title" {
                h2 #quarantine-title { "Quarantined payloads" }
                p.muted {
                    (page.quarantine.get("counts").and_then(|counts| counts.get("pending")).and_then(Value::as_u64).unwrap_or(0)) " pending, "
                    (page.quarantine.get("counts").and_then(|counts| counts.get("released")).and_then(Value::as_u64).unwrap_or(0)) " released. "
                    "A payload that named no session waits here; a redrive decodes it again, with a session id and user you give for one that names none."
                }
                @if entries.is_empty() { p.muted { "None pending." } }
                @for entry in entries {
                    @let id = text(entry, "entry").unwrap_or("");
                    article.card.quarantined data-entry=(id) {
                        h3 { code { (id) } " · " (text(entry, "provider").unwrap_or("")) " (" (text(entry, "feed").unwrap_or("")) ")" }
                        p.reason { (text(entry, "reason").unwrap_or("")) }
                        p { "Event " code { (text(entry, "raw_name").unwrap_or("—")) } ", received " (when(entry.get("received_at"))) }
                        details { summary { "payload" } pre { (match entry.get("payload") { Some(Value::String(raw)) => raw.clone(), Some(raw) => pretty(raw), None => String::new() }) } }
                        form.redrive method="post" action="/ui/quarantine/redrive" {
                            input type="hidden" name="csrf" value=(chrome.csrf);
                            input type="hidden" name="entry" value=(id);
                            div { label for={ "session-" (id) } { "Session id (for a payload that names none)" }
                                input id={ "session-" (id) } name="session_id"; }
                            div { label for={ "user-" (id) } { "User id (optional)" }
                                input id={ "user-" (id) } name="external_user_id"; }
                            button type="submit" { "Redrive…" }
                        }
                    }
                }
                @if let Some(next) = &page.quarantine_next { p.pager { a href=(next) { "More quarantined payloads →" } } }
            }
        },
    )
}

pub(crate) fn redrive_confirm(
    chrome: &Chrome,
    entry: &SessionId,
    session: Option<&SessionId>,
    user: Option<&str>,
) -> Page {
    layout(
        Some(chrome),
        "Confirm the redrive",
        html! {
            h1 { "Redrive " code { (entry.as_str()) } "?" }
            p {
                "The payload is decoded again"
                @if let Some(session) = session { " into session " code { (session.as_str()) } }
                @if let Some(user) = user { " for user " code { (user) } }
                ". Once stored in a session it leaves the quarantine; the session's fold places it by its time."
            }
            form method="post" action="/ui/quarantine/redrive" {
                input type="hidden" name="csrf" value=(chrome.csrf);
                input type="hidden" name="entry" value=(entry.as_str());
                input type="hidden" name="session_id" value=(session.map_or("", SessionId::as_str));
                input type="hidden" name="external_user_id" value=(user.unwrap_or(""));
                input type="hidden" name="confirm" value="yes";
                button type="submit" #confirm { "Confirm the redrive" }
                " "
                a href="/ui/attention" { "Cancel" }
            }
        },
    )
}

pub(crate) fn redrive_done(chrome: &Chrome, report: &Value) -> Page {
    let empty = Vec::new();
    let results = report
        .get("results")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    layout(
        Some(chrome),
        "Redrive",
        html! {
            h1 { "Redrive" }
            @for result in results {
                @let kind = text(result, "result").unwrap_or("");
                @let entry = text(result, "entry").unwrap_or("");
                @match kind {
                    "released" => {
                        p.ok #redrive-result {
                            code { (entry) } " was released: "
                            (result.get("outcome").map(|outcome| match outcome { Value::String(text) => text.clone(), other => other.to_string() }).unwrap_or_default())
                        }
                    }
                    "still_quarantined" => { p.bad #redrive-result { code { (entry) } " still names no session: " (text(result, "reason").unwrap_or("")) } }
                    _ => { p.bad #redrive-result { code { (entry) } " was refused: " (result.get("error").map(Value::to_string).unwrap_or_default()) } }
                }
            }
            p { a href="/ui/attention" { "Back to the attention list" } }
        },
    )
}

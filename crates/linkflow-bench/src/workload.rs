//! A seeded generator of realistic traffic: sessions of the four providers in several flow
//! shapes, about 12 events per session, as provider JSON payloads, with about 5% of
//! deliveries out of order, 2% duplicated and 1% illegal. Plaid sessions arrive as Plaid
//! delivers them: `OPEN` first, every other callback in one burst at the end, shuffled.

use linkflow_core::Provider;
use serde_json::json;

/// A small deterministic PRNG (SplitMix64): the same seed gives the same workload.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One delivery: the provider and its payload text.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub provider: Provider,
    pub body: String,
    /// The session (or account) it belongs to, for grouping.
    pub session: usize,
}

const BASE_MS: i64 = 1_700_000_000_000;

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("workload times are in range")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn moneykit(
    session: usize,
    name: &str,
    ms: i64,
    properties: serde_json::Value,
    institution: bool,
    link_type: &str,
) -> String {
    let mut meta = json!({
        "link_type": link_type,
        "link_session_id": format!("mk_{session:09}"),
        "timestamp": iso(ms),
    });
    if institution {
        meta["institution_id"] = json!("moneykit-creds-bank");
        meta["institution_name"] = json!("Credentials Bank");
    }
    json!({"name": name, "properties": properties, "meta": meta}).to_string()
}

/// The MoneyKit flow shapes.
fn moneykit_session(session: usize, rng: &mut Rng, start: i64) -> Vec<String> {
    let shape = rng.below(7);
    let link_type = if shape == 3 { "Relink" } else { "Link" };
    let mut t = start;
    let mut next = |rng: &mut Rng| {
        t += 1_000 + rng.below(20_000) as i64;
        t
    };
    let empty = json!({});
    let mut events = vec![
        moneykit(session, "open", next(rng), empty.clone(), false, link_type),
        moneykit(
            session,
            "change_screen",
            next(rng),
            json!({"current_screen_name": "Finder"}),
            false,
            link_type,
        ),
        moneykit(
            session,
            "search_institution",
            next(rng),
            json!({"search_term": "credentials"}),
            false,
            link_type,
        ),
        moneykit(
            session,
            "select_institution",
            next(rng),
            json!({"institution_id": "moneykit-creds-bank", "institution_name": "Credentials Bank"}),
            false,
            link_type,
        ),
        moneykit(
            session,
            "change_screen",
            next(rng),
            json!({"current_screen_name": "Credentials"}),
            true,
            link_type,
        ),
    ];
    match shape {
        // OAuth
        1 => events.push(moneykit(
            session,
            "open_oauth",
            next(rng),
            empty.clone(),
            true,
            link_type,
        )),
        // MFA with an OTP device
        2 => {
            events.push(moneykit(
                session,
                "submit_credentials",
                next(rng),
                empty.clone(),
                true,
                link_type,
            ));
            events.push(moneykit(
                session,
                "submit_otp_device",
                next(rng),
                empty.clone(),
                true,
                link_type,
            ));
            events.push(moneykit(
                session,
                "submit_otp",
                next(rng),
                empty.clone(),
                true,
                link_type,
            ));
        }
        // error, then retry
        4 => {
            events.push(moneykit(
                session,
                "submit_credentials",
                next(rng),
                empty.clone(),
                true,
                link_type,
            ));
            events.push(moneykit(session, "error", next(rng), json!({"error_id": "e1", "displayed_message": "Wrong password", "request_id": "r1"}), true, link_type));
            events.push(moneykit(
                session,
                "submit_credentials",
                next(rng),
                empty.clone(),
                true,
                link_type,
            ));
        }
        _ => events.push(moneykit(
            session,
            "submit_credentials",
            next(rng),
            empty.clone(),
            true,
            link_type,
        )),
    }
    match shape {
        // exit midway
        5 => events.push(moneykit(
            session,
            "exit",
            next(rng),
            json!({"status": "requires_credentials"}),
            true,
            link_type,
        )),
        // abandoned: the flow just stops
        6 => {}
        _ => {
            events.push(moneykit(
                session,
                "submit_permissions",
                next(rng),
                empty.clone(),
                true,
                link_type,
            ));
            events.push(moneykit(
                session,
                "change_screen",
                next(rng),
                json!({"current_screen_name": "Accounts"}),
                true,
                link_type,
            ));
            events.push(moneykit(
                session,
                "submit_accounts",
                next(rng),
                empty.clone(),
                true,
                link_type,
            ));
            events.push(moneykit(
                session,
                "success",
                next(rng),
                empty.clone(),
                true,
                link_type,
            ));
        }
    }
    events
}

fn benji_session(session: usize, rng: &mut Rng, start: i64) -> Vec<String> {
    let id = format!("bj_{session:09}");
    let mut t = start;
    let mut event = |rng: &mut Rng, body: serde_json::Value| {
        t += 1_000 + rng.below(20_000) as i64;
        let mut body = body;
        body["session_id"] = json!(id);
        body["timestamp"] = json!(t);
        body.to_string()
    };
    let user = format!("user_{session}");
    let mut events = vec![
        event(
            rng,
            json!({"callback": "onEvent", "event": "go_back_clicked", "metadata": {"screen_name": "intro"}}),
        ),
        event(
            rng,
            json!({"callback": "onEvent", "event": "user_partner_select", "metadata": {"partner_id": "marriott", "external_user_id": user, "screen_name": "partners"}}),
        ),
        event(
            rng,
            json!({"callback": "onEvent", "event": "go_back_clicked", "metadata": {"screen_name": "partner_login"}}),
        ),
        event(
            rng,
            json!({"callback": "onEvent", "event": "user_partner_select", "metadata": {"partner_id": "hilton", "external_user_id": user, "screen_name": "partners"}}),
        ),
    ];
    if rng.percent(30) {
        events.push(event(
            rng,
            json!({"callback": "onError", "error": "partner_connect_error", "error_id": "err_1"}),
        ));
    }
    events.push(event(rng, json!({"callback": "onEvent", "event": "user_authenticated_with_partner", "metadata": {"partner_id": "hilton"}})));
    if rng.percent(80) {
        events.push(event(rng, json!({"callback": "onSuccess", "metadata": {"partner_id": "hilton", "external_user_id": user}})));
    } else {
        events.push(event(
            rng,
            json!({"callback": "onEvent", "event": "user_inactive"}),
        ));
    }
    events.push(event(rng, json!({"callback": "onExit"})));
    events
}

fn knot_session(session: usize, rng: &mut Rng, start: i64) -> Vec<String> {
    let user = format!("knot_user_{session}");
    let merchant = 10 + (session % 50) as u64;
    let mut t = start;
    let mut webhook = |rng: &mut Rng, event: &str, extra: serde_json::Value| {
        t += 1_000 + rng.below(60_000) as i64;
        let mut body = json!({
            "event": event,
            "external_user_id": user,
            "merchant": {"id": merchant, "name": "Merchant", "logo": "https://knot.example/logo.png"},
            "timestamp": t,
        });
        for (key, value) in extra.as_object().expect("extra is an object") {
            body[key] = value.clone();
        }
        body.to_string()
    };
    let mut events = vec![webhook(
        rng,
        "AUTHENTICATED",
        json!({"session_id": format!("kn_{session:09}"), "task_id": session, "data": {"card_id": "123", "send_card": true, "entrypoint": "onboarding"}}),
    )];
    for _ in 0..4 {
        events.push(webhook(rng, "SYNC_CART_SUCCEEDED", json!({})));
        let outcome = if rng.percent(85) {
            "CHECKOUT_SUCCEEDED"
        } else {
            "CHECKOUT_FAILED"
        };
        let transaction = format!("tx_{session}_{}", rng.below(1_000_000));
        events.push(webhook(
            rng,
            outcome,
            json!({"data": {"transactions": [{"id": transaction}]}}),
        ));
    }
    if rng.percent(20) {
        events.push(webhook(rng, "ACCOUNT_LOGIN_REQUIRED", json!({})));
    }
    let status = if rng.percent(90) { "UP" } else { "DOWN" };
    events.push(webhook(rng, "MERCHANT_STATUS_UPDATE", json!({"data": {"type": "card_switcher", "status": status, "platform": "ios", "sdk": "1.0.0"}})));
    events
}

/// A forwarded Plaid `onEvent` callback (the web SDK's snake_case metadata).
fn plaid_event(session: usize, name: &str, ms: i64, metadata: serde_json::Value) -> String {
    let mut meta = json!({
        "link_session_id": format!("pl_{session:09}"),
        "request_id": format!("req_{session}"),
        "timestamp": iso(ms),
    });
    if let (Some(meta), Some(extra)) = (meta.as_object_mut(), metadata.as_object()) {
        meta.extend(extra.clone());
    }
    json!({"eventName": name, "metadata": meta}).to_string()
}

/// The Plaid flow shapes: a success (most), an exit after a credentials error, an OAuth
/// success; `OPEN` in real time, the rest one shuffled burst, as Plaid delivers them.
fn plaid_session(session: usize, rng: &mut Rng, start: i64) -> Vec<String> {
    let mut t = start;
    let mut next = |rng: &mut Rng| {
        t += 1_000 + rng.below(20_000) as i64;
        t
    };
    let bank = json!({"institution_id": "ins_109508", "institution_name": "First Platypus Bank"});
    let view = |name: &str| json!({"view_name": name});
    let open = plaid_event(session, "OPEN", next(rng), view("CONSENT"));
    let mut burst = vec![
        plaid_event(
            session,
            "TRANSITION_VIEW",
            next(rng),
            view("SELECT_INSTITUTION"),
        ),
        plaid_event(
            session,
            "SEARCH_INSTITUTION",
            next(rng),
            json!({"institution_search_query": "platypus"}),
        ),
        plaid_event(session, "SELECT_INSTITUTION", next(rng), bank.clone()),
        plaid_event(session, "TRANSITION_VIEW", next(rng), view("CREDENTIAL")),
    ];
    let success = json!({
        "public_token": "public-sandbox-b0e2c4ee",
        "metadata": {
            "institution": {"name": "First Platypus Bank", "institution_id": "ins_109508"},
            "accounts": [{"id": "acc_1", "name": "Checking", "mask": "0000", "type": "depository", "subtype": "checking"}],
            "link_session_id": format!("pl_{session:09}"),
        },
        "item_id": format!("item_{session:09}"),
    })
    .to_string();
    match rng.below(5) {
        0 => {
            burst.push(plaid_event(
                session,
                "SUBMIT_CREDENTIALS",
                next(rng),
                bank.clone(),
            ));
            burst.push(plaid_event(session, "ERROR", next(rng), json!({"error_type": "ITEM_ERROR", "error_code": "INVALID_CREDENTIALS", "error_message": "the credentials were not correct"})));
            burst.push(plaid_event(
                session,
                "EXIT",
                next(rng),
                json!({"exit_status": "requires_credentials"}),
            ));
            burst.push(json!({"error": {"error_type": "ITEM_ERROR", "error_code": "INVALID_CREDENTIALS", "error_message": "the credentials were not correct", "display_message": "The credentials were not correct."}, "metadata": {"institution": {"name": "First Platypus Bank", "institution_id": "ins_109508"}, "status": "requires_credentials", "link_session_id": format!("pl_{session:09}"), "request_id": format!("req_{session}")}}).to_string());
        }
        1 => {
            burst.push(plaid_event(session, "OPEN_OAUTH", next(rng), view("OAUTH")));
            burst.push(plaid_event(
                session,
                "HANDOFF",
                next(rng),
                view("CONNECTED"),
            ));
            burst.push(success);
        }
        _ => {
            burst.push(plaid_event(
                session,
                "SUBMIT_CREDENTIALS",
                next(rng),
                bank.clone(),
            ));
            burst.push(plaid_event(
                session,
                "TRANSITION_VIEW",
                next(rng),
                view("MFA"),
            ));
            burst.push(plaid_event(
                session,
                "SUBMIT_MFA",
                next(rng),
                json!({"mfa_type": "code"}),
            ));
            burst.push(plaid_event(
                session,
                "HANDOFF",
                next(rng),
                view("CONNECTED"),
            ));
            burst.push(success);
        }
    }
    // The burst in a seeded random order (Fisher-Yates).
    for index in (1..burst.len()).rev() {
        burst.swap(index, rng.below(index as u64 + 1) as usize);
    }
    let mut events = vec![open];
    events.extend(burst);
    events
}

/// `events` deliveries of the workload for `seed`.
pub fn generate(events: usize, seed: u64) -> Vec<Delivery> {
    Workload::new(seed).take(events).collect()
}

/// The workload as an endless stream, session by session: the footprint figure ingests from it
/// without holding the whole workload in memory. `generate(n, seed)` is its first `n` items.
pub struct Workload {
    rng: Rng,
    session: usize,
    /// Milliseconds between two sessions' starts.
    spacing_ms: f64,
    pending: std::collections::VecDeque<Delivery>,
}

impl Workload {
    pub fn new(seed: u64) -> Self {
        Workload {
            rng: Rng::new(seed),
            session: 0,
            spacing_ms: 1_000.0,
            pending: std::collections::VecDeque::new(),
        }
    }

    /// The workload with `sessions` sessions starting evenly over `span_ms` milliseconds (a
    /// store that holds more sessions of the same days, as a busier integration would).
    pub fn spread(seed: u64, sessions: usize, span_ms: i64) -> Self {
        Workload {
            spacing_ms: span_ms as f64 / sessions.max(1) as f64,
            ..Workload::new(seed)
        }
    }

    /// Queues the next session's deliveries.
    fn next_session(&mut self) {
        let rng = &mut self.rng;
        let session = self.session;
        let start = BASE_MS + (session as f64 * self.spacing_ms) as i64;
        let provider = match rng.below(10) {
            0..=4 => Provider::Moneykit,
            5..=6 => Provider::Benji,
            7 => Provider::Knot,
            _ => Provider::Plaid,
        };
        let mut bodies = match provider {
            Provider::Moneykit => moneykit_session(session, rng, start),
            Provider::Benji => benji_session(session, rng, start),
            Provider::Knot => knot_session(session, rng, start),
            Provider::Plaid => plaid_session(session, rng, start),
        };
        // About 5% out of order: a delivery swapped with the next one of its session.
        for index in 0..bodies.len().saturating_sub(1) {
            if rng.percent(5) {
                bodies.swap(index, index + 1);
            }
        }
        // About 1% illegal: a MoneyKit `open` after the session is under way.
        if provider == Provider::Moneykit && rng.percent(12) {
            bodies.push(moneykit(
                session,
                "open",
                start + 10_000_000,
                json!({}),
                false,
                "Link",
            ));
        }
        for body in bodies {
            // About 2% duplicates: the same payload delivered twice.
            let duplicate = rng.percent(2);
            if duplicate {
                self.pending.push_back(Delivery {
                    provider,
                    body: body.clone(),
                    session,
                });
            }
            self.pending.push_back(Delivery {
                provider,
                body,
                session,
            });
        }
        self.session += 1;
    }
}

impl Iterator for Workload {
    type Item = Delivery;

    fn next(&mut self) -> Option<Delivery> {
        while self.pending.is_empty() {
            self.next_session();
        }
        self.pending.pop_front()
    }
}

/// An event of figure 10's input: its workload session, its provider time, the event.
pub type SessionEvent<T> = (usize, Option<chrono::DateTime<chrono::Utc>>, T);

/// How many sessions later a Plaid-like session's burst arrives (~1,200 events: the next
/// ingest call, so the burst's session is read back from the store, as a late burst would be).
pub const BURST_DELAY_SESSIONS: usize = 100;

/// The Plaid-like shape of figure 10, from decoded events with their workload session: each
/// session's first event (by provider time) where it was, the rest delivered together
/// [`BURST_DELAY_SESSIONS`] sessions later, as Plaid delivers most `onEvent` callbacks in one
/// burst at the end of the flow. `shuffled` delivers each burst in a seeded random order (the
/// Plaid shape); otherwise in provider-time order (the same sessions delivered in order).
pub fn plaid_like<T: Clone>(events: &[SessionEvent<T>], shuffled: bool, seed: u64) -> Vec<T> {
    let mut rng = Rng::new(seed);
    let mut sessions: Vec<Vec<(Option<chrono::DateTime<chrono::Utc>>, usize)>> = Vec::new();
    let mut index_of: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    for (at, (session, time, _)) in events.iter().enumerate() {
        let slot = *index_of.entry(*session).or_insert_with(|| {
            sessions.push(Vec::new());
            sessions.len() - 1
        });
        sessions[slot].push((*time, at));
    }
    // Each session's events by provider time (untimed ones after, in arrival order).
    for session in &mut sessions {
        session.sort_by_key(|(time, at)| (time.is_none(), *time, *at));
    }
    let mut out = Vec::with_capacity(events.len());
    let mut bursts: std::collections::VecDeque<Vec<usize>> = std::collections::VecDeque::new();
    for session in &sessions {
        let (_, first) = session[0];
        out.push(events[first].2.clone());
        let mut burst: Vec<usize> = session[1..].iter().map(|(_, at)| *at).collect();
        if shuffled {
            for index in (1..burst.len()).rev() {
                let other = rng.below(index as u64 + 1) as usize;
                burst.swap(index, other);
            }
        }
        bursts.push_back(burst);
        if bursts.len() > BURST_DELAY_SESSIONS {
            let due = bursts.pop_front().expect("more than the delay waits");
            out.extend(due.into_iter().map(|at| events[at].2.clone()));
        }
    }
    for due in bursts {
        out.extend(due.into_iter().map(|at| events[at].2.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use linkflow_providers::{decode, DecodeContext};

    #[test]
    fn the_plaid_shape_delivers_each_session_once_first_event_first_burst_later() {
        let at = |ms: i64| Some(chrono::DateTime::from_timestamp_millis(ms).unwrap());
        // 150 sessions of 4 events, times 0..3 within each.
        let events: Vec<SessionEvent<(usize, i64)>> = (0..150)
            .flat_map(|session| (0..4).map(move |n| (session, at(n), (session, n))))
            .collect();
        for shuffled in [false, true] {
            let out = plaid_like(&events, shuffled, 7);
            assert_eq!(out.len(), events.len());
            let mut sorted = out.clone();
            sorted.sort();
            let mut expected: Vec<(usize, i64)> = events.iter().map(|(_, _, e)| *e).collect();
            expected.sort();
            assert_eq!(sorted, expected, "every event once");
            // Session 0's first event comes first; its burst after 100 more sessions' opens.
            assert_eq!(out[0], (0, 0));
            let burst_at = out.iter().position(|e| *e == (0, 1)).unwrap();
            assert!(burst_at > BURST_DELAY_SESSIONS, "{burst_at}");
            let burst: Vec<i64> = out
                .iter()
                .filter(|e| e.0 == 0 && e.1 > 0)
                .map(|e| e.1)
                .collect();
            if !shuffled {
                assert_eq!(burst, [1, 2, 3]);
            }
        }
        let shuffled_any = (0..150).any(|session| {
            let out = plaid_like(&events, true, 7);
            let burst: Vec<i64> = out
                .iter()
                .filter(|e| e.0 == session && e.1 > 0)
                .map(|e| e.1)
                .collect();
            burst != [1, 2, 3]
        });
        assert!(shuffled_any, "the shuffle moves something");
    }

    #[test]
    fn the_workload_is_deterministic_decodable_and_has_about_12_events_per_session() {
        let a = generate(5_000, 7);
        let b = generate(5_000, 7);
        assert_eq!(a.len(), 5_000);
        assert!(a.iter().zip(&b).all(|(x, y)| x.body == y.body));
        let streamed: Vec<Delivery> = Workload::new(7).skip(4_000).take(1_000).collect();
        assert!(
            streamed
                .iter()
                .zip(&a[4_000..])
                .all(|(x, y)| x.body == y.body),
            "the stream is the same workload"
        );
        let context = DecodeContext::received_at(Utc::now());
        for delivery in &a {
            decode(delivery.provider.into(), &delivery.body, &context).unwrap();
        }
        let sessions = a.last().unwrap().session + 1;
        let per_session = a.len() as f64 / sessions as f64;
        assert!(
            (9.0..15.0).contains(&per_session),
            "{per_session} events per session"
        );
        let duplicates = a
            .windows(2)
            .filter(|pair| pair[0].body == pair[1].body)
            .count();
        assert!(
            (40..200).contains(&duplicates),
            "{duplicates} duplicates in 5,000"
        );
    }
}

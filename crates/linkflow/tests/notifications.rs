//! Notifications derived from the log, and abandonment declared by the engine: every change a
//! backend acts on comes out once per event that made it, with an id that does not depend on
//! who reads it or when; the abandonment marker is written once per silence and a later event
//! revives the session.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, TimeZone, Utc};
use linkflow::abandon::{marker, marker_dedupe_key};
use linkflow::{
    Engine, EngineConfig, IncomingEvent, IngestOutcome, Notification, NotificationKind,
    SessionFilter,
};
use linkflow_core::{
    AccountEvent, AccountEventKind, AccountKey, Event, EventBody, EventKind, Phase, Position,
    Provider, SessionId,
};

fn t(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap() + Duration::minutes(i64::from(minute))
}

fn sid(id: &str) -> SessionId {
    SessionId::new(id).unwrap()
}

fn event(session: &str, kind: EventKind, minute: u32) -> IncomingEvent {
    IncomingEvent::new(
        sid(session),
        Provider::Moneykit,
        Event::new(kind).at(t(minute)),
    )
}

fn account(kind: AccountEventKind, minute: u32) -> IncomingEvent {
    let key = AccountKey {
        provider: Provider::Knot,
        external_user_id: "user-7".into(),
        institution_id: "44".into(),
    };
    IncomingEvent::with_body(
        key.stream_id().unwrap(),
        Provider::Knot,
        EventBody::Account {
            account: key,
            event: AccountEvent::new(kind).at(t(minute)),
        },
    )
}

/// Reads notifications from `after` until `count` came (or fails after 10 s).
async fn take(engine: &Engine, after: Position, count: usize) -> Vec<Notification> {
    let mut notifications = engine.notifications(after);
    let mut taken = Vec::new();
    while taken.len() < count {
        match tokio::time::timeout(StdDuration::from_secs(10), notifications.next()).await {
            Ok(next) => taken.push(next.unwrap()),
            Err(_) => panic!("only {} of {count} notifications: {taken:#?}", taken.len()),
        }
    }
    // Nothing more is waiting.
    assert!(
        tokio::time::timeout(StdDuration::from_millis(200), notifications.next())
            .await
            .is_err(),
        "more notifications than {count}"
    );
    taken
}

fn kinds_of(notifications: &[Notification], stream: &str) -> Vec<NotificationKind> {
    notifications
        .iter()
        .filter(|n| n.stream.as_str() == stream)
        .map(|n| n.kind)
        .collect()
}

#[tokio::test]
async fn every_change_a_backend_acts_on_is_notified_once_with_a_stable_id() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let mut exit = Event::new(EventKind::Exited).at(t(3));
    exit.attributes.exit_status = Some("requires_mfa".into());
    engine
        .ingest_batch(vec![
            event("won", EventKind::Opened, 0),
            IncomingEvent::new(
                sid("won"),
                Provider::Moneykit,
                Event::new(EventKind::InstitutionSelected)
                    .at(t(1))
                    .with_institution("ins_3", Some("Bank Three")),
            ),
            event("won", EventKind::Succeeded, 2),
            event("left", EventKind::Opened, 0),
            IncomingEvent::new(sid("left"), Provider::Moneykit, exit),
            event("quiet", EventKind::Opened, 0),
            event("quiet", EventKind::InstitutionSelected, 1),
            account(AccountEventKind::Linked, 0),
            account(AccountEventKind::LoginRequired, 10),
            account(AccountEventKind::LoginRepaired, 20),
            account(AccountEventKind::Revoked, 30),
        ])
        .await
        .unwrap();
    // Still arriving: the session of 2026-03-02 is silent by its events' times, not by
    // their arrival.
    let report = engine.declare_abandoned(Utc::now()).await.unwrap();
    assert_eq!(report.declared, 0, "{report:?}");
    // Half an hour after the last arrival it is silent both ways.
    let later = Utc::now() + Duration::minutes(31);
    let report = engine.declare_abandoned(later).await.unwrap();
    assert_eq!((report.declared, report.skipped), (1, 0), "{report:?}");
    let again = engine.declare_abandoned(later).await.unwrap();
    assert_eq!(
        again.declared + again.skipped,
        0,
        "declared twice: {again:?}"
    );
    let quiet = engine.session(&sid("quiet")).await.unwrap().unwrap();
    assert!(quiet.state.abandoned_at().is_some());
    assert_eq!(quiet.state.phase(), Phase::InstitutionSelected);
    // A late event revives it.
    engine
        .ingest(event("quiet", EventKind::CredentialsSubmitted, 90))
        .await
        .unwrap();

    let notifications = take(&engine, Position(0), 7).await;
    assert_eq!(
        kinds_of(&notifications, "won"),
        [NotificationKind::SessionSucceeded]
    );
    assert_eq!(
        kinds_of(&notifications, "left"),
        [NotificationKind::SessionExited]
    );
    assert_eq!(
        kinds_of(&notifications, "quiet"),
        [
            NotificationKind::SessionAbandoned,
            NotificationKind::SessionRevived
        ]
    );
    let account_stream = notifications
        .iter()
        .find(|n| n.kind == NotificationKind::AccountLoginRequired)
        .unwrap()
        .stream
        .clone();
    assert_eq!(
        kinds_of(&notifications, account_stream.as_str()),
        [
            NotificationKind::AccountLoginRequired,
            NotificationKind::AccountReactivated,
            NotificationKind::AccountRevoked
        ]
    );
    // Thin payloads with what the backend needs.
    let won = &notifications[0];
    let payload = won.payload();
    assert_eq!(payload["type"], "session.succeeded");
    assert_eq!(payload["data"]["session_id"], "won");
    assert_eq!(payload["data"]["institution_id"], "ins_3");
    assert_eq!(payload["data"]["provider"], "moneykit");
    assert_eq!(payload["data"]["id"], won.id.to_string());
    let left = notifications
        .iter()
        .find(|n| n.kind == NotificationKind::SessionExited)
        .unwrap();
    assert_eq!(left.data.exit_status.as_deref(), Some("requires_mfa"));
    let login = notifications
        .iter()
        .find(|n| n.kind == NotificationKind::AccountLoginRequired)
        .unwrap();
    assert_eq!(login.data.external_user_id.as_deref(), Some("user-7"));
    assert_eq!(login.data.institution_id.as_deref(), Some("44"));

    // Ids are unique and the same on every read; a read from a later position sees the rest.
    let mut ids: Vec<_> = notifications.iter().map(|n| n.id).collect();
    ids.dedup();
    assert_eq!(ids.len(), 7);
    let again = take(&engine, Position(0), 7).await;
    assert_eq!(again, notifications);
    let from = notifications[4].id.position;
    let rest = take(&engine, from, 7 - 5).await;
    assert_eq!(rest[..], notifications[5..]);

    // And after a reopen (a deriver that starts with nothing held folds streams again).
    engine.shutdown().await.unwrap();
    drop(engine);
    let engine = Engine::open(dir.path()).unwrap();
    let reopened = take(&engine, Position(0), 7).await;
    assert_eq!(reopened, notifications);
    let late = take(&engine, Position(notifications[6].id.position.0 - 1), 1).await;
    assert_eq!(late[..], notifications[6..]);
}

#[tokio::test]
async fn a_marker_is_stored_once_per_silence_and_void_if_an_event_came_first() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    engine
        .ingest_batch(vec![
            event("s", EventKind::Opened, 0),
            // The timer saw minute 0, but this reached the store before its marker.
            event("s", EventKind::InstitutionSelected, 5),
        ])
        .await
        .unwrap();
    let now = Utc::now();
    let stale = IncomingEvent {
        dedupe_key: Some(marker_dedupe_key(&sid("s"), t(0))),
        received_at: Some(now),
        ..IncomingEvent::new(sid("s"), Provider::Moneykit, marker(t(0), now))
    };
    let outcome = engine.ingest(stale.clone()).await.unwrap();
    assert!(
        matches!(outcome, IngestOutcome::Accepted { .. }),
        "{outcome:?}"
    );
    let view = engine.session(&sid("s")).await.unwrap().unwrap();
    assert_eq!(view.state.abandoned_at(), None, "a void marker declared it");
    // The same marker again is a duplicate, on this node or any other.
    let again = engine.ingest(stale).await.unwrap();
    assert!(
        matches!(again, IngestOutcome::Duplicate { .. }),
        "{again:?}"
    );
    // The timer declares it on the time it sees, once its arrivals are old too.
    let report = engine
        .declare_abandoned(now + Duration::minutes(31))
        .await
        .unwrap();
    assert_eq!(report.declared, 1);
    let abandoned = engine
        .sessions(SessionFilter {
            abandoned: Some(true),
            ..SessionFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(abandoned.len(), 1);
    let history = engine.history(&sid("s")).await.unwrap().unwrap();
    let markers = history
        .iter()
        .filter(|entry| entry.event == "abandoned")
        .count();
    assert_eq!(markers, 2, "the void marker and the one that took effect");
    let gauges = engine.gauges().await.unwrap();
    assert_eq!(gauges.abandoned, 1);
    let report = engine.verify().await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test]
async fn a_session_is_declared_within_a_tick_of_crossing_a_short_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open_with(EngineConfig {
        inactivity_timeout: Duration::seconds(2),
        ..EngineConfig::new(dir.path())
    })
    .unwrap();
    let now = Utc::now();
    engine
        .ingest(IncomingEvent::new(
            sid("live"),
            Provider::Moneykit,
            Event::new(EventKind::Opened).at(now),
        ))
        .await
        .unwrap();
    // Before the timeout: nothing.
    let report = engine
        .declare_abandoned(now + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(report.declared, 0);
    // At the timeout by the event's time, but it arrived a moment after `now`: not yet.
    let stored = engine
        .subscribe(Position(0))
        .next()
        .await
        .unwrap()
        .stored_at;
    let report = engine
        .declare_abandoned(stored + Duration::seconds(2) - Duration::milliseconds(1))
        .await
        .unwrap();
    assert_eq!(report.declared, 0);
    let declared = stored + Duration::seconds(2);
    let report = engine.declare_abandoned(declared).await.unwrap();
    assert_eq!(report.declared, 1);
    let notifications = take(&engine, Position(0), 1).await;
    assert_eq!(notifications[0].kind, NotificationKind::SessionAbandoned);
    assert_eq!(notifications[0].data.abandoned_at, Some(declared));
}

//! Funnels over a known synthetic population, with the expected numbers worked out by hand in
//! the comments.

use chrono::{DateTime, Duration, TimeZone, Utc};
use linkflow_core::funnel::{abandoned, funnel, reached, FunnelQuery, GroupBy};
use linkflow_core::{fold, ErrorInfo, Event, EventKind, LinkType, Phase, Provider, Session};

fn t(seconds: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 9, 0, 0).unwrap() + Duration::seconds(seconds)
}

fn ev(kind: EventKind, at: i64) -> Event {
    Event::new(kind).at(t(at))
}

fn with_institution(kind: EventKind, at: i64) -> Event {
    ev(kind, at).with_institution("ins_1", None)
}

/// The population, with (provider, session) and what each one is.
fn population() -> Vec<(Provider, Session)> {
    let s1 = fold(&[
        // Credentials + MFA, succeeds: opened 10 s, selected 10 s, authenticating 10 s, mfa 10 s,
        // accounts 10 s.
        ev(EventKind::Opened, 0),
        with_institution(EventKind::InstitutionSelected, 10),
        ev(EventKind::CredentialsSubmitted, 20),
        ev(EventKind::OtpSubmitted, 30),
        ev(EventKind::AccountsSelected, 40),
        ev(EventKind::Succeeded, 50),
    ])
    .unwrap();
    // Knot-like: only the success; it must have passed every main step before.
    let s2 = fold(&[with_institution(EventKind::Succeeded, 0)]).unwrap();
    // Exits from institution_selected with a status: opened 20 s, selected 20 s.
    let s3 = fold(&[
        ev(EventKind::Opened, 0),
        with_institution(EventKind::InstitutionSelected, 20),
        ev(EventKind::Exited, 40).with_exit_status("user_closed"),
    ])
    .unwrap();
    // Abandoned while authenticating (last event at 150 s), after an error: opened 100 s.
    let s4 = fold(&[
        ev(EventKind::Opened, 0),
        with_institution(EventKind::CredentialsSubmitted, 100),
        ev(EventKind::Error, 150).with_error(ErrorInfo {
            code: Some("invalid_credentials".into()),
            ..ErrorInfo::default()
        }),
    ])
    .unwrap();
    // Revived late: silent for an hour, then a new event 5 minutes before `now`: in progress.
    let s5 = fold(&[
        ev(EventKind::Opened, 0),
        ev(EventKind::ScreenChanged, 3_600).with_screen("Finder"),
    ])
    .unwrap();
    // Relink that exited, then a late success won: opened 5 s, selected 5 s, exited 5 s.
    let s6 = fold(&[
        ev(EventKind::Opened, 0).with_link_type(LinkType::Relink),
        with_institution(EventKind::InstitutionSelected, 5),
        ev(EventKind::Exited, 10),
        ev(EventKind::Succeeded, 15),
    ])
    .unwrap();
    // Benji-like exit before anything: dropped at created.
    let s7 = fold(&[ev(EventKind::Exited, 0)]).unwrap();
    vec![
        (Provider::Moneykit, s1),
        (Provider::Knot, s2),
        (Provider::Moneykit, s3),
        (Provider::Moneykit, s4),
        (Provider::Moneykit, s5),
        (Provider::Moneykit, s6),
        (Provider::Benji, s7),
    ]
}

/// Judged 5 minutes after s5's late event: s4 (silent since 150 s) is past 30 minutes.
fn now() -> DateTime<Utc> {
    t(3_600 + 300)
}

#[test]
fn abandonment_is_derived_from_the_last_event_time_and_a_late_event_revives() {
    let sessions = population();
    let timeout = Duration::minutes(30);
    let abandoned_ids: Vec<usize> = sessions
        .iter()
        .enumerate()
        .filter(|(_, (_, session))| abandoned(session, now(), timeout))
        .map(|(index, _)| index + 1)
        .collect();
    assert_eq!(abandoned_ids, vec![4]);
    // s5 was abandoned before its late event arrived, and is live again with it.
    let before_late_event = fold(&[ev(EventKind::Opened, 0)]).unwrap();
    assert!(abandoned(&before_late_event, t(3_500), timeout));
    assert!(!abandoned(&sessions[4].1, now(), timeout));
    // Terminal sessions are never abandoned.
    assert!(!abandoned(&sessions[0].1, t(1_000_000), timeout));
}

#[test]
fn reached_counts_skipped_main_steps_but_not_the_mfa_side_step() {
    let sessions = population();
    let knot = &sessions[1].1;
    for phase in [
        Phase::Opened,
        Phase::InstitutionSelected,
        Phase::Authenticating,
        Phase::Authenticated,
        Phase::PermissionsGranted,
        Phase::AccountsSelected,
        Phase::Succeeded,
    ] {
        assert!(reached(knot, phase), "{phase}");
    }
    assert!(!reached(knot, Phase::Mfa));
    assert!(reached(&sessions[0].1, Phase::Mfa));
    assert!(!reached(&sessions[6].1, Phase::Opened));
}

#[test]
fn the_funnel_of_the_population_matches_the_hand_computed_numbers() {
    let sessions = population();
    let funnels = funnel(
        sessions.iter().map(|(p, s)| (*p, s)),
        &FunnelQuery::at(now()),
    );
    assert_eq!(funnels.len(), 1);
    let all = &funnels[0];
    assert_eq!(
        (
            all.sessions,
            all.succeeded,
            all.exited,
            all.abandoned,
            all.in_progress
        ),
        (7, 3, 2, 1, 1)
    );
    let reached: Vec<(Phase, u64)> = all
        .steps
        .iter()
        .map(|step| (step.phase, step.reached))
        .collect();
    assert_eq!(
        reached,
        vec![
            (Phase::Created, 7),
            (Phase::Opened, 6),
            (Phase::InstitutionSelected, 5),
            (Phase::Authenticating, 4),
            (Phase::Mfa, 1),
            (Phase::Authenticated, 3),
            (Phase::PermissionsGranted, 3),
            (Phase::AccountsSelected, 3),
            (Phase::Succeeded, 3),
        ]
    );
    let step = |phase: Phase| all.steps.iter().find(|step| step.phase == phase).unwrap();
    assert_eq!(step(Phase::Created).conversion, None);
    assert_eq!(step(Phase::Opened).conversion, Some(6.0 / 7.0));
    assert_eq!(step(Phase::Mfa).conversion, Some(1.0 / 4.0));
    assert_eq!(step(Phase::Authenticated).conversion, Some(3.0 / 4.0));
    assert_eq!(step(Phase::Succeeded).conversion, Some(1.0));
    // Drop-off: s7 exited at created, s3 at institution_selected (status user_closed), s4
    // abandoned while authenticating. s6's exit does not count: its late success won.
    assert_eq!(step(Phase::Created).dropped_exited, 1);
    assert_eq!(step(Phase::InstitutionSelected).dropped_exited, 1);
    assert_eq!(
        step(Phase::InstitutionSelected).exit_statuses,
        vec![("user_closed".to_owned(), 1)]
    );
    assert_eq!(step(Phase::Authenticating).dropped_abandoned, 1);
    assert_eq!(
        step(Phase::Authenticating).error_codes,
        vec![("invalid_credentials".to_owned(), 1)]
    );
    // Time in `opened`: s1 10 s, s3 20 s, s4 100 s, s6 5 s -> sorted [5, 10, 20, 100]:
    // nearest-rank p50 = 10 s, p90 = 100 s.
    assert_eq!(step(Phase::Opened).time_in_phase_p50_s, Some(10.0));
    assert_eq!(step(Phase::Opened).time_in_phase_p90_s, Some(100.0));
    assert_eq!(step(Phase::Mfa).time_in_phase_p50_s, Some(10.0));
}

#[test]
fn funnels_are_filtered_and_grouped() {
    let sessions = population();
    let mut query = FunnelQuery::at(now());
    query.group_by = GroupBy::Provider;
    let funnels = funnel(sessions.iter().map(|(p, s)| (*p, s)), &query);
    let groups: Vec<(&str, u64)> = funnels
        .iter()
        .map(|f| (f.group.as_str(), f.sessions))
        .collect();
    assert_eq!(groups, vec![("benji", 1), ("knot", 1), ("moneykit", 5)]);

    let mut query = FunnelQuery::at(now());
    query.group_by = GroupBy::LinkType;
    let funnels = funnel(sessions.iter().map(|(p, s)| (*p, s)), &query);
    assert!(funnels
        .iter()
        .any(|f| f.group == "relink" && f.sessions == 1 && f.succeeded == 1));

    let mut query = FunnelQuery::at(now());
    query.institution = Some("ins_1".into());
    query.since = Some(t(0));
    query.until = Some(t(1));
    let funnels = funnel(sessions.iter().map(|(p, s)| (*p, s)), &query);
    // First event at 0 s and institution ins_1: s1, s2, s3, s4, s6.
    assert_eq!(funnels[0].sessions, 5);
    let mut query = FunnelQuery::at(now());
    query.provider = Some(Provider::Knot);
    assert_eq!(
        funnel(sessions.iter().map(|(p, s)| (*p, s)), &query)[0].succeeded,
        1
    );
}

//! The session semantics of `docs/state-machine.md`, one test per rule a user relies on.

use chrono::{DateTime, TimeZone, Utc};
use linkflow_core::{fold, ErrorInfo, Event, EventKind, Phase, Rejection, RuleKind, Session, Step};

fn t(second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2023, 11, 29, 12, 0, second).unwrap()
}

fn ev(kind: EventKind, second: u32) -> Event {
    Event::new(kind).at(t(second))
}

fn select(id: &str, second: u32) -> Event {
    ev(EventKind::InstitutionSelected, second).with_institution(id, Some("Bank"))
}

fn session_of(events: &[Event]) -> Session {
    fold(events).unwrap_or_else(|error| panic!("sequence refused: {error}"))
}

fn rejection_after(events: &[Event], refused: Event) -> Rejection {
    let session = session_of(events);
    let rejection = session.apply(&refused).unwrap_err();
    // A refused event never changes the session.
    let mut in_place = session.clone();
    assert!(in_place.apply_in_place(&refused).is_err());
    assert_eq!(in_place, session);
    rejection
}

/// Rule 2 (a phase after the selection needs a known institution) was dropped: the institution
/// is data. Benji's current SDK never names the partner, and its flows must still succeed.
#[test]
fn accepts_accounts_right_after_open_without_institution() {
    let session = session_of(&[ev(EventKind::Opened, 0), ev(EventKind::AccountsSelected, 1)]);
    assert_eq!(session.phase(), Phase::AccountsSelected);
    assert_eq!(session.institution(), None);
    let session = session_of(&[ev(EventKind::Authenticated, 0), ev(EventKind::Succeeded, 1)]);
    assert_eq!(session.phase(), Phase::Succeeded);
    assert_eq!(session.institution(), None);
}

#[test]
fn a_rejection_names_the_phase_the_event_and_what_is_accepted() {
    let rejection = rejection_after(
        &[ev(EventKind::Opened, 0), ev(EventKind::Succeeded, 1)],
        ev(EventKind::AccountsSelected, 2),
    );
    let message = rejection.to_string();
    assert!(message.contains("`accounts_selected`"), "{message}");
    assert!(message.contains("`succeeded`"), "{message}");
    assert!(message.contains("exited"), "{message}");
}

/// A success right after the open is a forward skip (the provider reported nothing between);
/// it used to be refused for the unknown institution (rule 2, dropped).
#[test]
fn accepts_success_right_after_open() {
    let session = session_of(&[ev(EventKind::Opened, 0), ev(EventKind::Succeeded, 1)]);
    assert_eq!(session.phase(), Phase::Succeeded);
    let rejection = rejection_after(
        &[ev(EventKind::Opened, 0), ev(EventKind::Succeeded, 1)],
        ev(EventKind::Opened, 2),
    );
    assert_eq!(rejection.phase(), Phase::Succeeded);
    assert_eq!(rejection.event(), &EventKind::Opened);
}

#[test]
fn rejects_a_second_open() {
    let rejection = rejection_after(
        &[ev(EventKind::Opened, 0), select("ins_1", 1)],
        ev(EventKind::Opened, 2),
    );
    assert!(matches!(
        rejection,
        Rejection::NotAccepted {
            phase: Phase::InstitutionSelected,
            event: EventKind::Opened,
            ..
        }
    ));
    let rejection = rejection_after(&[ev(EventKind::Opened, 0)], ev(EventKind::Opened, 1));
    assert_eq!(rejection.phase(), Phase::Opened);
}

#[test]
fn created_is_accepted_only_as_the_first_phase_event() {
    let session = session_of(&[ev(EventKind::Created, 0), ev(EventKind::Opened, 1)]);
    assert_eq!(session.phase(), Phase::Opened);
    let rejection = rejection_after(&[ev(EventKind::Created, 0)], ev(EventKind::Created, 1));
    assert!(matches!(rejection, Rejection::NotFirstPhaseEvent { .. }));
    rejection_after(&[ev(EventKind::Opened, 0)], ev(EventKind::Created, 1));
}

#[test]
fn rejects_credentials_after_accounts_selected() {
    let flow = [
        ev(EventKind::Opened, 0),
        select("ins_1", 1),
        ev(EventKind::CredentialsSubmitted, 2),
        ev(EventKind::AccountsSelected, 3),
    ];
    let rejection = rejection_after(&flow, ev(EventKind::CredentialsSubmitted, 4));
    assert_eq!(rejection.phase(), Phase::AccountsSelected);
    assert_eq!(
        rejection.accepts(),
        &[Step::Succeed, Step::Exit],
        "accounts_selected accepts only success and exit"
    );
}

/// After an exit only a success (it wins) and an exit reported again (recorded; the first
/// exit's phase stays, a status it lacked is filled) are accepted.
#[test]
fn rejects_every_phase_event_after_exit_except_success_and_a_repeated_exit() {
    let flow = [
        ev(EventKind::Opened, 0),
        select("ins_1", 1),
        ev(EventKind::Exited, 2),
    ];
    for kind in EventKind::KNOWN
        .into_iter()
        .filter(|kind| kind.step().is_some())
    {
        let event = ev(kind.clone(), 3).with_institution("ins_1", None);
        let result = session_of(&flow).apply(&event);
        if kind == EventKind::Succeeded {
            assert_eq!(result.unwrap().phase(), Phase::Succeeded);
        } else if kind == EventKind::Exited {
            let session = result.unwrap();
            assert_eq!(session.phase(), Phase::Exited);
            assert_eq!(session.exit().unwrap().phase, Phase::InstitutionSelected);
        } else {
            let rejection = result.unwrap_err();
            assert_eq!(rejection.phase(), Phase::Exited, "{kind}");
        }
    }
    let confirmed = session_of(&[
        ev(EventKind::Opened, 0),
        ev(EventKind::Exited, 2),
        ev(EventKind::Exited, 3).with_exit_status("requires_credentials"),
        ev(EventKind::Exited, 4).with_exit_status("later"),
    ]);
    let exit = confirmed.exit().unwrap();
    assert_eq!(exit.phase, Phase::Opened);
    assert_eq!(exit.status.as_deref(), Some("requires_credentials"));
}

#[test]
fn accepts_an_oauth_flow_without_credentials() {
    let session = session_of(&[
        ev(EventKind::Opened, 0),
        select("ins_oauth", 1),
        ev(EventKind::OauthOpened, 2),
        ev(EventKind::PermissionsGranted, 3),
        ev(EventKind::AccountsSelected, 4),
        ev(EventKind::Succeeded, 5),
    ]);
    assert_eq!(session.phase(), Phase::Succeeded);
    assert_eq!(session.institution().unwrap().id, "ins_oauth");
}

#[test]
fn accepts_an_mfa_flow() {
    let session = session_of(&[
        ev(EventKind::Opened, 0),
        select("ins_1", 1),
        ev(EventKind::CredentialsSubmitted, 2),
        ev(EventKind::OtpDeviceSubmitted, 3),
        ev(EventKind::OtpSubmitted, 4),
        ev(EventKind::MfaSubmitted, 5),
        ev(EventKind::AccountsSelected, 6),
        ev(EventKind::Succeeded, 7),
    ]);
    assert_eq!(session.phase(), Phase::Succeeded);
    assert_eq!(session.counts().phase, 8);
}

#[test]
fn accepts_going_back_to_another_institution_from_mfa() {
    let mut session = session_of(&[
        ev(EventKind::Opened, 0),
        select("ins_1", 1),
        ev(EventKind::CredentialsSubmitted, 2),
        ev(EventKind::OtpSubmitted, 3),
    ]);
    assert_eq!(session.phase(), Phase::Mfa);
    let applied = session.apply_in_place(&select("ins_2", 4)).unwrap();
    assert_eq!(applied.rule, Some(RuleKind::Reselect));
    assert_eq!(session.phase(), Phase::InstitutionSelected);
    assert_eq!(session.institution().unwrap().id, "ins_2");
}

#[test]
fn resubmitting_credentials_from_mfa_is_a_retry() {
    let mut session = session_of(&[
        ev(EventKind::Opened, 0),
        select("ins_1", 1),
        ev(EventKind::CredentialsSubmitted, 2),
        ev(EventKind::MfaSubmitted, 3),
    ]);
    let applied = session
        .apply_in_place(&ev(EventKind::CredentialsSubmitted, 4))
        .unwrap();
    assert_eq!(applied.rule, Some(RuleKind::Retry));
    assert_eq!(session.phase(), Phase::Authenticating);
    let applied = session
        .apply_in_place(&ev(EventKind::CredentialsSubmitted, 5))
        .unwrap();
    assert_eq!(applied.rule, Some(RuleKind::Retry));
}

#[test]
fn forward_skips_are_legal() {
    // MoneyKit's own sample has no select_institution: the institution arrives in meta.
    let session = session_of(&[
        ev(EventKind::Opened, 0),
        ev(EventKind::PermissionsGranted, 1).with_institution("ins_1", None),
    ]);
    assert_eq!(session.phase(), Phase::PermissionsGranted);
    // Benji has no open event.
    let session = session_of(&[select("partner_1", 0), ev(EventKind::Authenticated, 1)]);
    assert_eq!(session.phase(), Phase::Authenticated);
}

#[test]
fn exit_after_success_is_recorded_and_the_phase_stays_succeeded() {
    let session = session_of(&[
        ev(EventKind::Opened, 0),
        select("ins_1", 1),
        ev(EventKind::Succeeded, 2),
        ev(EventKind::Exited, 3).with_exit_status("done"),
    ]);
    assert_eq!(session.phase(), Phase::Succeeded);
    let exit = session.exit().unwrap();
    assert_eq!(exit.phase, Phase::Succeeded);
    assert_eq!(exit.status.as_deref(), Some("done"));
}

#[test]
fn late_success_wins_over_exit() {
    let session = session_of(&[
        ev(EventKind::Opened, 0),
        select("ins_1", 1),
        ev(EventKind::AccountsSelected, 2),
        ev(EventKind::Exited, 3),
        ev(EventKind::Succeeded, 2),
    ]);
    assert_eq!(session.phase(), Phase::Succeeded);
    assert_eq!(session.exit().unwrap().phase, Phase::AccountsSelected);
    // A second success is recorded as a confirmation (Plaid reports one success by up to
    // three routes): the session stays succeeded, and the first success's institution stays.
    let session = session_of(&[
        ev(EventKind::Opened, 0),
        select("ins_1", 1),
        ev(EventKind::Succeeded, 2),
        ev(EventKind::Succeeded, 3).with_institution("ins_2", None),
    ]);
    assert_eq!(session.phase(), Phase::Succeeded);
    assert_eq!(session.institution().unwrap().id, "ins_1");
    assert_eq!(session.counts().phase, 4);
    // Nothing but an exit follows a success.
    rejection_after(
        &[ev(EventKind::Opened, 0), ev(EventKind::Succeeded, 2)],
        ev(EventKind::MfaSubmitted, 3),
    );
}

#[test]
fn errors_are_recorded_and_never_end_a_session() {
    let error = |id: &str| ErrorInfo {
        id: Some(id.into()),
        code: Some("partner_connect_error".into()),
        message: None,
        request_id: None,
    };
    let session = session_of(&[
        ev(EventKind::Opened, 0),
        select("ins_1", 1),
        ev(EventKind::CredentialsSubmitted, 2),
        ev(EventKind::Error, 3).with_error(error("e1")),
        ev(EventKind::CredentialsSubmitted, 4),
        ev(EventKind::Error, 5).with_error(error("e2")),
    ]);
    assert_eq!(session.phase(), Phase::Authenticating);
    assert_eq!(session.counts().errors, 2);
    assert_eq!(
        session.last_error().unwrap().value.id.as_deref(),
        Some("e2")
    );
}

#[test]
fn telemetry_and_unrecognized_events_are_accepted_in_every_phase() {
    let flows: Vec<Vec<Event>> = vec![
        vec![],
        vec![ev(EventKind::Opened, 0)],
        vec![
            ev(EventKind::Opened, 0),
            select("i", 1),
            ev(EventKind::Succeeded, 2),
        ],
        vec![ev(EventKind::Opened, 0), ev(EventKind::Exited, 1)],
    ];
    for flow in flows {
        let session = session_of(&flow);
        for kind in [
            EventKind::ScreenChanged,
            EventKind::WentBack,
            EventKind::Error,
            EventKind::Unrecognized {
                raw_name: "brand_new".into(),
            },
        ] {
            let after = session.apply(&ev(kind, 9)).unwrap();
            assert_eq!(after.phase(), session.phase());
        }
    }
}

#[test]
fn latest_screen_and_error_follow_event_time_not_arrival() {
    let session = session_of(&[
        ev(EventKind::ScreenChanged, 10).with_screen("Accounts"),
        ev(EventKind::ScreenChanged, 5).with_screen("Credentials"),
        ev(EventKind::Error, 20).with_error(ErrorInfo {
            id: Some("late".into()),
            ..ErrorInfo::default()
        }),
        ev(EventKind::Error, 15).with_error(ErrorInfo {
            id: Some("early".into()),
            ..ErrorInfo::default()
        }),
    ]);
    assert_eq!(session.current_screen().unwrap().value, "Accounts");
    assert_eq!(
        session.last_error().unwrap().value.id.as_deref(),
        Some("late")
    );
    assert_eq!(session.first_event_at(), Some(t(5)));
    assert_eq!(session.last_event_at(), Some(t(20)));
}

#[test]
fn late_telemetry_does_not_replace_the_institution_a_phase_event_chose() {
    let session = session_of(&[
        select("ins_2", 5),
        ev(EventKind::ScreenChanged, 1).with_institution("ins_1", None),
    ]);
    assert_eq!(session.institution().unwrap().id, "ins_2");
}

/// Event-time order (`linkflow_core::timeline`): arrivals folded by what happened.
mod event_time_order {
    use super::*;
    use linkflow_core::timeline::{fold, Folded};

    fn rejected(folded: &Folded<Session>) -> Vec<u64> {
        folded
            .placed
            .iter()
            .filter(|placed| placed.verdict.is_err())
            .map(|placed| placed.arrival)
            .collect()
    }

    fn order(folded: &Folded<Session>) -> Vec<u64> {
        folded.placed.iter().map(|placed| placed.arrival).collect()
    }

    /// The example of issue 24: the selection at t10 arrives last, after the success, and
    /// takes its place: nothing is rejected, the session visited `institution_selected`.
    #[test]
    fn a_late_selection_takes_its_place_in_time() {
        let folded = fold::<Session, _>(&[
            ev(EventKind::Opened, 0),
            ev(EventKind::CredentialsSubmitted, 20),
            ev(EventKind::Succeeded, 40),
            select("ins_1", 10),
        ]);
        assert_eq!(rejected(&folded), Vec::<u64>::new());
        assert_eq!(order(&folded), [1, 4, 2, 3]);
        assert!(folded.placed[1].late);
        let session = &folded.timeline.state;
        assert_eq!(session.phase(), Phase::Succeeded);
        assert!(session.journey().visited(Phase::InstitutionSelected));
        assert_eq!(session.institution().unwrap().id, "ins_1");
    }

    /// Credentials at t40 and a success at t21: the success is accepted and the credentials
    /// rejected, in either delivery order.
    #[test]
    fn the_classification_does_not_depend_on_delivery_order() {
        let open = ev(EventKind::Opened, 0);
        let credentials = ev(EventKind::CredentialsSubmitted, 40);
        let success = ev(EventKind::Succeeded, 21);
        let a = fold::<Session, _>(&[open.clone(), credentials.clone(), success.clone()]);
        let b = fold::<Session, _>(&[open, success, credentials]);
        assert_eq!(a.timeline.state, b.timeline.state);
        assert_eq!(a.timeline.state.phase(), Phase::Succeeded);
        // Arrival 2 in the first order and arrival 3 in the second: the credentials.
        assert_eq!((rejected(&a), rejected(&b)), (vec![2], vec![3]));
    }

    /// A success and an exit of the same instant: the table's forward order puts the success
    /// first (an exit after a success is recorded, the phase stays succeeded).
    #[test]
    fn ties_in_time_go_by_the_tables_forward_order_then_arrival() {
        let folded = fold::<Session, _>(&[
            ev(EventKind::Opened, 0),
            ev(EventKind::Exited, 9),
            ev(EventKind::Succeeded, 9),
        ]);
        assert_eq!(order(&folded), [1, 3, 2]);
        assert_eq!(folded.timeline.state.phase(), Phase::Succeeded);
        assert_eq!(
            folded.timeline.state.exit().unwrap().phase,
            Phase::Succeeded
        );
    }

    /// Benji's current SDK sends no times and no partner: its flow ends succeeded with the
    /// institution unknown, nothing rejected.
    #[test]
    fn an_untimed_flow_without_partner_succeeds_with_the_institution_unknown() {
        let folded = fold::<Session, _>(&[
            Event::new(EventKind::Authenticated),
            Event::new(EventKind::Succeeded),
            Event::new(EventKind::Exited),
        ]);
        assert_eq!(rejected(&folded), Vec::<u64>::new());
        assert_eq!(folded.timeline.state.phase(), Phase::Succeeded);
        assert_eq!(folded.timeline.state.institution(), None);
    }

    /// Without times, an event takes its arrival place when legal there, else the latest
    /// earlier place where it and the accepted events around it are legal: a partner choice
    /// arriving after the success goes before the authentication; a second open is refused
    /// wherever it would go.
    #[test]
    fn an_untimed_event_goes_to_the_latest_earlier_place_where_all_stay_legal() {
        let folded = fold::<Session, _>(&[
            Event::new(EventKind::Authenticated),
            Event::new(EventKind::Succeeded),
            Event::new(EventKind::InstitutionSelected).with_institution("marriott", None),
        ]);
        assert_eq!(rejected(&folded), Vec::<u64>::new());
        assert_eq!(order(&folded), [3, 1, 2]);
        assert_eq!(folded.timeline.state.institution().unwrap().id, "marriott");
        let folded = fold::<Session, _>(&[
            Event::new(EventKind::Opened),
            Event::new(EventKind::Authenticated),
            Event::new(EventKind::Opened),
        ]);
        assert_eq!(rejected(&folded), vec![3]);
        assert_eq!(order(&folded), [1, 2, 3]);
    }

    /// Mixed sessions (Knot's SDK callbacks without time, its webhooks with): an event without
    /// a time stays after the timed events that arrived before it, and a timed event that
    /// arrives later goes after the untimed ones that precede the first timed event later
    /// than it. So SDK steps first, then the webhook's success, then the SDK's exit.
    #[test]
    fn mixed_timed_and_untimed_events_follow_the_documented_rule() {
        let folded = fold::<Session, _>(&[
            Event::new(EventKind::InstitutionSelected).with_institution("10", None),
            Event::new(EventKind::CredentialsSubmitted),
            Event::new(EventKind::StepUpRequired),
            ev(EventKind::Succeeded, 30),
            Event::new(EventKind::Succeeded),
            Event::new(EventKind::Exited),
        ]);
        assert_eq!(order(&folded), [1, 2, 3, 4, 5, 6]);
        // The SDK's own success after the webhook's: recorded as a confirmation.
        assert_eq!(rejected(&folded), Vec::<u64>::new());
        assert_eq!(folded.timeline.state.phase(), Phase::Succeeded);
        assert!(folded.timeline.state.journey().visited(Phase::Mfa));
    }
}

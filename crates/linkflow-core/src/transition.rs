//! The session state machine as data: one table of (phase, step) -> outcome.
//!
//! [`crate::Session::apply`], the diagram generators and the proptest walks all read
//! [`SESSION_TABLE`]; there is no second copy of the rules. One rule is not a row because it
//! holds everywhere: telemetry / unrecognized events are accepted in every phase without
//! moving it. No phase needs a known institution: the institution is data, unknown until an
//! event names one (Benji's current SDK never does).

use serde::{Deserialize, Serialize};

use crate::event::Step;
use crate::phase::Phase;

/// Why a row exists; the diagram draws each kind differently and the property tests use it to
/// tell an allowed backward move from a bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// The first phase event of a session (`create`, `open`).
    Start,
    /// A move to a later phase, possibly skipping phases the provider does not report.
    Forward,
    /// Back-edge: another institution chosen before authentication completed.
    Reselect,
    /// Back-edge: credentials / OTP / MFA submitted again while authenticating or in MFA.
    Retry,
    /// Terminal exception: an exit after a success is recorded; the phase stays `succeeded`.
    ExitAfterSuccess,
    /// Terminal exception: a success after an exit wins (`exited` -> `succeeded`).
    LateSuccess,
    /// Terminal exception: a success reported again is recorded; the phase stays
    /// `succeeded`. Plaid reports one success up to three times, by different routes (the
    /// `HANDOFF` event, `onSuccess`, the `SESSION_FINISHED` webhook), each with data the others
    /// lack.
    SuccessConfirmed,
    /// Terminal exception: an exit reported again is recorded; the phase stays `exited` and
    /// the first exit's phase stays (Plaid's `EXIT` event, `onExit` and `SESSION_FINISHED`).
    ExitConfirmed,
}

impl RuleKind {
    /// True for the named exceptions that may move the phase rank backward.
    pub const fn may_move_backward(self) -> bool {
        matches!(
            self,
            RuleKind::Reselect | RuleKind::Retry | RuleKind::LateSuccess
        )
    }

    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            RuleKind::Start => "start",
            RuleKind::Forward => "forward",
            RuleKind::Reselect => "reselect",
            RuleKind::Retry => "retry",
            RuleKind::ExitAfterSuccess => "exit_after_success",
            RuleKind::LateSuccess => "late_success",
            RuleKind::SuccessConfirmed => "success_confirmed",
            RuleKind::ExitConfirmed => "exit_confirmed",
        }
    }
}

/// An extra condition on a row, checked against the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Guard {
    /// No condition.
    Always,
    /// Only while the session has accepted no phase event yet (`created` may come once, first).
    FirstPhaseEvent,
}

/// One row of the table: in any phase of `from`, the step `step` moves the session to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The step (a group of phase event kinds) this row accepts.
    pub step: Step,
    /// The phases in which the row applies.
    pub from: &'static [Phase],
    /// The phase after the step (equal to the current one for self-loops and recorded events).
    pub to: Phase,
    /// Why the row exists.
    pub kind: RuleKind,
    /// An extra condition on the session.
    pub guard: Guard,
}

use Phase::{
    AccountsSelected, Authenticated, Authenticating, Created, Exited, InstitutionSelected, Mfa,
    Opened, PermissionsGranted, Succeeded,
};

const fn rule(step: Step, from: &'static [Phase], to: Phase, kind: RuleKind) -> Rule {
    Rule {
        step,
        from,
        to,
        kind,
        guard: Guard::Always,
    }
}

/// The session state machine. Read it top to bottom as the flow goes; a forward row lists
/// every earlier non-terminal phase because providers skip steps they do not report.
pub const SESSION_TABLE: &[Rule] = &[
    Rule {
        step: Step::Create,
        from: &[Created],
        to: Created,
        kind: RuleKind::Start,
        guard: Guard::FirstPhaseEvent,
    },
    rule(Step::Open, &[Created], Opened, RuleKind::Start),
    rule(
        Step::SelectInstitution,
        &[Created, Opened],
        InstitutionSelected,
        RuleKind::Forward,
    ),
    rule(
        Step::SelectInstitution,
        &[InstitutionSelected, Authenticating, Mfa],
        InstitutionSelected,
        RuleKind::Reselect,
    ),
    rule(
        Step::StartAuthentication,
        &[Created, Opened, InstitutionSelected],
        Authenticating,
        RuleKind::Forward,
    ),
    rule(
        Step::StartAuthentication,
        &[Authenticating, Mfa],
        Authenticating,
        RuleKind::Retry,
    ),
    rule(
        Step::SubmitMfa,
        &[Created, Opened, InstitutionSelected, Authenticating],
        Mfa,
        RuleKind::Forward,
    ),
    rule(Step::SubmitMfa, &[Mfa], Mfa, RuleKind::Retry),
    rule(
        Step::Authenticate,
        &[Created, Opened, InstitutionSelected, Authenticating, Mfa],
        Authenticated,
        RuleKind::Forward,
    ),
    rule(
        Step::GrantPermissions,
        &[
            Created,
            Opened,
            InstitutionSelected,
            Authenticating,
            Mfa,
            Authenticated,
        ],
        PermissionsGranted,
        RuleKind::Forward,
    ),
    rule(
        Step::SelectAccounts,
        &[
            Created,
            Opened,
            InstitutionSelected,
            Authenticating,
            Mfa,
            Authenticated,
            PermissionsGranted,
        ],
        AccountsSelected,
        RuleKind::Forward,
    ),
    rule(
        Step::Succeed,
        &[
            Created,
            Opened,
            InstitutionSelected,
            Authenticating,
            Mfa,
            Authenticated,
            PermissionsGranted,
            AccountsSelected,
        ],
        Succeeded,
        RuleKind::Forward,
    ),
    rule(Step::Succeed, &[Exited], Succeeded, RuleKind::LateSuccess),
    rule(
        Step::Succeed,
        &[Succeeded],
        Succeeded,
        RuleKind::SuccessConfirmed,
    ),
    rule(
        Step::Exit,
        &[
            Created,
            Opened,
            InstitutionSelected,
            Authenticating,
            Mfa,
            Authenticated,
            PermissionsGranted,
            AccountsSelected,
        ],
        Exited,
        RuleKind::Forward,
    ),
    rule(
        Step::Exit,
        &[Succeeded],
        Succeeded,
        RuleKind::ExitAfterSuccess,
    ),
    rule(Step::Exit, &[Exited], Exited, RuleKind::ExitConfirmed),
];

/// The row for `step` in `phase`, if any (guards not checked).
pub fn find_rule(phase: Phase, step: Step) -> Option<&'static Rule> {
    SESSION_TABLE
        .iter()
        .find(|rule| rule.step == step && rule.from.contains(&phase))
}

/// The steps some row accepts in `phase`, in table order (guards not checked).
pub fn steps_accepted_in(phase: Phase) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for rule in SESSION_TABLE {
        if rule.from.contains(&phase) && !steps.contains(&rule.step) {
            steps.push(rule.step);
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_one_row_per_phase_and_step() {
        for phase in Phase::ALL {
            for step in Step::ALL {
                let rows = SESSION_TABLE
                    .iter()
                    .filter(|rule| rule.step == step && rule.from.contains(&phase))
                    .count();
                assert!(rows <= 1, "{rows} rows for {step} in {phase}");
            }
        }
    }

    #[test]
    fn forward_rows_never_lower_the_rank_and_back_edges_are_named() {
        for rule in SESSION_TABLE {
            for from in rule.from {
                if rule.to.rank() < from.rank() {
                    assert!(
                        rule.kind.may_move_backward(),
                        "{} from {from} to {} lowers the rank without being a back-edge",
                        rule.step,
                        rule.to
                    );
                }
            }
        }
    }

    #[test]
    fn terminal_phases_accept_only_the_terminal_exceptions() {
        assert_eq!(
            steps_accepted_in(Phase::Succeeded),
            vec![Step::Succeed, Step::Exit]
        );
        assert_eq!(
            steps_accepted_in(Phase::Exited),
            vec![Step::Succeed, Step::Exit]
        );
    }
}

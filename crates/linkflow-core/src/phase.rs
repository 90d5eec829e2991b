//! The phases of a link session and their forward order.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a link session stands.
///
/// The variants are listed in the session's forward order, and their snake_case names are part
/// of the public contract (JSON output, CLI filters, stored snapshots).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The backend created the session (for example when it asked the provider for a link token).
    /// A session with no phase event yet is in this phase.
    #[default]
    Created,
    /// The user opened the connect flow.
    Opened,
    /// The user picked an institution (a bank, a merchant, a loyalty partner).
    InstitutionSelected,
    /// The user submitted credentials or went to an OAuth login.
    Authenticating,
    /// The institution asked for a second factor and the user is answering it.
    Mfa,
    /// The institution accepted the user's login.
    Authenticated,
    /// The user agreed to the data-access permissions.
    PermissionsGranted,
    /// The user picked the accounts to link.
    AccountsSelected,
    /// The link succeeded. Terminal.
    Succeeded,
    /// The user left the flow without a success. Terminal, but a late success still wins.
    Exited,
}

impl Phase {
    /// Every phase, in forward order.
    pub const ALL: [Phase; 10] = [
        Phase::Created,
        Phase::Opened,
        Phase::InstitutionSelected,
        Phase::Authenticating,
        Phase::Mfa,
        Phase::Authenticated,
        Phase::PermissionsGranted,
        Phase::AccountsSelected,
        Phase::Succeeded,
        Phase::Exited,
    ];

    /// The position of the phase in the forward order, from 0 (`created`) to 9 (`exited`).
    pub const fn rank(self) -> u8 {
        self as u8
    }

    /// The phase's snake_case name, as serialized.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Created => "created",
            Phase::Opened => "opened",
            Phase::InstitutionSelected => "institution_selected",
            Phase::Authenticating => "authenticating",
            Phase::Mfa => "mfa",
            Phase::Authenticated => "authenticated",
            Phase::PermissionsGranted => "permissions_granted",
            Phase::AccountsSelected => "accounts_selected",
            Phase::Succeeded => "succeeded",
            Phase::Exited => "exited",
        }
    }

    /// `succeeded` and `exited` end a session: they reject phase events, except the two
    /// terminal exceptions of the transition table.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Exited)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no phase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown phase `{input}`; expected one of: created, opened, institution_selected, authenticating, mfa, authenticated, permissions_granted, accounts_selected, succeeded, exited")]
pub struct ParsePhaseError {
    /// The text that was not a phase name.
    pub input: String,
}

impl FromStr for Phase {
    type Err = ParsePhaseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|phase| phase.as_str() == s)
            .ok_or_else(|| ParsePhaseError {
                input: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_follow_the_declared_order() {
        for (index, phase) in Phase::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(phase.rank()), index);
        }
    }

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for phase in Phase::ALL {
            let json = serde_json::to_string(&phase).unwrap();
            assert_eq!(json, format!("\"{}\"", phase.as_str()));
            assert_eq!(phase.as_str().parse::<Phase>().unwrap(), phase);
        }
        assert!("institution-selected".parse::<Phase>().is_err());
    }
}

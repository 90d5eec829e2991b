//! The tombstone an erasure leaves (issue 29, `docs/privacy.md`): who asked and when, never
//! what was erased.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::compact::{Compact, CompactError, Input, Output};
use crate::ids::{InvalidSessionId, SessionId};

/// One erasure of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erasure {
    /// The keyed hash of the erased user's id (hex): names the erasure without the id.
    pub subject: String,
    /// Who asked for it, as the caller said (an operator, a ticket, `http`).
    pub requested_by: String,
    /// When the user's keys were destroyed.
    pub at: DateTime<Utc>,
    /// How many session and account streams' keys it destroyed.
    pub streams: u32,
}

impl Erasure {
    /// The stream of a user's erasures: `erasure:<subject>`.
    pub fn stream_id(&self) -> Result<SessionId, InvalidSessionId> {
        Erasure::stream_of(&self.subject)
    }

    /// The erasure stream of `subject`.
    pub fn stream_of(subject: &str) -> Result<SessionId, InvalidSessionId> {
        SessionId::new(format!("erasure:{subject}"))
    }
}

impl Compact for Erasure {
    fn encode_compact(&self, out: &mut Output) {
        out.str(&self.subject);
        out.str(&self.requested_by);
        out.time(self.at, 0);
        out.varint(u64::from(self.streams));
    }

    fn decode_compact(input: &mut Input<'_>) -> Result<Self, CompactError> {
        Ok(Erasure {
            subject: input.str("erased subject")?,
            requested_by: input.str("erasure requested by")?,
            at: input.time("erasure time", 0)?,
            streams: u32::try_from(input.varint("erased streams")?)
                .map_err(|_| input.error("erased streams", "more than u32".to_owned()))?,
        })
    }
}

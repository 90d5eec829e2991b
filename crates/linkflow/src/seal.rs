//! The personal fields of an incoming event sealed before the writer sees them (issue 29; the
//! fields and why are in `docs/privacy.md`).
//!
//! Sealing happens before the fold, so that the fold, snapshots, indexes, counters, the cache
//! and the log all hold the same sealed form, at ingest and at every replay, whether or not a
//! key was destroyed since: an erasure changes what reads can open, never what the engine
//! folds. Text fields are sealed deterministically ([`Privacy::seal_text`]): a user's sealed
//! id is the same in every event, so it still keys the `u` index and account streams.

use chrono::{DateTime, Utc};
use linkflow_core::EventBody;
use linkflow_store::RawJson;

use crate::error::EngineError;
use crate::ingest::IncomingEvent;
use crate::privacy::{KeyError, KeyId, Privacy};

/// The day of `at`, as days since the epoch: the raw payload key it is sealed under.
pub(crate) fn day_of(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(86_400)
}

/// What sealing does to a field: [`Privacy`] seals it; [`SizeProbe`] puts a placeholder of the
/// sealed length in its place, so that a record's size can be checked before any key is made.
pub(crate) trait Sealing {
    fn user_key(&self, user: &str) -> KeyId;
    fn user_token(&self, user: &str) -> Result<String, KeyError>;
    fn seal_text(&self, key: &KeyId, text: &str) -> Result<String, KeyError>;
    fn seal_raw(&self, owner: &KeyId, day: i64, raw: &str) -> Result<Vec<u8>, KeyError>;
}

impl Sealing for Privacy {
    fn user_key(&self, user: &str) -> KeyId {
        Privacy::user_key(self, user)
    }

    fn user_token(&self, user: &str) -> Result<String, KeyError> {
        Privacy::user_token(self, user)
    }

    fn seal_text(&self, key: &KeyId, text: &str) -> Result<String, KeyError> {
        Privacy::seal_text(self, key, text)
    }

    fn seal_raw(&self, owner: &KeyId, day: i64, raw: &str) -> Result<Vec<u8>, KeyError> {
        Privacy::seal_raw_bytes(self, owner, day, raw)
    }
}

/// Placeholders as long as the tokens sealing would write.
pub(crate) struct SizeProbe;

impl Sealing for SizeProbe {
    fn user_key(&self, _: &str) -> KeyId {
        KeyId::Day(0)
    }

    fn user_token(&self, user: &str) -> Result<String, KeyError> {
        Ok("x".repeat(crate::privacy::sealed_text_len(user.len())))
    }

    fn seal_text(&self, _: &KeyId, text: &str) -> Result<String, KeyError> {
        Ok("x".repeat(crate::privacy::sealed_text_len(text.len())))
    }

    fn seal_raw(&self, _: &KeyId, _: i64, raw: &str) -> Result<Vec<u8>, KeyError> {
        Ok(vec![0; crate::privacy::sealed_raw_bytes_len(raw.len())])
    }
}

/// Records the keys sealing asks for, with placeholders for the fields: what a batch's
/// sealing will need, made or fetched at once ([`Privacy::prepare`]) before it seals.
struct KeyRecorder<'a> {
    privacy: &'a Privacy,
    ids: std::cell::RefCell<Vec<KeyId>>,
}

impl Sealing for KeyRecorder<'_> {
    fn user_key(&self, user: &str) -> KeyId {
        self.privacy.user_key(user)
    }

    fn user_token(&self, user: &str) -> Result<String, KeyError> {
        self.ids.borrow_mut().push(self.privacy.user_key(user));
        SizeProbe.user_token(user)
    }

    fn seal_text(&self, key: &KeyId, text: &str) -> Result<String, KeyError> {
        self.ids.borrow_mut().push(key.clone());
        SizeProbe.seal_text(key, text)
    }

    fn seal_raw(&self, owner: &KeyId, day: i64, raw: &str) -> Result<Vec<u8>, KeyError> {
        self.ids
            .borrow_mut()
            .extend([owner.clone(), KeyId::Day(day)]);
        SizeProbe.seal_raw(owner, day, raw)
    }
}

/// The keys sealing `events` at `now` asks for.
pub(crate) fn keys_of(
    privacy: &Privacy,
    events: &[IncomingEvent],
    now: DateTime<Utc>,
) -> Result<Vec<KeyId>, EngineError> {
    let recorder = KeyRecorder {
        privacy,
        ids: std::cell::RefCell::new(Vec::new()),
    };
    for event in events {
        let mut probe = event.clone();
        seal_incoming(&recorder, &mut probe, now)?;
    }
    Ok(recorder.ids.into_inner())
}

/// `incoming` as it will be stored with a master key, with placeholders of the sealed lengths:
/// what a size check measures.
pub(crate) fn sized_as_sealed(incoming: &IncomingEvent) -> Result<IncomingEvent, EngineError> {
    let mut probe = incoming.clone();
    seal_incoming(&SizeProbe, &mut probe, Utc::now())?;
    Ok(probe)
}

/// Seals `incoming`'s personal fields and raw payload in place. The keys it makes are written
/// but not synced: the caller syncs them ([`Privacy::sync`]) before the event is committed.
pub(crate) fn seal_incoming(
    privacy: &dyn Sealing,
    incoming: &mut IncomingEvent,
    now: DateTime<Utc>,
) -> Result<(), EngineError> {
    let keys = |error: KeyError| EngineError::Keys(error.to_string());
    let stream_key = KeyId::Stream(incoming.session.as_str().to_owned());
    // Whose key the raw payload is sealed under: its stream's, or for an account event or a
    // quarantined payload that names a user, the user's (an account's stream id is made again
    // from the sealed user id below; a quarantine stream is found by no user index).
    let mut user_owner: Option<KeyId> = None;
    match &mut incoming.body {
        EventBody::Session(event) => {
            let attributes = &mut event.attributes;
            if let Some(user) = &mut attributes.external_user_id {
                *user = privacy.user_token(user).map_err(keys)?;
            }
            if let Some(term) = &mut attributes.search_term {
                *term = privacy.seal_text(&stream_key, term).map_err(keys)?;
            }
            if let Some(error) = &mut attributes.error {
                for text in [&mut error.message, &mut error.request_id]
                    .into_iter()
                    .flatten()
                {
                    *text = privacy.seal_text(&stream_key, text).map_err(keys)?;
                }
            }
        }
        EventBody::Account { account, event } => {
            let owner = if account.external_user_id.is_empty() {
                stream_key.clone()
            } else {
                let owner = privacy.user_key(&account.external_user_id);
                account.external_user_id = privacy
                    .user_token(&account.external_user_id)
                    .map_err(keys)?;
                // The stream id held the plain user id: it is made again from the sealed one.
                incoming.session = account.stream_id().map_err(|error| {
                    EngineError::Keys(format!(
                        "the account's stream id with its sealed user id: {error}"
                    ))
                })?;
                // The raw payload under the user's key too: the stream's key was named after
                // the plain stream id, which no erasure could find again.
                user_owner = Some(owner.clone());
                owner
            };
            for text in event
                .transaction_ids
                .iter_mut()
                .chain(event.reason.as_mut())
            {
                *text = privacy.seal_text(&owner, text).map_err(keys)?;
            }
        }
        EventBody::Quarantined(entry) => {
            for (name, value) in &mut entry.origin.params {
                if name == "external_user_id" {
                    user_owner = Some(privacy.user_key(value));
                    *value = privacy.user_token(value).map_err(keys)?;
                }
            }
        }
        EventBody::Merchant(_) | EventBody::QuarantineReleased(_) | EventBody::Erased(_) => {}
    }
    if let Some(raw) = &incoming.raw {
        let day = day_of(incoming.received_at.unwrap_or(now));
        let owner = user_owner.as_ref().unwrap_or(&stream_key);
        let sealed = privacy.seal_raw(owner, day, &raw.get()).map_err(keys)?;
        incoming.raw = Some(RawJson::sealed(sealed));
    }
    Ok(())
}

/// The stored form of a user id, if the user has a key (`None`: never seen, or erased; then
/// nothing stored names them).
pub(crate) fn stored_user(
    privacy: Option<&Privacy>,
    user: &str,
) -> Result<Option<String>, EngineError> {
    match privacy {
        None => Ok(Some(user.to_owned())),
        Some(privacy) => privacy
            .known_user_token(user)
            .map_err(|error| EngineError::Keys(error.to_string())),
    }
}

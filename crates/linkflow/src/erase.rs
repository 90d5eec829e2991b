//! Erasure of one user (issue 29, `docs/privacy.md`): every key their personal fields and raw
//! payloads are sealed under is destroyed, and a tombstone records who asked and when.

use chrono::Utc;
use linkflow_core::{Erasure, EventBody, Provider, SessionId};
use serde::Serialize;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::ingest::IncomingEvent;
use crate::privacy::{KeyId, Privacy};
use crate::query::{self, SessionFilter};

/// What [`Engine::erase_user`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErasureReport {
    /// The keyed hash the user is known by in the tombstone (hex).
    pub subject: String,
    /// Session and account streams whose keys this call destroyed (0 when run again).
    pub streams: u32,
    /// The user had a key: something was stored for them that this call erased.
    pub erased: bool,
    /// The tombstone's stream (`erasure:<subject>`), when one was written now or before.
    pub tombstone: Option<SessionId>,
}

/// Streams whose keys are destroyed per key-file sync.
const DESTROY_CHUNK: usize = 1_024;

impl Engine {
    /// Erases the end user `external_user_id`: destroys durably the keys of every session and
    /// account stream that names them and their own key, so that their personal fields and raw
    /// payloads read `[erased]` everywhere (sled's files and the write-ahead log only ever held
    /// them sealed), then records a tombstone event in `erasure:<subject>` with
    /// `requested_by` and the time. Phases, times and institutions were never sealed: funnels
    /// and `verify` are unchanged.
    ///
    /// Idempotent: run again it destroys what is left and writes no second tombstone. A crash
    /// at any point leaves no key undestroyed that a run again will not find, and no erasure
    /// without its tombstone once the user's key is gone: the streams' keys go first, then the
    /// tombstone is written, then the user's own key (which finds their streams) goes.
    pub async fn erase_user(
        &self,
        external_user_id: &str,
        requested_by: &str,
    ) -> Result<ErasureReport, EngineError> {
        let privacy = self.privacy_arc().ok_or(EngineError::ErasureUnavailable)?;
        let subject = privacy.subject_hex(external_user_id);
        let tombstone_stream = Erasure::stream_of(&subject)
            .map_err(|error| EngineError::Keys(format!("the tombstone's stream id: {error}")))?;
        let keys = |error: crate::privacy::KeyError| EngineError::Keys(error.to_string());
        let Some(token) = privacy.known_user_token(external_user_id).map_err(keys)? else {
            let exists = self.session_version(&tombstone_stream).await? > 0;
            return Ok(ErasureReport {
                subject,
                streams: 0,
                erased: false,
                tombstone: exists.then_some(tombstone_stream),
            });
        };
        let (streams, provider) = self.streams_of(&token).await?;
        let mut destroyed = destroy_streams(&privacy, &streams)?;
        // The tombstone before the user's own key goes: a crash between the two leaves the
        // key, so that a run again finds the streams (their keys already gone) and the
        // tombstone, and writes no second one.
        let recorded = self.session_version(&tombstone_stream).await? > 0;
        let tombstone = match provider {
            Some(provider) if !recorded || destroyed > 0 => {
                let erasure = Erasure {
                    subject: subject.clone(),
                    requested_by: requested_by.to_owned(),
                    at: Utc::now(),
                    streams: u32::try_from(streams.len()).unwrap_or(u32::MAX),
                };
                self.ingest(IncomingEvent::with_body(
                    tombstone_stream.clone(),
                    provider,
                    EventBody::Erased(erasure),
                ))
                .await?;
                Some(tombstone_stream)
            }
            _ => recorded.then_some(tombstone_stream),
        };
        privacy
            .destroy(&[privacy.user_key(external_user_id)])
            .map_err(keys)?;
        // A session of the user's committed while the first list was read: its token is the
        // same, so a second list finds it.
        let (late, _) = self.streams_of(&token).await?;
        destroyed += destroy_streams(&privacy, &late)?;
        let count = u32::try_from(destroyed).unwrap_or(u32::MAX);
        tracing::info!(subject, streams = count, "erased a user");
        Ok(ErasureReport {
            subject,
            streams: count,
            erased: true,
            tombstone,
        })
    }

    /// Rewraps every erasure key under the master key `new`, online: the key file is rewritten
    /// whole and renamed into place, and the engine goes on under `new` (every later open needs
    /// it). Returns how many keys were rewrapped.
    pub async fn rotate_master_key(
        &self,
        new: crate::privacy::MasterKey,
    ) -> Result<usize, EngineError> {
        let privacy = self.privacy_arc().ok_or(EngineError::ErasureUnavailable)?;
        tokio::task::spawn_blocking(move || privacy.rotate(&new))
            .await
            .map_err(|_| EngineError::Closed)?
            .map_err(|error| EngineError::Keys(error.to_string()))
    }

    /// Makes the raw payloads received on days wholly older than the configured
    /// [`crate::EngineConfig::raw_retention`] (before `now`) unreadable: their day keys are
    /// destroyed durably; the canonical events, their fields and funnels stay. Returns how many
    /// days' keys it destroyed (0 without a retention or a master key).
    pub async fn expire_raw_payloads(
        &self,
        now: chrono::DateTime<Utc>,
    ) -> Result<usize, EngineError> {
        let (Some(privacy), Some(retention)) = (self.privacy_arc(), self.raw_retention()) else {
            return Ok(0);
        };
        // The first day that is kept: the day `now - retention` falls in. Days before it are
        // wholly older than the retention.
        let first_kept = crate::seal::day_of(now - retention);
        let destroyed =
            tokio::task::spawn_blocking(move || privacy.destroy_days_before(first_kept))
                .await
                .map_err(|_| EngineError::Closed)?
                .map_err(|error| EngineError::Keys(error.to_string()))?;
        if destroyed > 0 {
            tracing::info!(
                days = destroyed,
                "raw payloads past their retention made unreadable"
            );
        }
        Ok(destroyed)
    }

    /// The streams whose fields are sealed under the keys of the user whose stored id is
    /// `token`: their sessions (the `u` index) and accounts, and the provider of the first.
    async fn streams_of(
        &self,
        token: &str,
    ) -> Result<(Vec<SessionId>, Option<Provider>), EngineError> {
        let token = token.to_owned();
        let clock = (Utc::now(), self.inactivity_timeout());
        self.read(move |store| {
            let mut streams = Vec::new();
            let mut provider = None;
            let filter = SessionFilter {
                external_user_id: Some(token.clone()),
                ..SessionFilter::default()
            };
            let mut after = None;
            loop {
                let page = query::sessions_page(
                    store,
                    &filter,
                    crate::MAX_PAGE_SESSIONS,
                    after.as_ref(),
                    clock,
                )?;
                for view in page.sessions {
                    provider.get_or_insert(view.provider);
                    streams.push(view.session_id);
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            for each in Provider::ALL {
                let prefix = format!("account:{each}:{}:{token}:", token.len());
                let mut after = None;
                loop {
                    let page = query::accounts_page(
                        store,
                        &prefix,
                        crate::MAX_PAGE_SESSIONS,
                        after.as_ref(),
                    )?;
                    for view in page.accounts {
                        provider.get_or_insert(view.key.provider);
                        streams.push(view.key.stream_id().map_err(|error| {
                            EngineError::Keys(format!("an account's stream id: {error}"))
                        })?);
                    }
                    match page.next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
            }
            Ok((streams, provider))
        })
        .await
    }

    /// How many events the stream holds (0: none).
    async fn session_version(&self, stream: &SessionId) -> Result<u64, EngineError> {
        let stream = stream.clone();
        self.read(move |store| Ok(store.stream_start(&stream)?.version.0))
            .await
    }
}

/// Destroys the keys of `streams`; how many there were.
fn destroy_streams(privacy: &Privacy, streams: &[SessionId]) -> Result<usize, EngineError> {
    let mut destroyed = 0;
    for chunk in streams.chunks(DESTROY_CHUNK) {
        let ids: Vec<KeyId> = chunk
            .iter()
            .map(|stream| KeyId::Stream(stream.as_str().to_owned()))
            .collect();
        destroyed += privacy
            .destroy(&ids)
            .map_err(|error| EngineError::Keys(error.to_string()))?;
    }
    Ok(destroyed)
}

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
        let (mut destroyed, streams, provider) = self.destroy_streams_of(&privacy, &token).await?;
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
                    streams: u32::try_from(streams).unwrap_or(u32::MAX),
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
        destroyed += self.destroy_streams_of(&privacy, &token).await?.0;
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

    /// Destroys the keys of the streams whose fields are sealed under the keys of the user
    /// whose stored id is `token`: their sessions (the `u` index) and accounts, read and
    /// destroyed a page ([`crate::MAX_PAGE_SESSIONS`]) at a time, so that a user with any
    /// number of sessions takes no more memory than a page. Returns how many keys were there,
    /// how many streams were found, and the provider of the first.
    async fn destroy_streams_of(
        &self,
        privacy: &std::sync::Arc<Privacy>,
        token: &str,
    ) -> Result<(usize, usize, Option<Provider>), EngineError> {
        let (mut destroyed, mut found, mut provider) = (0, 0, None);
        // The user's sessions (`None`), then their accounts of each provider (a prefix).
        let sources = std::iter::once(None).chain(
            Provider::ALL.map(|each| Some(linkflow_core::AccountKey::user_prefix(each, token))),
        );
        for source in sources {
            let mut after = None;
            loop {
                let (streams, first, next) = match &source {
                    None => self.session_page_of(token, after).await?,
                    Some(prefix) => self.account_page_of(prefix, after).await?,
                };
                provider = provider.or(first);
                found += streams.len();
                destroyed += destroy_streams(privacy, streams).await?;
                match next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        Ok((destroyed, found, provider))
    }

    /// A page of the sessions of the user whose stored id is `token`.
    async fn session_page_of(
        &self,
        token: &str,
        after: Option<crate::Cursor>,
    ) -> Result<StreamPage, EngineError> {
        let filter = SessionFilter {
            external_user_id: Some(token.to_owned()),
            ..SessionFilter::default()
        };
        let clock = (Utc::now(), self.inactivity_timeout());
        self.read(move |store| {
            let page = query::sessions_page(
                store,
                &filter,
                crate::MAX_PAGE_SESSIONS,
                after.as_ref(),
                clock,
            )?;
            let provider = page.sessions.first().map(|view| view.provider);
            let streams = page.sessions.into_iter().map(|view| view.session_id);
            Ok((streams.collect(), provider, page.next))
        })
        .await
    }

    /// A page of the account streams whose ids start with `prefix`.
    async fn account_page_of(
        &self,
        prefix: &str,
        after: Option<crate::Cursor>,
    ) -> Result<StreamPage, EngineError> {
        let prefix = prefix.to_owned();
        self.read(move |store| {
            let page =
                query::accounts_page(store, &prefix, crate::MAX_PAGE_SESSIONS, after.as_ref())?;
            let provider = page.accounts.first().map(|view| view.key.provider);
            let streams = page
                .accounts
                .iter()
                .map(|view| {
                    view.key.stream_id().map_err(|error| {
                        EngineError::Keys(format!("an account's stream id: {error}"))
                    })
                })
                .collect::<Result<_, _>>()?;
            Ok((streams, provider, page.next))
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

/// A page of streams, the provider of its first, and where the next page starts.
type StreamPage = (Vec<SessionId>, Option<Provider>, Option<crate::Cursor>);

/// Destroys the keys of `streams` (one key-file sync), on a blocking thread; how many there
/// were.
async fn destroy_streams(
    privacy: &std::sync::Arc<Privacy>,
    streams: Vec<SessionId>,
) -> Result<usize, EngineError> {
    if streams.is_empty() {
        return Ok(0);
    }
    let privacy = privacy.clone();
    tokio::task::spawn_blocking(move || {
        let ids: Vec<KeyId> = streams
            .iter()
            .map(|stream| KeyId::Stream(stream.as_str().to_owned()))
            .collect();
        privacy
            .destroy(&ids)
            .map_err(|error| EngineError::Keys(error.to_string()))
    })
    .await
    .map_err(|_| EngineError::Closed)?
}

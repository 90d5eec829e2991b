//! Quarantined payloads: listed, counted, and decoded again ("redriven") into the streams
//! they name once they can be (a newer adapter, or a session id supplied with the redrive).
//!
//! Each payload is its own stream (`quarantine:<provider>:<key>`, see
//! `linkflow_providers::Unrouted::stream_id`): its first event is the payload, a second one
//! records where it was released to. A redrive ingests the decoded event first and records the
//! release after; both are idempotent (the event's dedupe key comes from the payload, the
//! release's from the entry), so a crash in between is mended by the next redrive.

use std::ops::ControlFlow;

use chrono::{DateTime, Utc};
use linkflow_core::{DedupeKey, EventBody, Origin, Provider, Released, SessionId};
use linkflow_providers::{decode, DecodeContext, Decoding, Feed, Warning};
use linkflow_store::{EventStore, RawJson, StoredEvent};
use serde::Serialize;

use crate::engine::Engine;
use crate::error::{EngineError, EventError};
use crate::folded::Folded;
use crate::index;
use crate::ingest::{IncomingEvent, IngestOutcome};
use crate::query::{self, Cursor};

/// The most entries one redrive decodes; a redrive with more pending says how many are left
/// for the next call. A listing is a page of at most `MAX_PAGE_SESSIONS` (1,000) entries.
pub const MAX_QUARANTINE_PAGE: usize = 10_000;

/// One quarantined payload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuarantineView {
    /// The entry's stream id: what names it in a redrive.
    pub entry: SessionId,
    /// The provider.
    pub provider: Provider,
    /// The input it came through (`moneykit`, `benji`, `knot`, `knot-sdk`).
    pub feed: String,
    /// When linkflow received it.
    pub received_at: DateTime<Utc>,
    /// Why no stream could take it.
    pub reason: String,
    /// Where it came in.
    pub origin: Origin,
    /// The event name, when the payload has one.
    pub raw_name: Option<String>,
    /// The payload as stored.
    pub payload: Option<RawJson>,
    /// The stream it was released into, once redriven.
    pub released: Option<SessionId>,
}

/// Which entries a listing returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuarantineFilter {
    /// Only the entries not released yet.
    pub pending_only: bool,
    /// Only one provider's.
    pub provider: Option<Provider>,
}

/// How many payloads are in quarantine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QuarantineCounts {
    /// Not released yet.
    pub pending: u64,
    /// Released into a stream by a redrive.
    pub released: u64,
}

/// A listing: a page of the entries and the counts of all of them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuarantineList {
    /// The counts over every entry, whatever the filter.
    pub counts: QuarantineCounts,
    /// The page's entries matching the filter, in entry id order.
    pub entries: Vec<QuarantineView>,
    /// Where the next page starts; `None` after the last.
    pub next_cursor: Option<String>,
}

/// What a redrive is given: which entry (or every pending one), and what to decode with.
#[derive(Debug, Clone, Default)]
pub struct QuarantineRedrive {
    /// One entry, or every pending entry when `None`.
    pub entry: Option<SessionId>,
    /// The session for payloads that name none (overrides the one the delivery came with).
    pub session_id: Option<SessionId>,
    /// The user for payloads that name none.
    pub external_user_id: Option<String>,
}

/// What a redrive did with one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Redrove {
    /// Decoded and stored in its stream (accepted, rejected or already there), and released.
    Released {
        /// The entry.
        entry: SessionId,
        /// What the engine did with the decoded event.
        outcome: IngestOutcome,
        /// Fields the adapter could not read.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<Warning>,
    },
    /// It still names no stream.
    StillQuarantined {
        /// The entry.
        entry: SessionId,
        /// Why.
        reason: String,
    },
    /// Decoded, but the engine refused the event (it stays in quarantine).
    Refused {
        /// The entry.
        entry: SessionId,
        /// Why.
        error: EventError,
    },
}

/// A redrive's results and how many pending entries it did not reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedriveReport {
    /// One result per entry tried, oldest first.
    pub results: Vec<Redrove>,
    /// Pending entries past the bound of one redrive: run it again.
    pub remaining: u64,
}

/// The payload event of an entry.
fn payload_event(store: &dyn EventStore, entry: &SessionId) -> Result<StoredEvent, EngineError> {
    store
        .read_stream(entry, linkflow_core::Version::EMPTY, 1)?
        .into_iter()
        .next()
        .filter(|stored| matches!(stored.data.body, EventBody::Quarantined(_)))
        .ok_or_else(|| EngineError::NotQuarantined {
            entry: entry.clone(),
        })
}

pub(crate) fn list(
    store: &dyn EventStore,
    filter: QuarantineFilter,
    limit: usize,
    after: Option<&Cursor>,
) -> Result<QuarantineList, EngineError> {
    let counts = crate::funnel_read::quarantine_counts(store)?;
    let mut keep = |stream: SessionId, provider: Provider, folded: Folded| match folded {
        Folded::Quarantine(Some(entry))
            if (!filter.pending_only || entry.is_pending())
                && filter.provider.is_none_or(|wanted| wanted == provider) =>
        {
            Some((stream, provider, entry))
        }
        _ => None,
    };
    let (matching, next) = if filter.pending_only {
        // The pending entries are an index of their own.
        query::index_streams_page(
            store,
            vec![(vec![index::QUARANTINE], vec![index::QUARANTINE + 1])],
            limit,
            after,
            &mut |stream, state| keep(stream, state.provider, state.folded),
        )?
    } else {
        // Every entry is a stream `quarantine:...`: a range of the store.
        query::streams_page(store, "quarantine:", limit, after, &mut keep)?
    };
    let mut views = Vec::with_capacity(matching.len());
    for (stream, provider, entry) in matching {
        let stored = payload_event(store, &stream)?;
        views.push(QuarantineView {
            provider,
            feed: entry.quarantined.feed,
            received_at: stored.data.received_at,
            reason: entry.quarantined.reason,
            origin: entry.quarantined.origin,
            raw_name: stored.data.raw_name,
            payload: stored.data.raw,
            released: entry.released,
            entry: stream,
        });
    }
    Ok(QuarantineList {
        counts,
        entries: views,
        next_cursor: next.map(|cursor| cursor.to_string()),
    })
}

/// The pending entries a redrive will try, and how many it leaves for later.
fn pending(
    store: &dyn EventStore,
    request: &QuarantineRedrive,
) -> Result<(Vec<SessionId>, u64), EngineError> {
    if let Some(entry) = &request.entry {
        return Ok((vec![entry.clone()], 0));
    }
    // The first pending entries from their index; the rest counted by the gauge.
    let mut ids = Vec::new();
    let mut bad = None;
    store.for_each_index_key(&[index::QUARANTINE], &[index::QUARANTINE + 1], &mut |key| {
        match index::id_in(key) {
            Ok(id) => ids.push(id),
            Err(error) => {
                bad = Some(error);
                return ControlFlow::Break(());
            }
        }
        if ids.len() == MAX_QUARANTINE_PAGE {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    if let Some(error) = bad {
        return Err(linkflow_store::StoreError::Corrupt(error).into());
    }
    let pending = crate::funnel_read::quarantine_counts(store)?.pending;
    Ok((ids.clone(), pending.saturating_sub(ids.len() as u64)))
}

/// An entry decoded again with what the redrive supplies, else what the delivery came with.
fn redecode(
    stored: &StoredEvent,
    request: &QuarantineRedrive,
    privacy: Option<&crate::privacy::Privacy>,
) -> Result<Decoding, String> {
    // With a master key the payload and a user id parameter are stored sealed.
    let show = |text: &str| match privacy {
        Some(privacy) => privacy.show(text),
        None => text.to_owned(),
    };
    let EventBody::Quarantined(quarantined) = &stored.data.body else {
        return Err("not a quarantined payload".into());
    };
    let feed: Feed = quarantined
        .feed
        .parse()
        .map_err(|error| format!("stored with an input this build does not know: {error}"))?;
    let origin = &quarantined.origin;
    let session_id = request.session_id.clone().or_else(|| {
        origin
            .param("session_id")
            .and_then(|id| SessionId::new(id).ok())
    });
    let external_user_id = request
        .external_user_id
        .clone()
        .or_else(|| origin.param("external_user_id").map(show));
    let context = DecodeContext {
        received_at: stored.data.received_at,
        session_id,
        external_user_id,
    };
    let raw = stored
        .data
        .raw
        .as_ref()
        .ok_or("the payload text is missing")?;
    let opened;
    let json = raw.get();
    let text = match privacy.map(|privacy| match raw.sealed_bytes() {
        Some(bytes) => privacy.open_raw(bytes),
        None => privacy.open_text(&serde_json::from_str::<String>(&json).unwrap_or_default()),
    }) {
        Some(crate::privacy::Opened::Raw(plain)) => {
            opened = plain;
            opened.as_str()
        }
        Some(crate::privacy::Opened::Erased) => {
            return Err("the payload was erased (its key was destroyed)".into())
        }
        _ => &json,
    };
    decode(feed, text, &context).map_err(|error| error.to_string())
}

impl Engine {
    /// How many payloads are in quarantine, pending and released, from the counters every
    /// commit maintains (nothing is walked).
    pub async fn quarantine_counts(&self) -> Result<QuarantineCounts, EngineError> {
        self.read(crate::funnel_read::quarantine_counts).await
    }

    /// A page of the quarantined payloads matching `filter` (at most `limit`, at most
    /// [`crate::MAX_PAGE_SESSIONS`]), in entry id order after `after`, and the counts of every
    /// entry. The pending ones are read from their index, all of them as the store's range of
    /// quarantine streams.
    pub async fn quarantine(
        &self,
        filter: QuarantineFilter,
        limit: usize,
        after: Option<Cursor>,
    ) -> Result<QuarantineList, EngineError> {
        self.read(move |store| list(store, filter, limit, after.as_ref()))
            .await
    }

    /// Decodes quarantined payloads again (one entry, or up to [`MAX_QUARANTINE_PAGE`] pending
    /// ones) and stores each that now names a stream, releasing its entry.
    pub async fn redrive_quarantine(
        &self,
        request: QuarantineRedrive,
    ) -> Result<RedriveReport, EngineError> {
        let lookup = request.clone();
        let (tried, remaining) = self
            .read(move |store| {
                let (ids, remaining) = pending(store, &lookup)?;
                let mut tried = Vec::with_capacity(ids.len());
                for id in ids {
                    let stored = payload_event(store, &id)?;
                    tried.push((id, stored));
                }
                // In the order they were received (then logged), as they would have been.
                tried.sort_by_key(|(_, stored)| (stored.data.received_at, stored.position));
                Ok((tried, remaining))
            })
            .await?;
        let mut results = Vec::with_capacity(tried.len());
        let mut decoded = Vec::new();
        for (entry, stored) in tried {
            match redecode(&stored, &request, self.privacy()) {
                Ok(Decoding::Event(mut event)) => {
                    let warnings = std::mem::take(&mut event.warnings);
                    match IncomingEvent::from_decoded(event, stored.data.received_at) {
                        Ok(incoming) => {
                            decoded.push((entry, stored.data.provider, incoming, warnings))
                        }
                        Err(error) => results.push(Redrove::StillQuarantined {
                            entry,
                            reason: error.to_string(),
                        }),
                    }
                }
                Ok(Decoding::Quarantine(unrouted)) => results.push(Redrove::StillQuarantined {
                    entry,
                    reason: unrouted.reason,
                }),
                Err(reason) => results.push(Redrove::StillQuarantined { entry, reason }),
            }
        }
        while !decoded.is_empty() {
            let take = decoded.len().min(crate::intake::INTAKE_BATCH);
            let batch: Vec<_> = decoded.drain(..take).collect();
            results.extend(self.release(batch).await?);
        }
        Ok(RedriveReport { results, remaining })
    }

    /// Ingests decoded entries, then records the release of each one stored.
    async fn release(
        &self,
        batch: Vec<(SessionId, Provider, IncomingEvent, Vec<Warning>)>,
    ) -> Result<Vec<Redrove>, EngineError> {
        let mut events = Vec::with_capacity(batch.len());
        let mut entries = Vec::with_capacity(batch.len());
        for (entry, provider, incoming, warnings) in batch {
            entries.push((entry, provider, incoming.session.clone(), warnings));
            events.push(incoming);
        }
        let outcomes = self.ingest_batch(events).await?;
        let mut releases = Vec::new();
        let mut results = Vec::with_capacity(outcomes.len());
        for ((entry, provider, stream, warnings), outcome) in entries.into_iter().zip(outcomes) {
            match outcome {
                IngestOutcome::Refused { error } => {
                    results.push(Redrove::Refused { entry, error });
                }
                outcome => {
                    let mut release = IncomingEvent::with_body(
                        entry.clone(),
                        provider,
                        EventBody::QuarantineReleased(Released { stream }),
                    );
                    release.dedupe_key =
                        Some(DedupeKey::derive(&[b"released", entry.as_str().as_bytes()]));
                    releases.push(release);
                    results.push(Redrove::Released {
                        entry,
                        outcome,
                        warnings,
                    });
                }
            }
        }
        if !releases.is_empty() {
            self.ingest_batch(releases).await?;
        }
        Ok(results)
    }
}

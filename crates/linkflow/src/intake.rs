//! Provider payloads in: the one path the CLI, the HTTP API and embedders share. A body (or a
//! stream) is split into payloads, each is decoded by its feed's adapter, a payload that names
//! no stream goes into quarantine, and the events are ingested.
//!
//! Two calls: [`Engine::ingest_payload`] takes a whole delivery and stores all of it or, when
//! any payload is not JSON or breaks a limit, none of it (what an HTTP request needs);
//! [`Intake`] takes a stream a chunk at a time and stores what it can, reporting each payload
//! it could not (what a file needs), in memory bounded by [`INTAKE_BATCH`] events.

use chrono::{DateTime, Utc};
use linkflow_core::{EventBody, EventKind, Origin, SessionId};
use linkflow_providers::{
    decode, expand, split_all, DecodeContext, DecodeError, Decoding, Feed, Location, Split,
    Splitter, Unrouted, Warning, MAX_EVENTS_PER_DELIVERY,
};
use linkflow_store::record::check_event_size;
use linkflow_store::{CommitError, NewEvent};
use serde::Serialize;
use uuid::Uuid;

use crate::engine::Engine;
use crate::error::{EngineError, EventError};
use crate::ingest::{default_dedupe_key, IncomingEvent, IngestOutcome};

/// Payloads per engine call when a stream is read: one group commit each, and the most events
/// an [`Intake`] holds at once.
pub const INTAKE_BATCH: usize = 1_000;

/// What the caller knows about a delivery: what the adapters need that payloads may not say,
/// and where it came from (kept with quarantined payloads).
#[derive(Debug, Clone)]
pub struct PayloadContext {
    /// The receive time, and the session and user the caller supplied.
    pub decode: DecodeContext,
    /// The input (`POST /v1/events/benji`, `linkflow ingest events.jsonl`) and its parameters.
    pub origin: Origin,
}

impl PayloadContext {
    /// A delivery through `channel`, received at `received_at`.
    pub fn new(channel: &str, received_at: DateTime<Utc>) -> Self {
        PayloadContext {
            decode: DecodeContext::received_at(received_at),
            origin: Origin::new(channel),
        }
    }

    /// The session the caller opened the flow for, for payloads that name none.
    pub fn with_session(mut self, session: SessionId) -> Self {
        self.origin = self.origin.with_param("session_id", session.as_str());
        self.decode.session_id = Some(session);
        self
    }

    /// The caller's id for the end user, for payloads that carry none.
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        let user = user.into();
        self.origin = self.origin.with_param("external_user_id", &user);
        self.decode.external_user_id = Some(user);
        self
    }
}

/// What happened to one payload of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PayloadResult {
    /// Where the payload was in its delivery.
    pub at: Location,
    /// What the engine did with it (`quarantined` when it named no stream; `refused` when it
    /// is not JSON or too large).
    #[serde(flatten)]
    pub outcome: IngestOutcome,
    /// Fields the adapter could not read (kept in the stored payload).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
    /// True when the event's name is one no adapter knows.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unrecognized: bool,
}

/// Counts of a delivery's outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IntakeCounts {
    /// Appended to their stream.
    pub accepted: u64,
    /// Already stored.
    pub duplicate: u64,
    /// Stored, and rejected by their stream's fold as it stood.
    pub rejected: u64,
    /// Named no stream: kept in quarantine.
    pub quarantined: u64,
    /// Not stored: not JSON, or over a limit.
    pub refused: u64,
    /// Accepted with a name no adapter knows (also counted in `accepted`).
    pub unrecognized: u64,
    /// Stored with at least one warning (also counted in their outcome).
    pub warned: u64,
    /// Account events their sessions wrote (`linked`, `link_withdrawn`).
    pub account_events: u64,
}

impl IntakeCounts {
    /// Counts one result.
    pub fn add(&mut self, result: &PayloadResult) {
        match &result.outcome {
            IngestOutcome::Accepted { accounts, .. } => {
                self.accepted += 1;
                self.account_events += accounts
                    .iter()
                    .filter(|account| !matches!(account, crate::AccountFollow::NotLinked { .. }))
                    .count() as u64;
                self.unrecognized += u64::from(result.unrecognized);
            }
            IngestOutcome::Duplicate { .. } => self.duplicate += 1,
            IngestOutcome::Rejected { .. } => self.rejected += 1,
            IngestOutcome::Quarantined { .. } => self.quarantined += 1,
            IngestOutcome::Refused { .. } => self.refused += 1,
        }
        self.warned += u64::from(!result.warnings.is_empty());
    }
}

/// What [`Engine::ingest_payload`] did with a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryReport {
    /// The counts.
    #[serde(flatten)]
    pub counts: IntakeCounts,
    /// Each payload's result, in delivery order.
    pub results: Vec<PayloadResult>,
}

/// Why a whole delivery was refused. Nothing of it was stored.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// A payload is not JSON, or breaks a size or count limit.
    #[error("{at}: {error}")]
    Invalid {
        /// Where.
        at: Location,
        /// What.
        error: EventError,
    },
    /// The delivery holds no payload.
    #[error("the body holds no payload")]
    Empty,
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl DeliveryError {
    /// True when the delivery broke a size or count limit (an HTTP 413).
    pub fn is_limit(&self) -> bool {
        match self {
            DeliveryError::Invalid {
                error: EventError::Invalid { detail },
                ..
            } => detail.is_limit(),
            DeliveryError::Invalid {
                error: EventError::TooLarge { .. },
                ..
            } => true,
            _ => false,
        }
    }
}

/// A payload decoded and ready for the engine.
#[derive(Debug)]
struct Ready {
    at: Location,
    incoming: IncomingEvent,
    warnings: Vec<Warning>,
    unrecognized: bool,
}

/// A payload that could not be stored, and where it is.
#[derive(Debug)]
struct Refusal {
    at: Location,
    error: EventError,
}

impl Refusal {
    fn into_result(self) -> PayloadResult {
        PayloadResult {
            at: self.at,
            outcome: IngestOutcome::Refused { error: self.error },
            warnings: Vec::new(),
            unrecognized: false,
        }
    }
}

/// The payloads of one split text: itself, or each event of a Plaid `EVENTS` webhook, all at
/// the text's location.
fn expand_split(feed: Feed, (at, text): Split) -> impl Iterator<Item = Split> {
    let texts = match text {
        Ok(text) => expand(feed, text).into_iter().map(Ok).collect(),
        Err(error) => vec![Err(error)],
    };
    texts.into_iter().map(move |text| (at, text))
}

/// Decodes one split payload of `feed` into an event for its stream or its quarantine entry.
fn prepare(feed: Feed, (at, text): Split, context: &PayloadContext) -> Result<Ready, Refusal> {
    let received_at = context.decode.received_at;
    let refused = |detail: DecodeError| Refusal {
        at,
        error: EventError::Invalid { detail },
    };
    let text = text.map_err(refused)?;
    let decoding = decode(feed, &text, &context.decode).map_err(refused)?;
    drop(text);
    let (incoming, warnings) = match decoding {
        Decoding::Event(mut decoded) => {
            let warnings = std::mem::take(&mut decoded.warnings);
            let incoming = IncomingEvent::from_decoded(decoded, received_at)
                .expect("adapters quarantine payloads whose stream id is not usable");
            (incoming, warnings)
        }
        Decoding::Quarantine(mut unrouted) => {
            let warnings = std::mem::take(&mut unrouted.warnings);
            let origin = context.origin.clone().at(&at.to_string());
            (
                IncomingEvent::quarantined(unrouted, feed, origin, received_at),
                warnings,
            )
        }
    };
    let unrecognized = matches!(
        &incoming.body,
        EventBody::Session(event) if matches!(event.kind, EventKind::Unrecognized { .. })
    );
    Ok(Ready {
        at,
        incoming,
        warnings,
        unrecognized,
    })
}

/// Fails when the event could not be stored for its size, as the writer would refuse it.
fn check_size(engine: &Engine, incoming: &IncomingEvent) -> Result<(), EventError> {
    // With a master key the record holds the sealed fields, which are longer.
    let sealed;
    let incoming = match engine.privacy() {
        None => incoming,
        Some(_) => {
            sealed = crate::seal::sized_as_sealed(incoming).map_err(|_| EventError::TooLarge {
                session: incoming.session.clone(),
                bytes: linkflow_core::ids::MAX_SESSION_ID_BYTES + 1,
                limit: linkflow_core::ids::MAX_SESSION_ID_BYTES,
            })?;
            &sealed
        }
    };
    let probe = NewEvent {
        event_id: Uuid::nil(),
        dedupe_key: incoming
            .dedupe_key
            .unwrap_or_else(|| default_dedupe_key(incoming)),
        provider: incoming.provider,
        body: incoming.body.clone(),
        raw_name: incoming.raw_name.clone(),
        raw: incoming.raw.clone(),
        received_at: incoming.received_at.unwrap_or_default(),
    };
    match check_event_size(&incoming.session, &probe) {
        Ok(()) => Ok(()),
        Err(CommitError::TooLarge {
            stream,
            bytes,
            limit,
        }) => Err(EventError::TooLarge {
            session: stream,
            bytes,
            limit,
        }),
        Err(_) => Ok(()),
    }
}

/// What a result needs besides its outcome, and what quarantining the payload would need.
struct Pending {
    at: Location,
    warnings: Vec<Warning>,
    unrecognized: bool,
    raw: Option<linkflow_store::RawJson>,
    raw_name: Option<String>,
}

/// True for the refusals of a payload's stream (not of the payload): it is kept in quarantine
/// instead, so that a sender answered 200 has lost nothing.
fn turned_away(error: &EventError) -> bool {
    matches!(
        error,
        EventError::ProviderMismatch { .. }
            | EventError::StreamKindMismatch { .. }
            | EventError::StreamFull { .. }
            | EventError::StreamUnreadable { .. }
    )
}

/// Ingests decoded payloads in one call and pairs each outcome with its payload. A payload its
/// stream turns away (another provider's session, another kind of stream, a session at its
/// events bound, a stream that cannot be read) goes into quarantine with that reason, in a
/// second call.
async fn ingest_ready(
    engine: &Engine,
    feed: Feed,
    context: &PayloadContext,
    ready: Vec<Ready>,
) -> Result<Vec<PayloadResult>, EngineError> {
    let mut events = Vec::with_capacity(ready.len());
    let mut pending = Vec::with_capacity(ready.len());
    for item in ready {
        pending.push(Pending {
            at: item.at,
            warnings: item.warnings,
            unrecognized: item.unrecognized,
            raw: item.incoming.raw.clone(),
            raw_name: item.incoming.raw_name.clone(),
        });
        events.push(item.incoming);
    }
    let mut outcomes = engine.ingest_batch(events).await?;
    let mut again = Vec::new();
    for (index, outcome) in outcomes.iter().enumerate() {
        let IngestOutcome::Refused { error } = outcome else {
            continue;
        };
        let Some(raw) = pending[index].raw.as_ref().filter(|_| turned_away(error)) else {
            continue;
        };
        let unrouted = Unrouted::turned_away(
            feed,
            &raw.get(),
            pending[index].raw_name.clone(),
            error.to_string(),
        )
        .expect("a stored payload text is JSON");
        let origin = context.origin.clone().at(&pending[index].at.to_string());
        again.push((
            index,
            IncomingEvent::quarantined(unrouted, feed, origin, context.decode.received_at),
        ));
    }
    if !again.is_empty() {
        let (indexes, events): (Vec<usize>, Vec<IncomingEvent>) = again.into_iter().unzip();
        for (index, outcome) in indexes.into_iter().zip(engine.ingest_batch(events).await?) {
            outcomes[index] = outcome;
        }
    }
    Ok(pending
        .into_iter()
        .zip(outcomes)
        .map(|(pending, outcome)| PayloadResult {
            at: pending.at,
            outcome,
            warnings: pending.warnings,
            unrecognized: pending.unrecognized,
        })
        .collect())
}

impl Engine {
    /// Decodes and ingests a whole delivery of `feed` (one payload, a JSON array, or JSON
    /// Lines; at most [`MAX_EVENTS_PER_DELIVERY`] payloads): all of it or, when any payload
    /// is not JSON or is too large, none of it. A payload that names no stream is stored in
    /// quarantine, not refused. Returns each payload's outcome.
    pub async fn ingest_payload(
        &self,
        feed: Feed,
        body: &[u8],
        context: &PayloadContext,
    ) -> Result<DeliveryReport, DeliveryError> {
        let splits: Vec<Split> = split_all(body)
            .into_iter()
            .flat_map(|split| expand_split(feed, split))
            .take(MAX_EVENTS_PER_DELIVERY + 1)
            .collect();
        if splits.len() > MAX_EVENTS_PER_DELIVERY {
            return Err(DeliveryError::Invalid {
                at: splits[MAX_EVENTS_PER_DELIVERY].0,
                error: EventError::Invalid {
                    detail: DecodeError::TooManyPayloads {
                        limit: MAX_EVENTS_PER_DELIVERY,
                    },
                },
            });
        }
        if splits.is_empty() {
            return Err(DeliveryError::Empty);
        }
        let mut ready = Vec::with_capacity(splits.len());
        for split in splits {
            let item = prepare(feed, split, context)
                .map_err(|Refusal { at, error }| DeliveryError::Invalid { at, error })?;
            check_size(self, &item.incoming)
                .map_err(|error| DeliveryError::Invalid { at: item.at, error })?;
            ready.push(item);
        }
        let results = ingest_ready(self, feed, context, ready).await?;
        let mut counts = IntakeCounts::default();
        for result in &results {
            counts.add(result);
        }
        Ok(DeliveryReport { counts, results })
    }
}

/// Reads a stream of payloads a chunk at a time and ingests them in batches of
/// [`INTAKE_BATCH`]: what `linkflow ingest` does with a file of any size. Every payload that
/// can be stored is; each one that cannot comes back as a `refused` result naming where it is.
pub struct Intake {
    engine: Engine,
    feed: Feed,
    context: PayloadContext,
    splitter: Splitter,
    /// Payloads split from the current chunk (reused between chunks).
    splits: Vec<Split>,
    /// Decoded payloads waiting for the next engine call, and refusals in their place.
    pending: Vec<Result<Ready, Refusal>>,
    ready: usize,
}

impl Intake {
    /// An intake of `feed` payloads into `engine`.
    pub fn new(engine: &Engine, feed: Feed, context: PayloadContext) -> Self {
        Intake {
            engine: engine.clone(),
            feed,
            context,
            splitter: Splitter::new(),
            splits: Vec::new(),
            pending: Vec::with_capacity(INTAKE_BATCH),
            ready: 0,
        }
    }

    /// Reads `chunk`; returns the results of the payloads it completed a batch of (often
    /// none), in input order.
    pub async fn push(&mut self, chunk: &[u8]) -> Result<Vec<PayloadResult>, EngineError> {
        self.splitter.push(chunk, &mut self.splits);
        self.take_splits().await
    }

    /// Ends the input and ingests what is left; returns those results.
    pub async fn finish(mut self) -> Result<Vec<PayloadResult>, EngineError> {
        self.splitter.finish(&mut self.splits);
        let mut results = self.take_splits().await?;
        results.extend(self.flush().await?);
        Ok(results)
    }

    async fn take_splits(&mut self) -> Result<Vec<PayloadResult>, EngineError> {
        let mut results = Vec::new();
        let mut splits = std::mem::take(&mut self.splits);
        let feed = self.feed;
        for split in splits.drain(..).flat_map(|split| expand_split(feed, split)) {
            let prepared = prepare(self.feed, split, &self.context);
            self.ready += usize::from(prepared.is_ok());
            self.pending.push(prepared);
            if self.ready == INTAKE_BATCH || self.pending.len() == 4 * INTAKE_BATCH {
                results.extend(self.flush().await?);
            }
        }
        self.splits = splits;
        Ok(results)
    }

    /// Ingests the pending payloads and returns every pending result, in input order.
    async fn flush(&mut self) -> Result<Vec<PayloadResult>, EngineError> {
        let pending = std::mem::take(&mut self.pending);
        self.ready = 0;
        let mut order = Vec::with_capacity(pending.len());
        let mut ready = Vec::new();
        for item in pending {
            match item {
                Ok(item) => {
                    order.push(None);
                    ready.push(item);
                }
                Err(refusal) => order.push(Some(refusal.into_result())),
            }
        }
        let mut ingested = if ready.is_empty() {
            Vec::new()
        } else {
            ingest_ready(&self.engine, self.feed, &self.context, ready).await?
        }
        .into_iter();
        Ok(order
            .into_iter()
            .map(|slot| {
                slot.unwrap_or_else(|| ingested.next().expect("one outcome per ingested payload"))
            })
            .collect())
    }
}

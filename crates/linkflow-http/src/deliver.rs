//! Outbound delivery of notifications in Standard Webhooks form (`docs/notifications.md`).
//!
//! [`Deliverer::run`] keeps one worker per enabled endpoint. A worker reads the engine's
//! notifications from its endpoint's cursor, keeps up to [`MAX_PENDING`] of them in a window,
//! and POSTs each, signed with the endpoint's secret (the `standardwebhooks` crate), with the
//! same `webhook-id` on every attempt. At most one notification per stream is in flight or
//! waiting for a retry, so a stream's notifications arrive in order, while other streams go on
//! past a failing one. The cursor moves only past notifications that are done (delivered, or
//! given up after the schedule), so a restart or a kill sends again at most the window (the
//! same ids), never loses one.
//!
//! Answers: a 2xx is delivered; 410 disables the endpoint (the notification stays first in
//! line for when it is enabled again); 429, 502, 503 and 504 wait at least their
//! `Retry-After`; anything else, a timeout ([`DeliveryConfig::timeout`]) or no connection is
//! retried after the next delay of the schedule, with jitter. Redirects are not followed (a
//! 3xx is a failure, as the spec says).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use linkflow::delivery::{
    before, secret_key, Attempt, AttemptOutcome, DeliveryState, DeliveryStateError, Disabled,
    Endpoint,
};
use linkflow::notify::Progress;
use linkflow::{Engine, EngineError, Notification, NotificationId};
use linkflow_core::Position;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Notifications a worker holds between its cursor and what it read: the most sent again
/// after a kill.
pub const MAX_PENDING: usize = 256;

/// Requests in flight per endpoint.
pub const MAX_IN_FLIGHT: usize = 16;

/// How long a stopping worker lets its requests in flight finish.
pub const DRAIN: Duration = Duration::from_secs(2);

/// The longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The spec's example schedule: the delay before each attempt (the first at once), ten in
/// all, about three days.
pub const RETRY_SCHEDULE: [Duration; 10] = [
    Duration::ZERO,
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(14 * 3600),
    Duration::from_secs(20 * 3600),
    Duration::from_secs(24 * 3600),
];

/// An endpoint's lease without renewal.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// A request's timeout (the spec says 15 to 30 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// How delivery runs.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// The delay before each attempt; its length is the number of attempts.
    pub schedule: Vec<Duration>,
    /// A request's timeout.
    pub timeout: Duration,
    /// How often the endpoints and redeliveries are read again.
    pub poll: Duration,
    /// How often a worker's cursor is written while it moves (and at every stop).
    pub cursor_every: Duration,
    /// How long an endpoint's lease lasts without renewal (renewed every `poll`): how soon
    /// another node takes over from one that died, on a shared store.
    pub lease: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            schedule: RETRY_SCHEDULE.to_vec(),
            timeout: DEFAULT_TIMEOUT,
            poll: Duration::from_secs(1),
            cursor_every: Duration::from_millis(200),
            lease: DEFAULT_LEASE,
        }
    }
}

/// Why delivery stopped.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The engine failed or closed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The delivery state could not be read or written.
    #[error(transparent)]
    State(#[from] DeliveryStateError),
    /// The HTTP client could not be built.
    #[error("the HTTP client: {0}")]
    Client(String),
}

/// Checks an endpoint URL fully (what the sender will POST to).
pub fn parse_endpoint_url(url: &str) -> Result<reqwest::Url, DeliveryStateError> {
    linkflow::delivery::check_url(url)?;
    let parsed = reqwest::Url::parse(url)
        .map_err(|error| DeliveryStateError::Invalid(format!("`{url}`: {error}")))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(DeliveryStateError::Invalid(format!(
            "`{url}` names no host"
        )));
    }
    Ok(parsed)
}

/// Runs delivery for every enabled endpoint of `state` until `stop` turns true; then each
/// worker writes its cursor and ends.
pub struct Deliverer {
    engine: Engine,
    state: Arc<dyn DeliveryState>,
    config: DeliveryConfig,
    client: reqwest::Client,
}

impl Deliverer {
    /// A deliverer over `engine`'s notifications and `state`.
    pub fn new(
        engine: Engine,
        state: Arc<dyn DeliveryState>,
        config: DeliveryConfig,
    ) -> Result<Self, DeliverError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("linkflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| DeliverError::Client(error.to_string()))?;
        Ok(Deliverer {
            engine,
            state,
            config,
            client,
        })
    }

    /// Delivers until `stop` is true (or its sender is gone).
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<(), DeliverError> {
        let mut workers: HashMap<
            String,
            (Endpoint, watch::Sender<bool>, tokio::task::JoinHandle<()>),
        > = HashMap::new();
        let result = loop {
            let endpoints = match self.blocking(|state| state.endpoints()).await {
                Ok(endpoints) => endpoints,
                Err(error) => break Err(error),
            };
            // Stop workers whose endpoint is gone, disabled or changed, and those that ended.
            let wanted: HashMap<&str, &Endpoint> = endpoints
                .iter()
                .filter(|endpoint| endpoint.disabled.is_none())
                .map(|endpoint| (endpoint.id.as_str(), endpoint))
                .collect();
            let mut stale: Vec<String> = workers
                .iter()
                .filter(|(id, (endpoint, _, handle))| {
                    handle.is_finished() || wanted.get(id.as_str()) != Some(&endpoint)
                })
                .map(|(id, _)| id.clone())
                .collect();
            // The running ones renew their leases; one whose lease another node took stops.
            for id in workers
                .keys()
                .filter(|id| !stale.contains(id))
                .cloned()
                .collect::<Vec<_>>()
            {
                let endpoint = id.clone();
                let ttl = self.config.lease;
                match self
                    .blocking(move |state| state.lease(&endpoint, ttl))
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(endpoint = %id, "another node took the endpoint's lease: stopping delivery to it here");
                        stale.push(id);
                    }
                    Err(error) => {
                        tracing::error!(endpoint = %id, %error, "renewing the endpoint's lease failed: stopping delivery to it here");
                        stale.push(id);
                    }
                }
            }
            for id in stale {
                if let Some((_, stop, handle)) = workers.remove(&id) {
                    let _ = stop.send(true);
                    let _ = handle.await;
                    let _ = self.blocking(move |state| state.release(&id)).await;
                }
            }
            for (id, endpoint) in wanted {
                if workers.contains_key(id) {
                    continue;
                }
                // One node delivers to an endpoint at a time (a shared store's lease).
                let leased = id.to_owned();
                let ttl = self.config.lease;
                match self.blocking(move |state| state.lease(&leased, ttl)).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(error) => {
                        tracing::error!(endpoint = %id, %error, "taking the endpoint's lease failed");
                        continue;
                    }
                }
                let (stop_worker, stopped) = watch::channel(false);
                let worker = Worker {
                    engine: self.engine.clone(),
                    state: Arc::clone(&self.state),
                    config: self.config.clone(),
                    client: self.client.clone(),
                    endpoint: endpoint.clone(),
                };
                let name = id.to_owned();
                let handle = tokio::spawn(async move {
                    if let Err(error) = worker.run(stopped).await {
                        tracing::error!(endpoint = %name, %error, "delivery to the endpoint stopped");
                    }
                });
                workers.insert(id.to_owned(), (endpoint.clone(), stop_worker, handle));
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.poll) => {}
                _ = stopped(&mut stop) => break Ok(()),
            }
        };
        for (id, (_, stop, handle)) in workers {
            let _ = stop.send(true);
            let _ = handle.await;
            let _ = self.blocking(move |state| state.release(&id)).await;
        }
        result
    }

    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn DeliveryState) -> Result<T, DeliveryStateError> + Send + 'static,
    ) -> Result<T, DeliverError> {
        let state = Arc::clone(&self.state);
        tokio::task::spawn_blocking(move || call(state.as_ref()))
            .await
            .map_err(|_| DeliverError::Engine(EngineError::Closed))?
            .map_err(DeliverError::from)
    }
}

/// What one attempt's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Delivered(u16),
    Gone,
    /// Failed: the status if any, what went wrong, the `Retry-After` if honoured.
    Failed(Option<u16>, String, Option<Duration>),
}

/// One notification waiting in a worker's window.
struct Job {
    notification: Notification,
    /// Attempts made.
    attempts: u32,
    /// When it may be tried (again).
    due: Instant,
    in_flight: bool,
}

struct Worker {
    engine: Engine,
    state: Arc<dyn DeliveryState>,
    config: DeliveryConfig,
    client: reqwest::Client,
    endpoint: Endpoint,
}

impl Worker {
    async fn run(self, mut stop: watch::Receiver<bool>) -> Result<(), DeliverError> {
        let id = self.endpoint.id.clone();
        let cursor = {
            let state = Arc::clone(&self.state);
            let id = id.clone();
            tokio::task::spawn_blocking(move || state.cursor(&id))
                .await
                .map_err(|_| EngineError::Closed)??
        };
        // A new endpoint starts at the log's head: it gets what happens from now on.
        let mut through = match cursor {
            Some(cursor) => cursor,
            None => {
                let head = NotificationId {
                    position: self.engine.visible(),
                    index: u8::MAX,
                };
                self.save_cursor(head).await?;
                head
            }
        };
        let mut saved = through;
        let key = Arc::new(secret_key(&self.endpoint.secret)?);
        let (reads, mut read) = mpsc::channel::<Result<Progress, EngineError>>(MAX_PENDING);
        let after = match through.index {
            u8::MAX => through.position,
            _ => Position(through.position.0.saturating_sub(1)),
        };
        let mut notifications = self.engine.notifications(after);
        let reader = tokio::spawn(async move {
            loop {
                let next = match notifications.next_progress().await {
                    Err(EngineError::Closed) => return,
                    next => next,
                };
                let failed = next.is_err();
                if reads.send(next).await.is_err() || failed {
                    return;
                }
            }
        });
        let mut pending: BTreeMap<NotificationId, Job> = BTreeMap::new();
        let mut redeliveries: Vec<Job> = Vec::new();
        let mut seen = through;
        let mut in_flight = FuturesUnordered::new();
        let mut last_save = Instant::now();
        let mut last_poll = Instant::now();
        // Attempts settled and not yet in the log: written with the cursor, or in batches.
        let mut records: Vec<Attempt> = Vec::new();
        let result = loop {
            // Start what may start: each stream's first job, when due.
            let now = Instant::now();
            let mut busy: HashSet<&str> = HashSet::new();
            let mut start = Vec::new();
            for (id, job) in &pending {
                let stream = job.notification.stream.as_str();
                if !busy.insert(stream) {
                    continue;
                }
                if !job.in_flight && job.due <= now && in_flight.len() + start.len() < MAX_IN_FLIGHT
                {
                    start.push(*id);
                }
            }
            for id in start {
                let job = pending.get_mut(&id).expect("listed from the map");
                job.in_flight = true;
                in_flight.push(self.send(
                    Arc::clone(&key),
                    job.notification.clone(),
                    job.attempts + 1,
                    false,
                ));
            }
            for job in redeliveries.iter_mut() {
                if !job.in_flight && job.due <= now && in_flight.len() < MAX_IN_FLIGHT {
                    job.in_flight = true;
                    in_flight.push(self.send(
                        Arc::clone(&key),
                        job.notification.clone(),
                        job.attempts + 1,
                        true,
                    ));
                }
            }
            // Move the cursor past what is done.
            let done = pending.keys().next().map_or(seen, |first| before(*first));
            through = through.max(done);
            if records.len() >= MAX_PENDING
                || (!records.is_empty() && last_save.elapsed() >= self.config.cursor_every)
            {
                self.flush(&mut records).await?;
            }
            if through != saved && last_save.elapsed() >= self.config.cursor_every {
                self.save_cursor(through).await?;
                saved = through;
                last_save = Instant::now();
            }
            let next_due = pending
                .values()
                .chain(redeliveries.iter())
                .filter(|job| !job.in_flight)
                .map(|job| job.due)
                .min();
            let wake = next_due
                .unwrap_or(now + self.config.poll)
                .min(now + self.config.poll)
                .max(now + Duration::from_millis(1));
            tokio::select! {
                biased;
                _ = stopped(&mut stop) => break Ok(()),
                Some(done) = in_flight.next() => {
                    let gone = self.settle(&mut pending, &mut redeliveries, done, &mut records).await?;
                    if gone {
                        break Ok(());
                    }
                }
                next = read.recv(), if pending.len() < MAX_PENDING => match next {
                    Some(Ok(Progress::Notification(notification))) => {
                        let notification = *notification;
                        seen = seen.max(notification.id);
                        if notification.id > through && self.endpoint.wants(notification.kind) {
                            pending.insert(notification.id, Job {
                                notification,
                                attempts: 0,
                                due: Instant::now(),
                                in_flight: false,
                            });
                        }
                    }
                    Some(Ok(Progress::Passed(position))) => {
                        seen = seen.max(NotificationId { position, index: u8::MAX });
                    }
                    Some(Err(error)) => break Err(DeliverError::from(error)),
                    None => break Ok(()),
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
            if last_poll.elapsed() >= self.config.poll && redeliveries.len() < MAX_PENDING {
                last_poll = Instant::now();
                let state = Arc::clone(&self.state);
                let endpoint = id.clone();
                let asked = tokio::task::spawn_blocking(move || state.take_redeliveries(&endpoint))
                    .await
                    .map_err(|_| EngineError::Closed)??;
                for asked in asked {
                    match self.engine.notification(asked).await? {
                        Some(notification) => redeliveries.push(Job {
                            notification,
                            attempts: 0,
                            due: Instant::now(),
                            in_flight: false,
                        }),
                        None => {
                            tracing::warn!(endpoint = %id, notification = %asked, "a redelivery names no notification")
                        }
                    }
                }
            }
        };
        reader.abort();
        // Stopping: the requests in flight may finish (and count) for a moment, so that a
        // restart sends fewer again.
        if result.is_ok() && !in_flight.is_empty() {
            let drain = tokio::time::sleep(DRAIN.min(self.config.timeout));
            tokio::pin!(drain);
            loop {
                tokio::select! {
                    Some(done) = in_flight.next() => {
                        if self.settle(&mut pending, &mut redeliveries, done, &mut records).await? {
                            break;
                        }
                    }
                    _ = &mut drain => break,
                    else => break,
                }
            }
        }
        self.flush(&mut records).await?;
        let done = pending.keys().next().map_or(seen, |first| before(*first));
        through = through.max(done);
        if through != saved {
            self.save_cursor(through).await?;
        }
        result
    }

    /// Appends the attempts recorded since the last flush to the log (one call for many).
    async fn flush(&self, records: &mut Vec<Attempt>) -> Result<(), DeliverError> {
        if records.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(records);
        let state = Arc::clone(&self.state);
        tokio::task::spawn_blocking(move || {
            batch.iter().try_for_each(|attempt| state.record(attempt))
        })
        .await
        .map_err(|_| EngineError::Closed)??;
        Ok(())
    }

    async fn save_cursor(&self, through: NotificationId) -> Result<(), DeliverError> {
        let state = Arc::clone(&self.state);
        let id = self.endpoint.id.clone();
        tokio::task::spawn_blocking(move || state.set_cursor(&id, through))
            .await
            .map_err(|_| EngineError::Closed)??;
        Ok(())
    }

    /// One attempt: its notification's id, whether a redelivery, its number, the answer.
    fn send(
        &self,
        key: Arc<Vec<u8>>,
        notification: Notification,
        attempt: u32,
        redelivery: bool,
    ) -> impl std::future::Future<Output = (NotificationId, bool, u32, Answer)> + 'static {
        let client = self.client.clone();
        let url = self.endpoint.url.clone();
        async move {
            let id = notification.id;
            let body = serde_json::to_vec(&notification.payload()).expect("a payload serializes");
            let webhook_id = id.to_string();
            let timestamp = Utc::now().timestamp();
            let signature = match standardwebhooks::Webhook::from_bytes(key.to_vec())
                .and_then(|webhook| webhook.sign(&webhook_id, timestamp, &body))
            {
                Ok(signature) => signature,
                Err(error) => {
                    return (
                        id,
                        redelivery,
                        attempt,
                        Answer::Failed(None, format!("signing: {error}"), None),
                    )
                }
            };
            let request = client
                .post(&url)
                .header("content-type", "application/json")
                .header(standardwebhooks::HEADER_WEBHOOK_ID, &webhook_id)
                .header(
                    standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
                    timestamp.to_string(),
                )
                .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
                .body(body);
            let answer = match request.send().await {
                Ok(response) => {
                    classify(response.status().as_u16(), response.headers(), Utc::now())
                }
                Err(error) if error.is_timeout() => Answer::Failed(None, "timed out".into(), None),
                Err(error) => Answer::Failed(None, error_chain(&error), None),
            };
            (id, redelivery, attempt, answer)
        }
    }

    /// Records an attempt's answer and decides what follows; `true` when the endpoint said
    /// 410 and is now disabled.
    async fn settle(
        &self,
        pending: &mut BTreeMap<NotificationId, Job>,
        redeliveries: &mut Vec<Job>,
        (id, redelivery, attempt, answer): (NotificationId, bool, u32, Answer),
        records: &mut Vec<Attempt>,
    ) -> Result<bool, DeliverError> {
        let job = if redelivery {
            redeliveries
                .iter_mut()
                .find(|job| job.notification.id == id)
        } else {
            pending.get_mut(&id)
        };
        let Some(job) = job else {
            return Ok(false);
        };
        job.in_flight = false;
        job.attempts = attempt;
        let now = Utc::now();
        let (status, error, outcome) = match &answer {
            Answer::Delivered(status) => (Some(*status), None, AttemptOutcome::Delivered),
            Answer::Gone => (
                Some(410),
                Some("410 Gone".to_owned()),
                AttemptOutcome::EndpointDisabled,
            ),
            Answer::Failed(status, error, retry_after) => {
                let outcome = match self.config.schedule.get(attempt as usize) {
                    Some(delay) => {
                        let delay =
                            jittered(*delay, id, attempt).max(retry_after.unwrap_or_default());
                        job.due = Instant::now() + delay;
                        AttemptOutcome::Retrying {
                            next_at: now + chrono::Duration::from_std(delay).unwrap_or_default(),
                        }
                    }
                    None => AttemptOutcome::GaveUp,
                };
                (*status, Some(error.clone()), outcome)
            }
        };
        let record = Attempt {
            endpoint: self.endpoint.id.clone(),
            notification: id.to_string(),
            kind: job.notification.kind,
            stream: job.notification.stream.as_str().to_owned(),
            attempt,
            at: now,
            status,
            error,
            redelivery,
            outcome: outcome.clone(),
        };
        match outcome {
            AttemptOutcome::Delivered | AttemptOutcome::GaveUp => {
                if redelivery {
                    redeliveries.retain(|job| job.notification.id != id);
                } else {
                    pending.remove(&id);
                }
                if matches!(record.outcome, AttemptOutcome::GaveUp) {
                    tracing::warn!(endpoint = %self.endpoint.id, notification = %id, "a notification was given up after the retry schedule");
                }
            }
            AttemptOutcome::Retrying { .. } => {}
            AttemptOutcome::EndpointDisabled => {}
        }
        let gone = record.outcome == AttemptOutcome::EndpointDisabled;
        records.push(record);
        if gone {
            self.flush(records).await?;
            let state = Arc::clone(&self.state);
            let endpoint = self.endpoint.id.clone();
            let url = self.endpoint.url.clone();
            tokio::task::spawn_blocking(move || {
                state.set_disabled(
                    &endpoint,
                    Some(Disabled {
                        at: now,
                        reason: format!("{url} answered 410 Gone"),
                    }),
                )
            })
            .await
            .map_err(|_| EngineError::Closed)??;
            tracing::warn!(endpoint = %self.endpoint.id, "the endpoint answered 410 Gone: disabled");
        }
        Ok(gone)
    }
}

/// Resolves once `stop` is true or its sender is gone (without holding its value).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// What a status means (`headers` for `Retry-After`).
fn classify(status: u16, headers: &reqwest::header::HeaderMap, now: DateTime<Utc>) -> Answer {
    match status {
        200..=299 => Answer::Delivered(status),
        410 => Answer::Gone,
        429 | 502 | 503 | 504 => Answer::Failed(
            Some(status),
            format!("answered {status}"),
            retry_after(headers, now),
        ),
        _ => Answer::Failed(Some(status), format!("answered {status}"), None),
    }
}

/// A `Retry-After` header: seconds, or an HTTP date; at most [`MAX_RETRY_AFTER`].
fn retry_after(headers: &reqwest::header::HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = DateTime::parse_from_rfc2822(value)
                .ok()?
                .with_timezone(&Utc);
            (at - now).to_std().unwrap_or_default()
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// `delay` moved by up to a tenth either way, by a hash of the notification and attempt (so
/// that retries of many notifications spread out, and the same attempt waits the same).
fn jittered(delay: Duration, id: NotificationId, attempt: u32) -> Duration {
    if delay.is_zero() {
        return delay;
    }
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in id
        .position
        .0
        .to_be_bytes()
        .into_iter()
        .chain([id.index])
        .chain(attempt.to_be_bytes())
    {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let tenth = delay.as_millis() as u64 / 10;
    if tenth == 0 {
        return delay;
    }
    let shift = hash % (2 * tenth + 1);
    delay + Duration::from_millis(shift) - Duration::from_millis(tenth)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_as_the_spec_says() {
        let now = Utc::now();
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(classify(204, &headers, now), Answer::Delivered(204));
        assert_eq!(classify(410, &headers, now), Answer::Gone);
        assert!(matches!(
            classify(301, &headers, now),
            Answer::Failed(Some(301), _, None)
        ));
        assert!(matches!(
            classify(500, &headers, now),
            Answer::Failed(Some(500), _, None)
        ));
        headers.insert(reqwest::header::RETRY_AFTER, "120".parse().unwrap());
        assert_eq!(
            classify(429, &headers, now),
            Answer::Failed(
                Some(429),
                "answered 429".into(),
                Some(Duration::from_secs(120))
            )
        );
        // A 500's Retry-After is not honoured (only the slow-down answers').
        assert!(matches!(
            classify(500, &headers, now),
            Answer::Failed(_, _, None)
        ));
        let date = (now + chrono::Duration::seconds(90)).to_rfc2822();
        headers.insert(reqwest::header::RETRY_AFTER, date.parse().unwrap());
        let Answer::Failed(_, _, Some(wait)) = classify(503, &headers, now) else {
            panic!("no wait");
        };
        assert!((88..=90).contains(&wait.as_secs()), "{wait:?}");
        headers.insert(reqwest::header::RETRY_AFTER, "999999999".parse().unwrap());
        assert!(matches!(
            classify(503, &headers, now),
            Answer::Failed(_, _, Some(MAX_RETRY_AFTER))
        ));
        headers.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert!(matches!(
            classify(503, &headers, now),
            Answer::Failed(_, _, None)
        ));
    }

    #[test]
    fn jitter_stays_within_a_tenth_and_spreads_notifications() {
        let delay = Duration::from_secs(300);
        let mut seen = HashSet::new();
        for position in 1..50 {
            let id = NotificationId {
                position: Position(position),
                index: 0,
            };
            let waited = jittered(delay, id, 3);
            assert!(waited >= Duration::from_secs(270) && waited <= Duration::from_secs(330));
            assert_eq!(waited, jittered(delay, id, 3));
            seen.insert(waited);
        }
        assert!(seen.len() > 10);
        assert_eq!(
            jittered(
                Duration::ZERO,
                NotificationId {
                    position: Position(1),
                    index: 0
                },
                1
            ),
            Duration::ZERO
        );
    }

    #[test]
    fn endpoint_urls_are_parsed_fully() {
        assert!(parse_endpoint_url("https://hooks.example.com/linkflow?x=1").is_ok());
        assert!(parse_endpoint_url("http://[::1]:8080/h").is_ok());
        assert!(parse_endpoint_url("http://exa mple.com/").is_err());
        assert!(parse_endpoint_url("http://host:99999/").is_err());
    }
}

//! The engine handle users embed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::Utc;
use linkflow_core::funnel::{self, Funnel, FunnelQuery};
use linkflow_core::{MerchantStatus, Position, Session, SessionId, Version};
use linkflow_store::{EventStore, SledOptions, SledStore, VerifyReport};
use tokio::sync::{mpsc, oneshot, watch};

use crate::cache::{CacheStats, SessionCache};
use crate::config::{EngineConfig, StoreChoice};
use crate::error::EngineError;
use crate::folded::Folded;
use crate::ingest::{IncomingEvent, IngestOutcome};
use crate::query::{
    self, AccountView, HistoryEntry, RebuildStats, RejectedList, SessionFilter, SessionView,
};
use crate::stats::{WriteCounters, WriteStats};
use crate::subscribe::Subscription;
use crate::writer::{refold_stale, run_writer, RefoldReport, Request, Shared};

/// Requests waiting for one writer at most; senders beyond it wait (back-pressure).
const REQUEST_QUEUE: usize = 4_096;

/// [`EngineConfig::writers`] at most.
const MAX_WRITERS: usize = 16;

/// The most sync threads an engine starts: past a few, more threads only add concurrent syncs
/// of the same files.
const MAX_SYNC_THREADS: usize = 16;

/// Events whose personal fields [`Engine::seal_events`] sealed (and whose keys it made
/// durable), ready for [`Engine::ingest_sealed`]. Only the engine makes them, so that nothing
/// unsealed can be handed in as sealed.
#[derive(Debug)]
pub struct SealedEvents(Vec<IncomingEvent>);

impl SealedEvents {
    /// How many events.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The linkflow engine: link sessions as state machines over a durable event log.
///
/// Cheap to clone; every clone drives the same engine. Ingests from all clones go through one
/// writer thread that group-commits them; queries read the store directly.
///
/// ```no_run
/// # async fn demo() -> Result<(), linkflow::EngineError> {
/// use linkflow::{Engine, IncomingEvent};
/// use linkflow_core::{Event, EventKind, Provider, SessionId};
///
/// let engine = Engine::open("./linkflow-data")?;
/// let session = SessionId::new("sess_1").unwrap();
/// let outcome = engine
///     .ingest(IncomingEvent::new(session.clone(), Provider::Moneykit, Event::new(EventKind::Opened)))
///     .await?;
/// println!("{outcome:?}");
/// println!("{:?}", engine.session(&session).await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    refolded: RefoldReport,
    /// One queue per writer thread ([`EngineConfig::writers`]).
    requests: Arc<[mpsc::Sender<Request>]>,
    writers: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

/// A listing of sessions: [`query::sessions_page`] or [`query::recent_sessions_page`].
type SessionLister = fn(
    &dyn EventStore,
    &SessionFilter,
    usize,
    Option<&crate::Cursor>,
    (chrono::DateTime<Utc>, chrono::Duration),
) -> Result<crate::SessionPage, EngineError>;

impl Engine {
    /// Opens (or creates) an engine on sled in `path` with the default configuration.
    pub fn open(path: impl Into<PathBuf>) -> Result<Engine, EngineError> {
        Engine::open_with(EngineConfig::new(path))
    }

    /// Opens an engine with `config`. Blocks while the store opens.
    pub fn open_with(config: EngineConfig) -> Result<Engine, EngineError> {
        if config.cache_sessions == 0
            || config.max_batch_events == 0
            || config.sync_threads == 0
            || config.max_events_per_stream == 0
            || config.writers == 0
        {
            return Err(EngineError::InvalidConfig(
                "cache_sessions, max_batch_events, sync_threads, writers and max_events_per_stream must be at least 1".into(),
            ));
        }
        if config.writers > MAX_WRITERS {
            return Err(EngineError::InvalidConfig(format!(
                "writers is {}; at most {MAX_WRITERS}",
                config.writers
            )));
        }
        if config.sync_threads > MAX_SYNC_THREADS {
            return Err(EngineError::InvalidConfig(format!(
                "sync_threads is {}; at most {MAX_SYNC_THREADS}",
                config.sync_threads
            )));
        }
        let owns_store = !matches!(config.store, StoreChoice::Custom(_));
        if config
            .compact_after
            .is_some_and(|age| age <= chrono::Duration::zero())
        {
            return Err(EngineError::InvalidConfig(
                "compact_after must be positive: it is how old a session's last event is before it is compacted".into(),
            ));
        }
        if config.raw_retention.is_some() && config.master_key.is_none() {
            return Err(EngineError::InvalidConfig(
                "a raw payload retention needs a master key: payloads are made unreadable by destroying their day's key (LINKFLOW_MASTER_KEY)".into(),
            ));
        }
        let privacy = match (&config.master_key, &config.store) {
            (None, StoreChoice::Sled { path, .. })
                if path.join(crate::privacy::KEY_FILE).exists() =>
            {
                return Err(EngineError::InvalidConfig(format!(
                    "{} holds erasure keys: its personal fields are sealed, so it opens only with its master key (LINKFLOW_MASTER_KEY or LINKFLOW_MASTER_KEY_FILE)",
                    path.display()
                )));
            }
            (None, _) => {
                tracing::warn!(
                    "no master key configured: personal fields and raw payloads are stored as delivered, and erasure and retention are unavailable (see docs/privacy.md)"
                );
                None
            }
            (Some(master), StoreChoice::Sled { path, .. }) => {
                std::fs::create_dir_all(path).map_err(|error| {
                    EngineError::Keys(format!("{}: {error}", path.display()))
                })?;
                Some(Arc::new(
                    crate::privacy::Privacy::open(path, master)
                        .map_err(|error| EngineError::Keys(error.to_string()))?,
                ))
            }
            // Opened with the store, below: its keys are in the database.
            #[cfg(feature = "postgres")]
            (Some(_), StoreChoice::Postgres { .. }) => None,
            (Some(_), StoreChoice::Custom(_)) => {
                return Err(EngineError::InvalidConfig(
                    "a master key (erasure) needs the engine's own store, sled or PostgreSQL, where it keeps the keys; see docs/privacy.md".into(),
                ))
            }
        };
        #[cfg(feature = "postgres")]
        let mut pg_keys = None;
        #[cfg_attr(not(feature = "postgres"), allow(unused_mut))]
        let mut delivery: Option<Arc<dyn crate::delivery::DeliveryState>> = None;
        let store: Arc<dyn EventStore> = match config.store {
            StoreChoice::Sled {
                path,
                cache_capacity_bytes,
                preallocate_log,
            } => {
                let mut options = SledOptions::new(path);
                options.cache_capacity_bytes = cache_capacity_bytes;
                options.wal_preallocate = preallocate_log;
                Arc::new(SledStore::open_with(options)?)
            }
            #[cfg(feature = "postgres")]
            StoreChoice::Postgres { url, pool_size } => {
                let mut options = linkflow_postgres::PgOptions::new(url);
                options.pool_size = pool_size;
                let store = Arc::new(linkflow_postgres::PgStore::open_with(options)?);
                pg_keys = Some(linkflow_postgres::PgKeys::new(Arc::clone(&store)));
                let mut node = [0u8; 8];
                getrandom::fill(&mut node).expect("the operating system's random source works");
                delivery = Some(Arc::new(crate::pg_delivery::PgDeliveryState::new(
                    linkflow_postgres::PgDelivery::new(Arc::clone(&store)),
                    format!("node-{:016x}", u64::from_be_bytes(node)),
                )));
                store
            }
            StoreChoice::Custom(store) => store,
        };
        #[cfg(feature = "postgres")]
        let privacy = match (pg_keys, &config.master_key) {
            (Some(keys), Some(master)) => Some(crate::pg_keys::open(keys, master)?),
            (Some(keys), None) if keys.sealed()? => {
                return Err(EngineError::InvalidConfig(
                    "this database holds erasure keys: its personal fields are sealed, so it opens only with its master key (LINKFLOW_MASTER_KEY or LINKFLOW_MASTER_KEY_FILE)".into(),
                ));
            }
            _ => privacy,
        };
        // Whatever is in the log at open was written by an earlier run; make it durable before
        // anyone can observe it, so a subscriber never sees an event a crash could take back.
        store.sync()?;
        let (visible, _) = watch::channel(store.head()?);
        // Other nodes' commits (on a shared store) wake subscribers too. Such a store commits
        // durably, so their heads may be published at once.
        let remote = visible.clone();
        let store_is_shared = store.watch_remote_commits(Box::new(move |head| {
            remote.send_if_modified(|visible| {
                let moved = head > *visible;
                if moved {
                    *visible = head;
                }
                moved
            });
        }))?;
        let shared = Arc::new(Shared {
            store,
            owns_store,
            store_is_shared,
            cache: Mutex::new(SessionCache::new(config.cache_sessions)),
            visible,
            catch_up: Arc::new(tokio::sync::Semaphore::new(
                crate::subscribe::catch_up_readers(),
            )),
            durability: config.durability,
            max_batch_events: config.max_batch_events,
            max_events_per_stream: config.max_events_per_stream,
            inactivity_timeout: config.inactivity_timeout,
            privacy,
            delivery,
            raw_retention: config.raw_retention,
            compact_after: config.compact_after,
            stats: WriteCounters::default(),
            failure: Mutex::new(None),
        });
        // Streams folded with other rules are folded again before the first request.
        let refolded = refold_stale(&shared)?;
        // A store that serializes its commits gains nothing from a second writer.
        let writers = if shared.store.numbers_at_commit() {
            1
        } else {
            config.writers
        };
        let sync_threads = config.sync_threads;
        let mut requests = Vec::with_capacity(writers);
        let mut threads = Vec::with_capacity(writers);
        for index in 0..writers {
            let (sender, receiver) = mpsc::channel(REQUEST_QUEUE);
            let writer_shared = Arc::clone(&shared);
            let name = match writers {
                1 => "linkflow-writer".to_owned(),
                _ => format!("linkflow-writer-{index}"),
            };
            let thread = std::thread::Builder::new()
                .name(name)
                .spawn(move || run_writer(writer_shared, receiver, sync_threads))
                .map_err(|error| {
                    EngineError::InvalidConfig(format!("cannot start the writer thread: {error}"))
                })?;
            requests.push(sender);
            threads.push(thread);
        }
        Ok(Engine {
            shared,
            refolded,
            requests: requests.into(),
            writers: Arc::new(Mutex::new(threads)),
        })
    }

    /// The writer a request goes to: its first event's stream's (so one session's requests
    /// are decided in the order they were sent), the first for everything else.
    fn lane(&self, request: &Request) -> usize {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        match request {
            Request::Ingest { events, .. } if self.requests.len() > 1 => {
                events.first().map_or(0, |event| {
                    let hash = BuildHasherDefault::<DefaultHasher>::default()
                        .hash_one(event.session.as_str());
                    (hash % self.requests.len() as u64) as usize
                })
            }
            _ => 0,
        }
    }

    /// Sends the writer the request `make` builds from its reply channel and the instant it was
    /// sent (for `write_stats`), and waits for the answer.
    pub(crate) async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, EngineError>>, Instant) -> Request,
    ) -> Result<T, EngineError> {
        let (reply, answer) = oneshot::channel();
        let request = make(reply, Instant::now());
        let lane = self.lane(&request);
        self.requests[lane]
            .send(request)
            .await
            .map_err(|_| EngineError::Closed)?;
        answer.await.map_err(|_| EngineError::Closed)?
    }

    pub(crate) async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn EventStore) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || read(shared.store.as_ref()))
            .await
            .map_err(|_| EngineError::Closed)?
    }

    /// `events` with their personal fields sealed (with a master key; as they are without), and
    /// the keys they are sealed under durable: what [`Engine::ingest_batch`] does before it
    /// commits. Blocking (CPU and one sync of the key file): a caller that prepares its next
    /// batch while the engine commits the previous one seals it here, on its own thread, and
    /// hands it to [`Engine::ingest_sealed`], as a decoder thread runs ahead of the engine.
    pub fn seal_events(&self, mut events: Vec<IncomingEvent>) -> Result<SealedEvents, EngineError> {
        let Some(privacy) = &self.shared.privacy else {
            return Ok(SealedEvents(events));
        };
        if let Some(failure) = self.shared.failed() {
            return Err(failure);
        }
        let now = Utc::now();
        if privacy.prepares() {
            // Keys in a shared table: the batch's made or fetched in one round trip, not one
            // per new session.
            let ids = crate::seal::keys_of(privacy, &events, now)?;
            privacy
                .prepare(&ids)
                .map_err(|error| EngineError::Keys(error.to_string()))?;
        }
        for event in &mut events {
            crate::seal::seal_incoming(&**privacy, event, now)?;
        }
        if let Err(error) = privacy.sync() {
            // Keys that may not be on disk: no event may be sealed under them.
            let reason = format!("syncing the key file failed: {error}");
            self.shared.fail(reason.clone());
            return Err(EngineError::Keys(reason));
        }
        Ok(SealedEvents(events))
    }

    /// [`Engine::ingest_batch`] of events [`Engine::seal_events`] sealed.
    pub async fn ingest_sealed(
        &self,
        events: SealedEvents,
    ) -> Result<Vec<IngestOutcome>, EngineError> {
        let events = events.0;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.call(|reply, sent| Request::Ingest {
            events,
            reply,
            sent,
        })
        .await
    }

    /// Ingests one event. Returns once it is decided and, under `Durability::Fsync`, on disk.
    pub async fn ingest(&self, event: IncomingEvent) -> Result<IngestOutcome, EngineError> {
        let mut outcomes = self.ingest_batch(vec![event]).await?;
        Ok(outcomes.remove(0))
    }

    /// Ingests events in order, in one group commit; returns what happened to each, in order.
    pub async fn ingest_batch(
        &self,
        events: Vec<IncomingEvent>,
    ) -> Result<Vec<IngestOutcome>, EngineError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let events = match &self.shared.privacy {
            None => events,
            Some(_) => {
                let engine = self.clone();
                tokio::task::spawn_blocking(move || engine.seal_events(events))
                    .await
                    .map_err(|_| EngineError::Closed)??
                    .0
            }
        };
        self.call(|reply, sent| Request::Ingest {
            events,
            reply,
            sent,
        })
        .await
    }

    /// Whether the engine takes writes: `Err` once a sync failed (the engine then acknowledges
    /// nothing more; reads keep working) or its store reports a failure of its own.
    pub fn health(&self) -> Result<(), EngineError> {
        if let Some(failure) = self.shared.failed() {
            return Err(failure);
        }
        Ok(self.shared.store.health()?)
    }

    /// What opening the engine did to streams whose snapshots were folded with other rules
    /// (`docs/state-machine.md`, "Rule changes re-interpret history").
    pub fn refolded_at_open(&self) -> RefoldReport {
        self.refolded
    }

    /// How many stream states the session cache holds and the bytes it accounts for (see
    /// [`CacheStats`]); bounded by [`EngineConfig::cache_sessions`](crate::EngineConfig).
    pub fn cache_stats(&self) -> CacheStats {
        self.shared.cache().stats()
    }

    /// Where the write path's time has gone since the engine opened: requests, groups and
    /// syncs, and each request's time split into queued, committing, waiting for the sync and
    /// syncing (see [`WriteStats`]).
    pub fn write_stats(&self) -> WriteStats {
        self.shared.stats.snapshot()
    }

    /// The session's current state (the fold of every event it stored, in event-time order),
    /// or `None` if it has no event (or the id names an account or merchant stream).
    pub async fn session(&self, id: &SessionId) -> Result<Option<SessionView>, EngineError> {
        let view = |id: SessionId, state: crate::cache::SessionState| match state.folded {
            Folded::Session(timeline) => Some(SessionView {
                session_id: id,
                provider: state.provider,
                events: timeline.arrivals,
                rejected: timeline.rejected,
                compacted_at: query::compacted_at(&timeline),
                state: timeline.state,
            }),
            _ => None,
        };
        if !self.shared.store_is_shared {
            if let Some(state) = self.shared.cache().get(id) {
                return Ok(self.opened_views(view(id.clone(), state)));
            }
        }
        let id = id.clone();
        let found = self
            .read(move |store| Ok(query::load_state(store, &id)?.and_then(|state| view(id, state))))
            .await?;
        Ok(self.opened_views(found))
    }

    /// `value` with its sealed fields opened ([`Engine::show`]), through its JSON form; as it
    /// is without a master key or when it holds nothing sealed.
    fn opened<T: serde::Serialize + serde::de::DeserializeOwned>(&self, value: &mut T) {
        let Some(privacy) = &self.shared.privacy else {
            return;
        };
        let Ok(mut json) = serde_json::to_value(&*value) else {
            return;
        };
        if !crate::privacy::holds_sealed(&json) {
            return;
        }
        privacy.show_value(&mut json);
        // Through text, so that a raw payload opened into an object reads back as `RawJson`.
        if let Ok(opened) = serde_json::from_str(&json.to_string()) {
            *value = opened;
        }
    }

    /// Session views with their states' sealed fields opened.
    fn opened_views<V>(&self, mut views: V) -> V
    where
        for<'a> &'a mut V: IntoIterator<Item = &'a mut SessionView>,
    {
        for view in &mut views {
            self.opened(&mut view.state);
        }
        views
    }

    /// History entries with their bodies and raw payloads opened.
    fn opened_entries(&self, entries: &mut [HistoryEntry]) {
        for entry in entries {
            self.opened(&mut entry.body);
            self.opened(&mut entry.raw);
        }
    }

    /// Every linked account with its state and recent operations, in key order.
    pub async fn accounts(&self) -> Result<Vec<AccountView>, EngineError> {
        self.read(query::accounts).await
    }

    /// Up to `limit` (at most [`crate::MAX_PAGE_SESSIONS`]) existing accounts in stream-id
    /// order after `after`; the accounts are a range of the store's streams, so a page reads
    /// only accounts.
    pub async fn accounts_page(
        &self,
        limit: usize,
        after: Option<crate::Cursor>,
    ) -> Result<crate::AccountPage, EngineError> {
        self.read(move |store| query::accounts_page(store, "account:", limit, after.as_ref()))
            .await
    }

    /// The existing accounts of the end user `user` (the integrator's id), of every provider:
    /// a range of the store's streams per provider, at most [`crate::MAX_PAGE_SESSIONS`].
    pub async fn user_accounts(&self, user: &str) -> Result<Vec<AccountView>, EngineError> {
        let Some(user) = crate::seal::stored_user(self.shared.privacy.as_deref(), user)? else {
            return Ok(Vec::new());
        };
        self.read(move |store| {
            let mut accounts = Vec::new();
            for provider in linkflow_core::Provider::ALL {
                let prefix = linkflow_core::AccountKey::user_prefix(provider, &user);
                let left = crate::MAX_PAGE_SESSIONS - accounts.len();
                if left == 0 {
                    break;
                }
                accounts.extend(query::accounts_page(store, &prefix, left, None)?.accounts);
            }
            Ok(accounts)
        })
        .await
    }

    /// One account by its key (a Plaid item: [`linkflow_core::AccountKey::plaid_item`]), if it
    /// exists (an account whose link was withdrawn does not).
    pub async fn account(
        &self,
        key: &linkflow_core::AccountKey,
    ) -> Result<Option<AccountView>, EngineError> {
        let mut key = key.clone();
        // A Plaid item's account names no user; others are stored under the stored user id.
        if !key.external_user_id.is_empty() {
            match crate::seal::stored_user(self.shared.privacy.as_deref(), &key.external_user_id)? {
                Some(user) => key.external_user_id = user,
                None => return Ok(None),
            }
        }
        let Ok(stream) = key.stream_id() else {
            return Ok(None);
        };
        self.read(move |store| Ok(query::account(store, &stream)?.filter(|view| view.key == key)))
            .await
    }

    /// Up to `limit` (at most [`crate::MAX_PAGE_SESSIONS`]) merchant availabilities in stream
    /// order after `after`, and where the next page starts (`None` after the last).
    pub async fn merchants_page(
        &self,
        limit: usize,
        after: Option<crate::Cursor>,
    ) -> Result<(Vec<MerchantStatus>, Option<crate::Cursor>), EngineError> {
        self.read(move |store| query::merchants_page(store, limit, after.as_ref()))
            .await
    }

    /// Every merchant availability (newest status per merchant, type, platform and SDK).
    pub async fn merchants(&self) -> Result<Vec<MerchantStatus>, EngineError> {
        self.read(query::merchants).await
    }

    /// The session as it was after its first `version` arrivals: the fold of those events
    /// (what `show --at` shows).
    pub async fn session_at(
        &self,
        id: &SessionId,
        version: Version,
    ) -> Result<Option<SessionView>, EngineError> {
        let id = id.clone();
        let found = self
            .read(move |store| query::session_at(store, &id, version))
            .await?;
        Ok(self.opened_views(found))
    }

    /// Every event of the stream (a session, an account, a merchant), in the order its fold
    /// takes them (event time for sessions and accounts), each accepted with what it did or
    /// rejected with why; `None` if the stream has no event.
    pub async fn history(&self, id: &SessionId) -> Result<Option<Vec<HistoryEntry>>, EngineError> {
        let id = id.clone();
        let mut found = self.read(move |store| query::history(store, &id)).await?;
        if let Some(entries) = &mut found {
            self.opened_entries(entries);
        }
        Ok(found)
    }

    /// A page of [`Engine::history`]: up to `limit` (at most [`crate::MAX_PAGE_SESSIONS`])
    /// entries after `after`, and where the next page starts.
    pub async fn history_page(
        &self,
        id: &SessionId,
        limit: usize,
        after: Option<crate::Cursor>,
    ) -> Result<Option<crate::HistoryPage>, EngineError> {
        let id = id.clone();
        let mut found = self
            .read(move |store| query::history_page(store, &id, limit, after.as_ref()))
            .await?;
        if let Some(page) = &mut found {
            self.opened_entries(&mut page.entries);
        }
        Ok(found)
    }

    /// Up to `limit` (at most [`crate::MAX_PAGE_SESSIONS`]) sessions matching `filter`, after
    /// `after` (the `next` of the previous page; `None` for the first): in the order of the
    /// index the filter reads (a user's, an institution's, a phase's or a provider's sessions
    /// by first event time, then id; abandonment and first event windows by time), or in
    /// session-id order for a filter without an indexed field. A page reads at most
    /// [`crate::MAX_PAGE_SCAN`] streams or index keys, so it may hold fewer sessions than asked
    /// with a `next` to go on from; the last page has no `next`. A session that exists and
    /// matches while paging is on exactly one page, whatever is written meanwhile, unless an
    /// event earlier than its first arrives meanwhile (its index key moves back: it may then
    /// be missed by the pages still to come, never listed twice).
    pub async fn sessions_page(
        &self,
        filter: SessionFilter,
        limit: usize,
        after: Option<crate::Cursor>,
    ) -> Result<crate::SessionPage, EngineError> {
        self.filtered_page(filter, limit, after, query::sessions_page)
            .await
    }

    /// A page of sessions `list` reads with `filter` (its user id as stored), their sealed
    /// fields opened.
    async fn filtered_page(
        &self,
        filter: SessionFilter,
        limit: usize,
        cursor: Option<crate::Cursor>,
        list: SessionLister,
    ) -> Result<crate::SessionPage, EngineError> {
        let Some(filter) = self.stored_filter(filter)? else {
            return Ok(crate::SessionPage {
                sessions: Vec::new(),
                next: None,
            });
        };
        let clock = (Utc::now(), self.shared.inactivity_timeout);
        let mut page = self
            .read(move |store| list(store, &filter, limit, cursor.as_ref(), clock))
            .await?;
        page.sessions = self.opened_views(page.sessions);
        Ok(page)
    }

    /// Up to `limit` (at most [`crate::MAX_PAGE_SESSIONS`]) sessions matching `filter`, the
    /// newest first by their first event time (within `filter`'s first-event window, if any),
    /// below `before` (the previous page's `next`). It reads the first-event index from its
    /// end, at most [`crate::MAX_PAGE_SCAN`] keys a page, and checks every other field on the
    /// session, so a selective filter may give a short page with a cursor to go on from.
    pub async fn recent_sessions_page(
        &self,
        filter: SessionFilter,
        limit: usize,
        before: Option<crate::Cursor>,
    ) -> Result<crate::SessionPage, EngineError> {
        self.filtered_page(filter, limit, before, query::recent_sessions_page)
            .await
    }

    /// Every session matching `filter`, in session-id order: it reads every stream, so its
    /// cost and answer grow with the store; lists that face users use [`Engine::sessions_page`].
    pub async fn sessions(&self, filter: SessionFilter) -> Result<Vec<SessionView>, EngineError> {
        let Some(filter) = self.stored_filter(filter)? else {
            return Ok(Vec::new());
        };
        let clock = (Utc::now(), self.shared.inactivity_timeout);
        let found = self
            .read(move |store| query::sessions(store, &filter, clock))
            .await?;
        Ok(self.opened_views(found))
    }

    /// `filter` with its user id as the store holds it (sealed, with a master key); `None`
    /// when the user has no key (never seen, or erased): no session can match.
    fn stored_filter(
        &self,
        mut filter: SessionFilter,
    ) -> Result<Option<SessionFilter>, EngineError> {
        if let Some(user) = &filter.external_user_id {
            match crate::seal::stored_user(self.shared.privacy.as_deref(), user)? {
                Some(stored) => filter.external_user_id = Some(stored),
                None => return Ok(None),
            }
        }
        Ok(Some(filter))
    }

    /// Sealing of personal fields, when a master key is configured: reads open what they
    /// show with it ([`crate::privacy::Privacy::show_value`]).
    pub fn privacy(&self) -> Option<&crate::privacy::Privacy> {
        self.shared.privacy.as_deref()
    }

    pub(crate) fn privacy_arc(&self) -> Option<Arc<crate::privacy::Privacy>> {
        self.shared.privacy.clone()
    }

    /// The configured raw payload retention.
    pub fn raw_retention(&self) -> Option<chrono::Duration> {
        self.shared.raw_retention
    }

    /// How old a terminal session's last event must be for it to be compacted
    /// ([`crate::EngineConfig::compact_after`]), if set.
    pub fn compact_after(&self) -> Option<chrono::Duration> {
        self.shared.compact_after
    }

    /// A stored text field as reads show it: opened with its key, `[erased]` once the key is
    /// destroyed, as it is when it is not sealed (or no master key is configured).
    pub fn show(&self, text: &str) -> String {
        match &self.shared.privacy {
            Some(privacy) => privacy.show(text),
            None => text.to_owned(),
        }
    }

    /// Every sealed string of a JSON view opened in place (see [`Engine::show`]); raw payloads
    /// become the JSON they hold.
    pub fn show_json(&self, value: &mut serde_json::Value) {
        if let Some(privacy) = &self.shared.privacy {
            privacy.show_value(value);
        }
    }

    /// Whether `session` is abandoned now, under the configured inactivity timeout.
    pub fn is_abandoned(&self, session: &Session) -> bool {
        funnel::abandoned(session, Utc::now(), self.shared.inactivity_timeout)
    }

    /// The configured inactivity timeout.
    pub fn inactivity_timeout(&self) -> chrono::Duration {
        self.shared.inactivity_timeout
    }

    /// The gauges (sessions by phase, rejected events, quarantine, abandoned sessions) from
    /// the counters every commit maintains and the live sessions: no session is walked, so a
    /// read (a `/metrics` scrape) costs the same whatever the store holds.
    pub async fn gauges(&self) -> Result<crate::Gauges, EngineError> {
        let timeout = self.shared.inactivity_timeout;
        self.read(move |store| crate::funnel_read::gauges(store, Utc::now(), timeout))
            .await
    }

    /// Funnels for `query` from the funnel counters every commit maintains: a query reads the
    /// counters of the buckets and groups it covers, the sessions of the partial hours at the
    /// edges of its window and the live sessions, so its cost does not grow with the sessions
    /// stored (`docs/funnel.md`). Grouped by screen, which changes with every event and is not
    /// counted, it folds every session's snapshot instead.
    pub async fn funnel(&self, query: FunnelQuery) -> Result<Vec<Funnel>, EngineError> {
        self.read(move |store| {
            if query.group_by == funnel::GroupBy::Screen {
                let states = query::session_states(store)?;
                return Ok(funnel::funnel(states.iter().map(|(p, s)| (*p, s)), &query));
            }
            Ok(crate::funnel_read::aggregated_funnel(store, &query)?.0)
        })
        .await
    }

    /// Folds every stream from its events, ignoring snapshots (a cold rebuild), and says how
    /// much it folded. Fails if any stream no longer folds.
    pub async fn rebuild_from_log(&self) -> Result<RebuildStats, EngineError> {
        self.read(query::rebuild_from_log).await
    }

    /// Funnels for `query` rebuilt from the log alone (every session folded from its events).
    /// Always equal to [`Engine::funnel`]; slower, and independent of the snapshots.
    pub async fn funnel_rebuilt(&self, query: FunnelQuery) -> Result<Vec<Funnel>, EngineError> {
        self.read(move |store| {
            let states = query::session_states_from_log(store)?;
            Ok(funnel::funnel(states.iter().map(|(p, s)| (*p, s)), &query))
        })
        .await
    }

    /// The events the folds of their streams reject now: of one stream, or of every stream
    /// (at most [`crate::MAX_REJECTED_LISTED`]; the first page of [`Engine::rejected_page`]).
    pub async fn rejected(&self, stream: Option<SessionId>) -> Result<RejectedList, EngineError> {
        self.read(move |store| query::rejected(store, stream.as_ref()))
            .await
    }

    /// A page of every stream's rejected events (at most `limit`, at most
    /// [`crate::MAX_REJECTED_LISTED`]), after `after`, read from the index of streams with
    /// rejected events: streams in id order, each stream's in event-time order; `next` says
    /// where the next page starts.
    pub async fn rejected_page(
        &self,
        limit: usize,
        after: Option<crate::Cursor>,
    ) -> Result<RejectedList, EngineError> {
        self.read(move |store| query::rejected_page(store, limit, after.as_ref()))
            .await
    }

    /// Committed events with positions after `after`, in global order: the log first, then live.
    pub fn subscribe(&self, after: Position) -> Subscription {
        Subscription::new(
            Arc::clone(&self.shared.store),
            self.shared.visible.subscribe(),
            Arc::clone(&self.shared.catch_up),
            after,
        )
    }

    /// The notifications of the events after `after`, in global order (catch-up, then live):
    /// what [`crate::notify`] derives from the log. A consumer that keeps the id of the last
    /// notification it handled resumes with `notifications(Position(id.position.0 - 1))` and
    /// skips the ids up to it.
    pub fn notifications(&self, after: Position) -> crate::Notifications {
        // Not the engine itself: the stream ends when the engine is gone.
        let privacy = self.shared.privacy.clone();
        crate::Notifications::new(
            self.subscribe(after),
            Arc::clone(&self.shared.store),
            Arc::new(move |text: &str| match &privacy {
                Some(privacy) => privacy.show(text),
                None => text.to_owned(),
            }),
        )
    }

    /// Outbound delivery's state kept in the store's database, shared by every node
    /// (PostgreSQL: `PgDeliveryState`, with a lease per endpoint); `None` for the embedded
    /// store, whose delivery state lives in the data directory
    /// ([`crate::delivery::FileDeliveryState`]).
    pub fn shared_delivery_state(&self) -> Option<Arc<dyn crate::delivery::DeliveryState>> {
        self.shared.delivery.clone()
    }

    /// The notification `id` names, derived again from the log; `None` if there is none.
    pub async fn notification(
        &self,
        id: crate::NotificationId,
    ) -> Result<Option<crate::Notification>, EngineError> {
        let privacy = self.shared.privacy.clone();
        self.read(move |store| {
            crate::notify::notification_at(store, id, &|text: &str| match &privacy {
                Some(privacy) => privacy.show(text),
                None => text.to_owned(),
            })
        })
        .await
    }

    /// The last position subscribers may see now (durable under `Fsync`): how far behind the
    /// log a subscription is, without reading the store.
    pub fn visible(&self) -> Position {
        *self.shared.visible.borrow()
    }

    /// The position of the last committed event (on PostgreSQL, the last numbered one: an
    /// event is numbered a moment after its commit, see [`Engine::settle`]).
    pub fn head(&self) -> Result<Position, EngineError> {
        Ok(self.shared.store.head()?)
    }

    /// Waits until every event committed before the call has its position (at once on sled;
    /// on PostgreSQL, until no older transaction runs and the sequencer has numbered them,
    /// or the store's settle timeout), and returns the head.
    pub async fn settle(&self) -> Result<Position, EngineError> {
        self.read(|store| Ok(store.settle()?)).await
    }

    /// For how long committed events have been waiting to be numbered behind an older
    /// transaction (PostgreSQL, on the node holding the sequencer's lease): the part of a
    /// subscriber's lag the numbering adds. `None` when nothing waits.
    pub fn numbering_held_back(&self) -> Option<std::time::Duration> {
        self.shared.store.numbering_held_back()
    }

    /// Walks the log, its indexes and snapshots, folds every session, and reports every
    /// inconsistency.
    pub async fn verify(&self) -> Result<VerifyReport, EngineError> {
        self.read(crate::verify::verify).await
    }

    /// Stops taking ingests, waits for the ones already queued, syncs, and stops the writer.
    /// Other clones of this engine get [`EngineError::Closed`] afterwards.
    pub async fn shutdown(&self) -> Result<(), EngineError> {
        // The other writers finish their queues first; the first one, last, closes the store.
        let mut result = Ok(());
        for lane in (0..self.requests.len()).rev() {
            let (reply, answer) = oneshot::channel();
            let request = Request::Shutdown {
                reply,
                close: lane == 0,
            };
            let answered = match self.requests[lane].send(request).await {
                Ok(()) => answer.await.unwrap_or(Err(EngineError::Closed)),
                Err(_) => Err(EngineError::Closed),
            };
            if result.is_ok() {
                result = answered;
            }
        }
        let writers = std::mem::take(
            &mut *self
                .writers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        if !writers.is_empty() {
            let _ = tokio::task::spawn_blocking(move || {
                for writer in writers {
                    let _ = writer.join();
                }
            })
            .await;
        }
        match result {
            Err(EngineError::Closed) => Ok(()),
            other => other,
        }
    }
}

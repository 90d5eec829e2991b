//! Where the write path spends its time: counters the writer and sync threads add to, read as
//! [`WriteStats`].
//!
//! A request's time from the call to its answer is split at three instants: the writer takes
//! the group it joins, the group's commit returns, the sync covering the group starts. The
//! caller's wake-up after the answer is not in here (it happens on the caller's runtime).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The write path's counters since the engine opened, from [`Engine::write_stats`].
///
/// Per-request times are summed over requests: divide by `requests` for a mean. Each field is
/// read on its own, so a value taken while groups commit may be one group apart between
/// fields. Only requests whose group was committed count; a group whose planning or commit
/// failed is not in here.
///
/// [`Engine::write_stats`]: crate::Engine::write_stats
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Ingest and redrive calls answered by a committed group.
    pub requests: u64,
    /// Events those ingest calls carried.
    pub events: u64,
    /// Groups committed: one atomic store commit each, shared by every request in the group.
    pub groups: u64,
    /// Syncs made by the sync threads (`Durability::Fsync`); each covers every group waiting
    /// when it began. Zero under `Durability::Buffered`.
    pub syncs: u64,
    /// Summed over requests: from the call until the writer took the request's group (waiting
    /// behind the group before it, and for room in the queue).
    pub queued: Duration,
    /// Summed over requests: from the writer taking the group until its commit returned
    /// (deciding every event of the group, then the store's commit; conflict retries included).
    pub committing: Duration,
    /// Summed over requests: committed, until the sync that covers the group started (the sync
    /// thread was still syncing earlier groups).
    pub waiting_for_sync: Duration,
    /// Summed over requests: the sync that made the group durable.
    pub syncing: Duration,
    /// The writer thread's time on groups, once per group: from taking it until handing it to
    /// the sync thread (deciding, committing, updating the cache).
    pub writer_busy: Duration,
    /// The sync threads' time in syncs, once per sync, summed over the threads.
    pub sync_busy: Duration,
}

/// The counters behind [`WriteStats`], in nanoseconds.
#[derive(Default)]
pub(crate) struct WriteCounters {
    requests: AtomicU64,
    events: AtomicU64,
    groups: AtomicU64,
    syncs: AtomicU64,
    queued: AtomicU64,
    committing: AtomicU64,
    waiting_for_sync: AtomicU64,
    syncing: AtomicU64,
    writer_busy: AtomicU64,
    sync_busy: AtomicU64,
}

/// A committed group as the sync thread accounts for it.
#[derive(Clone, Copy)]
pub(crate) struct CommittedGroup {
    /// When the group's commit returned.
    pub committed_at: Instant,
    /// Requests in the group.
    pub requests: u64,
}

fn add(counter: &AtomicU64, value: u64) {
    counter.fetch_add(value, Ordering::Relaxed);
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn nanos_between(from: Instant, to: Instant) -> u64 {
    nanos(to.saturating_duration_since(from))
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn read_duration(counter: &AtomicU64) -> Duration {
    Duration::from_nanos(read(counter))
}

impl WriteCounters {
    /// A request the writer took at `taken`, sent at `sent`.
    pub fn queued(&self, sent: Instant, taken: Instant) {
        add(&self.queued, nanos_between(sent, taken));
    }

    /// A group of `requests` calls carrying `events` events, taken at `taken`, whose commit
    /// returned at `committed_at`.
    pub fn committed(&self, requests: u64, events: u64, taken: Instant, committed_at: Instant) {
        add(&self.requests, requests);
        add(&self.events, events);
        add(&self.groups, 1);
        add(
            &self.committing,
            nanos_between(taken, committed_at).saturating_mul(requests),
        );
    }

    /// The writer's time on a group taken at `taken`, done now.
    pub fn writer_done(&self, taken: Instant) {
        add(&self.writer_busy, nanos_between(taken, Instant::now()));
    }

    /// A sync from `started` to `ended` that covered `groups`.
    pub fn synced(&self, groups: &[CommittedGroup], started: Instant, ended: Instant) {
        add(&self.syncs, 1);
        let syncing = nanos_between(started, ended);
        add(&self.sync_busy, syncing);
        for group in groups {
            add(
                &self.waiting_for_sync,
                nanos_between(group.committed_at, started).saturating_mul(group.requests),
            );
            add(&self.syncing, syncing.saturating_mul(group.requests));
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> WriteStats {
        WriteStats {
            requests: read(&self.requests),
            events: read(&self.events),
            groups: read(&self.groups),
            syncs: read(&self.syncs),
            queued: read_duration(&self.queued),
            committing: read_duration(&self.committing),
            waiting_for_sync: read_duration(&self.waiting_for_sync),
            syncing: read_duration(&self.syncing),
            writer_busy: read_duration(&self.writer_busy),
            sync_busy: read_duration(&self.sync_busy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_request_times_are_weighted_by_the_requests_of_each_group() {
        let counters = WriteCounters::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        counters.queued(t0, t0 + ms(2));
        counters.queued(t0 + ms(1), t0 + ms(2));
        counters.committed(2, 5, t0 + ms(2), t0 + ms(5));
        counters.committed(1, 1, t0 + ms(5), t0 + ms(6));
        let groups = [
            CommittedGroup {
                committed_at: t0 + ms(5),
                requests: 2,
            },
            CommittedGroup {
                committed_at: t0 + ms(6),
                requests: 1,
            },
        ];
        counters.synced(&groups, t0 + ms(7), t0 + ms(10));
        let stats = counters.snapshot();
        assert_eq!((stats.requests, stats.events), (3, 6));
        assert_eq!((stats.groups, stats.syncs), (2, 1));
        assert_eq!(stats.queued, ms(3));
        assert_eq!(stats.committing, ms(2 * 3 + 1));
        assert_eq!(stats.waiting_for_sync, ms(2 * 2 + 1));
        assert_eq!(stats.syncing, ms(3 * 3));
        assert_eq!(stats.sync_busy, ms(3));
    }

    #[test]
    fn instants_out_of_order_count_as_no_time() {
        let counters = WriteCounters::default();
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(4);
        // A request sent while its group was being formed is taken "before" it was sent.
        counters.queued(later, t0);
        counters.synced(
            &[CommittedGroup {
                committed_at: later,
                requests: 1,
            }],
            t0,
            t0,
        );
        let stats = counters.snapshot();
        assert_eq!(stats.queued, Duration::ZERO);
        assert_eq!(stats.waiting_for_sync, Duration::ZERO);
    }
}

//! Prometheus text metrics: payloads ingested by input and outcome, payloads with warnings,
//! rejected events, quarantined payloads, ingest latency, where the write path's time goes, the session cache, sessions by phase.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use linkflow::{Engine, EngineError};

/// Upper bounds of the ingest latency histogram, in seconds.
const BUCKETS_S: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Counters updated by the handlers.
#[derive(Default, Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Default, Debug)]
struct Inner {
    /// Refused requests by status and error code (at most one entry per code the API has).
    refused: BTreeMap<(u16, &'static str), u64>,
    /// Connections closed unserved, by reason.
    connections_refused: BTreeMap<&'static str, u64>,
    /// Webhooks whose signature failed, by route.
    signature_failures: BTreeMap<&'static str, u64>,
    connections_open: usize,
    sse_subscribers: usize,
    sse_cut: u64,
    ingested: BTreeMap<(&'static str, &'static str), u64>,
    warned: BTreeMap<&'static str, u64>,
    latency_buckets: [u64; BUCKETS_S.len()],
    latency_count: u64,
    latency_sum_s: f64,
}

impl Metrics {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one ingested event.
    pub fn ingested(&self, provider: &'static str, outcome: &'static str) {
        *self
            .inner()
            .ingested
            .entry((provider, outcome))
            .or_default() += 1;
    }

    /// Counts one payload stored with warnings (fields its adapter could not read).
    pub fn warned(&self, provider: &'static str) {
        *self.inner().warned.entry(provider).or_default() += 1;
    }

    /// Counts one refused request.
    pub(crate) fn refused(&self, status: u16, code: &'static str) {
        *self.inner().refused.entry((status, code)).or_default() += 1;
    }

    /// Counts one connection closed unserved.
    pub(crate) fn connection_refused(&self, refusal: crate::server::Refusal) {
        let reason = match refusal {
            crate::server::Refusal::Full => "max_connections",
            crate::server::Refusal::ClientFull => "max_connections_per_client",
        };
        *self.inner().connections_refused.entry(reason).or_default() += 1;
    }

    /// Sets the number of open connections.
    pub(crate) fn connections_open(&self, open: usize) {
        self.inner().connections_open = open;
    }

    /// Counts one webhook whose signature failed on `route`.
    pub(crate) fn signature_failed(&self, route: &'static str) {
        *self.inner().signature_failures.entry(route).or_default() += 1;
    }

    /// Sets the number of event-stream subscribers.
    pub(crate) fn sse_subscribers(&self, subscribers: usize) {
        self.inner().sse_subscribers = subscribers;
    }

    /// Counts one subscriber cut off for not reading.
    pub(crate) fn sse_cut(&self) {
        self.inner().sse_cut += 1;
    }

    /// Records one ingest request's duration.
    pub fn latency(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let mut inner = self.inner();
        for (bucket, bound) in inner.latency_buckets.iter_mut().zip(BUCKETS_S) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        inner.latency_count += 1;
        inner.latency_sum_s += seconds;
    }

    /// The metrics in Prometheus text format.
    pub async fn render(&self, engine: &Engine) -> Result<String, EngineError> {
        let gauges = engine.gauges().await?;
        let mut out = String::new();
        {
            let inner = self.inner();
            out.push_str("# HELP linkflow_events_ingested_total Payloads ingested over HTTP, by input and outcome (accepted, rejected, duplicate, quarantined, refused).\n# TYPE linkflow_events_ingested_total counter\n");
            for ((provider, outcome), count) in &inner.ingested {
                let _ = writeln!(out, "linkflow_events_ingested_total{{provider=\"{provider}\",outcome=\"{outcome}\"}} {count}");
            }
            out.push_str("# HELP linkflow_http_refused_total Requests refused, by status and error code.\n# TYPE linkflow_http_refused_total counter\n");
            for ((status, code), count) in &inner.refused {
                let _ = writeln!(
                    out,
                    "linkflow_http_refused_total{{status=\"{status}\",error=\"{code}\"}} {count}"
                );
            }
            out.push_str("# HELP linkflow_http_connections_refused_total Connections closed unserved, by the limit they were past.\n# TYPE linkflow_http_connections_refused_total counter\n");
            for (reason, count) in &inner.connections_refused {
                let _ = writeln!(
                    out,
                    "linkflow_http_connections_refused_total{{reason=\"{reason}\"}} {count}"
                );
            }
            out.push_str("# HELP linkflow_http_connections_open Connections open now (served by linkflow serve).\n# TYPE linkflow_http_connections_open gauge\n");
            let _ = writeln!(
                out,
                "linkflow_http_connections_open {}",
                inner.connections_open
            );
            out.push_str("# HELP linkflow_webhook_signature_failures_total Webhooks refused for their signature, by route.\n# TYPE linkflow_webhook_signature_failures_total counter\n");
            for (route, count) in &inner.signature_failures {
                let _ = writeln!(
                    out,
                    "linkflow_webhook_signature_failures_total{{route=\"{route}\"}} {count}"
                );
            }
            out.push_str("# HELP linkflow_sse_subscribers Event-stream subscribers connected now.\n# TYPE linkflow_sse_subscribers gauge\n");
            let _ = writeln!(out, "linkflow_sse_subscribers {}", inner.sse_subscribers);
            out.push_str("# HELP linkflow_sse_cut_total Event-stream subscribers cut off for not reading.\n# TYPE linkflow_sse_cut_total counter\n");
            let _ = writeln!(out, "linkflow_sse_cut_total {}", inner.sse_cut);
            out.push_str("# HELP linkflow_payload_warnings_total Payloads stored with fields their adapter could not read, by input.\n# TYPE linkflow_payload_warnings_total counter\n");
            for (provider, count) in &inner.warned {
                let _ = writeln!(
                    out,
                    "linkflow_payload_warnings_total{{provider=\"{provider}\"}} {count}"
                );
            }
            out.push_str("# HELP linkflow_ingest_duration_seconds Duration of ingest requests.\n# TYPE linkflow_ingest_duration_seconds histogram\n");
            for (bucket, bound) in inner.latency_buckets.iter().zip(BUCKETS_S) {
                let _ = writeln!(
                    out,
                    "linkflow_ingest_duration_seconds_bucket{{le=\"{bound}\"}} {bucket}"
                );
            }
            let _ = writeln!(
                out,
                "linkflow_ingest_duration_seconds_bucket{{le=\"+Inf\"}} {}",
                inner.latency_count
            );
            let _ = writeln!(
                out,
                "linkflow_ingest_duration_seconds_sum {}",
                inner.latency_sum_s
            );
            let _ = writeln!(
                out,
                "linkflow_ingest_duration_seconds_count {}",
                inner.latency_count
            );
        }
        out.push_str("# HELP linkflow_rejected_events Events that their stream's fold rejects now, of sessions and accounts (listed by GET /v1/parked).\n# TYPE linkflow_rejected_events gauge\n");
        let _ = writeln!(out, "linkflow_rejected_events {}", gauges.rejected_events);
        out.push_str("# HELP linkflow_quarantined_payloads Payloads that named no stream, by state (pending, or released by a redrive).\n# TYPE linkflow_quarantined_payloads gauge\n");
        let _ = writeln!(
            out,
            "linkflow_quarantined_payloads{{state=\"pending\"}} {}",
            gauges.quarantine_pending
        );
        let _ = writeln!(
            out,
            "linkflow_quarantined_payloads{{state=\"released\"}} {}",
            gauges.quarantine_released
        );
        out.push_str("# HELP linkflow_numbering_held_back_seconds For how long committed events have waited to be numbered behind an older transaction (PostgreSQL, on the node holding the sequencer's lease; 0: nothing waits).\n# TYPE linkflow_numbering_held_back_seconds gauge\n");
        let _ = writeln!(
            out,
            "linkflow_numbering_held_back_seconds {}",
            engine
                .numbering_held_back()
                .map_or(0.0, |held| held.as_secs_f64())
        );
        let write = engine.write_stats();
        out.push_str("# HELP linkflow_write_requests_total Ingest and redrive calls answered by a committed group.\n# TYPE linkflow_write_requests_total counter\n");
        let _ = writeln!(out, "linkflow_write_requests_total {}", write.requests);
        out.push_str("# HELP linkflow_write_groups_total Group commits (one atomic store commit each).\n# TYPE linkflow_write_groups_total counter\n");
        let _ = writeln!(out, "linkflow_write_groups_total {}", write.groups);
        out.push_str("# HELP linkflow_write_syncs_total Syncs, each covering every committed group waiting when it began.\n# TYPE linkflow_write_syncs_total counter\n");
        let _ = writeln!(out, "linkflow_write_syncs_total {}", write.syncs);
        out.push_str("# HELP linkflow_write_request_seconds_total Time summed over write requests, by stage: queued, committing, waiting_for_sync, syncing.\n# TYPE linkflow_write_request_seconds_total counter\n");
        for (stage, time) in [
            ("queued", write.queued),
            ("committing", write.committing),
            ("waiting_for_sync", write.waiting_for_sync),
            ("syncing", write.syncing),
        ] {
            let _ = writeln!(
                out,
                "linkflow_write_request_seconds_total{{stage=\"{stage}\"}} {}",
                time.as_secs_f64()
            );
        }
        out.push_str("# HELP linkflow_write_thread_busy_seconds_total Time the writer thread spent on groups, and the sync threads (summed) in syncs.\n# TYPE linkflow_write_thread_busy_seconds_total counter\n");
        for (thread, time) in [("writer", write.writer_busy), ("sync", write.sync_busy)] {
            let _ = writeln!(
                out,
                "linkflow_write_thread_busy_seconds_total{{thread=\"{thread}\"}} {}",
                time.as_secs_f64()
            );
        }
        let cache = engine.cache_stats();
        out.push_str("# HELP linkflow_cache_states Stream states in the session cache.\n# TYPE linkflow_cache_states gauge\n");
        let _ = writeln!(out, "linkflow_cache_states {}", cache.states);
        out.push_str("# HELP linkflow_cache_bytes Bytes the session cache accounts for (compact states, ids, table slots).\n# TYPE linkflow_cache_bytes gauge\n");
        let _ = writeln!(out, "linkflow_cache_bytes {}", cache.bytes);
        out.push_str(
            "# HELP linkflow_sessions Sessions by phase.\n# TYPE linkflow_sessions gauge\n",
        );
        for phase in linkflow_core::Phase::ALL {
            let count = gauges.sessions_by_phase[usize::from(phase.rank())];
            let _ = writeln!(out, "linkflow_sessions{{phase=\"{phase}\"}} {count}");
        }
        out.push_str("# HELP linkflow_sessions_abandoned Open sessions silent for the inactivity timeout or longer.\n# TYPE linkflow_sessions_abandoned gauge\n");
        let _ = writeln!(out, "linkflow_sessions_abandoned {}", gauges.abandoned);
        Ok(out)
    }
}

//! `linkflow serve`: the HTTP API until SIGTERM or Ctrl-C; accepted requests finish and are
//! durable before the process exits.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use linkflow::Engine;
use linkflow_http::plaid_keys::{self, KeyEndpoint, PlaidKeys};
use linkflow_http::{serve_with, HttpConfig, ServeConfig};
use linkflow_providers::plaid_jwt::JwkSet;
use tracing_subscriber::EnvFilter;

use crate::CliError;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as text or, with
/// `LINKFLOW_LOG_FORMAT=json`, one JSON object per line (with the span fields: a request's id,
/// method and path; a commit group's sizes and outcomes).
fn init_logging() -> Result<(), CliError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match env("LINKFLOW_LOG_FORMAT").as_deref() {
        None | Some("text") => {
            let _ = builder
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .try_init();
        }
        Some("json") => {
            let _ = builder
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .try_init();
        }
        Some(other) => {
            return Err(CliError(format!(
                "LINKFLOW_LOG_FORMAT is `{other}`; expected text or json"
            )))
        }
    }
    Ok(())
}

/// `linkflow serve`'s options: where to listen and the server's bounds.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    /// Seconds a client may take to send a request's headers, and a keep-alive connection
    /// may sit idle.
    #[arg(long, env = "LINKFLOW_HEADER_TIMEOUT_SECS", default_value_t = linkflow_http::DEFAULT_HEADER_TIMEOUT.as_secs())]
    header_timeout_secs: u64,
    /// Connections served at once; past it new ones are closed at once.
    #[arg(long, env = "LINKFLOW_MAX_CONNECTIONS", default_value_t = linkflow_http::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Connections one client address may hold at once.
    #[arg(long, env = "LINKFLOW_MAX_CONNECTIONS_PER_CLIENT", default_value_t = linkflow_http::DEFAULT_MAX_CONNECTIONS_PER_CLIENT)]
    max_connections_per_client: usize,
    /// Seconds shutdown waits for requests in flight before cutting their connections.
    #[arg(long, env = "LINKFLOW_SHUTDOWN_DEADLINE_SECS", default_value_t = linkflow_http::DEFAULT_SHUTDOWN_DEADLINE.as_secs())]
    shutdown_deadline_secs: u64,
    /// Seconds a client may take to send a request's body (408 past it).
    #[arg(long, env = "LINKFLOW_BODY_TIMEOUT_SECS", default_value_t = linkflow_http::BODY_TIMEOUT.as_secs())]
    body_timeout_secs: u64,
    /// Seconds an event-stream subscriber may read nothing while its buffer is full before it
    /// is cut off.
    #[arg(long, env = "LINKFLOW_SUBSCRIBER_STALL_SECS", default_value_t = linkflow_http::SUBSCRIBER_STALL.as_secs())]
    subscriber_stall_secs: u64,
    /// Events per second sent to event-stream subscribers that are catching up (far behind the
    /// log), all together; 0: no limit. Live subscribers are not limited.
    #[arg(long, env = "LINKFLOW_CATCH_UP_EVENTS_PER_SEC", default_value_t = linkflow_http::DEFAULT_CATCH_UP_EVENTS_PER_SECOND)]
    catch_up_events_per_sec: u64,
    /// Event-stream subscribers served at once (503 past it).
    #[arg(long, env = "LINKFLOW_MAX_SUBSCRIBERS", default_value_t = linkflow_http::DEFAULT_MAX_SUBSCRIBERS)]
    max_subscribers: usize,
    /// Seconds a notification's POST to an endpoint may take before it counts as failed.
    #[arg(long, env = "LINKFLOW_DELIVERY_TIMEOUT_SECS", default_value_t = linkflow_http::deliver::DEFAULT_TIMEOUT.as_secs_f64())]
    delivery_timeout_secs: f64,
    /// The delay before each delivery attempt in seconds, comma-separated (the first is
    /// usually 0); its length is the number of attempts. Default: the Standard Webhooks
    /// schedule (0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h).
    #[arg(long, env = "LINKFLOW_DELIVERY_SCHEDULE_SECS", value_delimiter = ',')]
    delivery_schedule_secs: Option<Vec<f64>>,
    /// Seconds an endpoint's lease lasts without renewal on a shared store (PostgreSQL): how
    /// soon another node delivers to an endpoint whose node died.
    #[arg(long, env = "LINKFLOW_DELIVERY_LEASE_SECS", default_value_t = linkflow_http::deliver::DEFAULT_LEASE.as_secs_f64())]
    delivery_lease_secs: f64,
}

/// Seconds between two runs of the abandonment timer: a session is declared abandoned within
/// this of crossing the inactivity timeout.
const ABANDON_TICK: Duration = Duration::from_secs(1);

/// Declares abandoned the sessions that crossed the inactivity timeout, every [`ABANDON_TICK`].
async fn declare_abandoned_every_tick(engine: linkflow::Engine) {
    let mut every = tokio::time::interval(ABANDON_TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match engine.declare_abandoned(chrono::Utc::now()).await {
            Ok(_) => {}
            Err(linkflow::EngineError::Closed) => return,
            Err(error) => {
                tracing::error!(%error, "declaring abandoned sessions failed; trying again");
            }
        }
    }
}

fn seconds(value: f64, what: &str) -> Result<Duration, CliError> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| CliError(format!("{what}: `{value}` is not a number of seconds")))
}

fn delivery_config(args: &ServeArgs) -> Result<linkflow_http::deliver::DeliveryConfig, CliError> {
    let mut config = linkflow_http::deliver::DeliveryConfig {
        timeout: seconds(args.delivery_timeout_secs, "--delivery-timeout-secs")?,
        lease: seconds(args.delivery_lease_secs, "--delivery-lease-secs")?,
        ..linkflow_http::deliver::DeliveryConfig::default()
    };
    if let Some(schedule) = &args.delivery_schedule_secs {
        if schedule.is_empty() || schedule.len() > 32 {
            return Err(CliError("--delivery-schedule-secs: 1 to 32 delays".into()));
        }
        config.schedule = schedule
            .iter()
            .map(|delay| seconds(*delay, "--delivery-schedule-secs"))
            .collect::<Result<_, _>>()?;
    }
    Ok(config)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
    tracing::info!("shutting down: finishing accepted requests");
}

/// Makes raw payloads past their retention unreadable at start-up and every hour after.
async fn expire_every_hour(engine: linkflow::Engine) {
    let mut every = tokio::time::interval(Duration::from_secs(3_600));
    loop {
        every.tick().await;
        if let Err(error) = engine.expire_raw_payloads(chrono::Utc::now()).await {
            tracing::error!(%error, "expiring raw payloads failed; trying again in an hour");
        }
    }
}

/// Compaction's age is counted in days, and each run examines every session older than its
/// cutoff (docs/privacy.md, "Compaction"): once at start-up, then once a day.
async fn compact_every_day(engine: linkflow::Engine) {
    let mut every = tokio::time::interval(Duration::from_secs(24 * 3_600));
    loop {
        every.tick().await;
        if let Err(error) = engine.compact_old_sessions(chrono::Utc::now()).await {
            tracing::error!(%error, "compacting old sessions failed; trying again in a day");
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// Plaid's webhook keys: a JWK set file (`LINKFLOW_PLAID_JWKS`), or Plaid's endpoint with
/// `LINKFLOW_PLAID_CLIENT_ID` and `LINKFLOW_PLAID_SECRET` at `LINKFLOW_PLAID_ENV` (`production`,
/// the default, or `sandbox`) or at `LINKFLOW_PLAID_URL` (a stand-in); none: unverified.
fn plaid_keys() -> Result<Option<PlaidKeys>, CliError> {
    if let Some(path) = env("LINKFLOW_PLAID_JWKS") {
        let text = std::fs::read_to_string(&path).map_err(|error| {
            CliError(format!("cannot read LINKFLOW_PLAID_JWKS {path}: {error}"))
        })?;
        let set = JwkSet::from_json(&text)
            .map_err(|error| CliError(format!("LINKFLOW_PLAID_JWKS {path}: {error}")))?;
        return Ok(Some(PlaidKeys::Fixed(set)));
    }
    let (Some(client_id), Some(secret)) = (
        env("LINKFLOW_PLAID_CLIENT_ID"),
        env("LINKFLOW_PLAID_SECRET"),
    ) else {
        return Ok(None);
    };
    let base = match (
        env("LINKFLOW_PLAID_URL"),
        env("LINKFLOW_PLAID_ENV").as_deref(),
    ) {
        (Some(url), _) => url,
        (None, None | Some("production")) => plaid_keys::PLAID_PRODUCTION.to_owned(),
        (None, Some("sandbox")) => plaid_keys::PLAID_SANDBOX.to_owned(),
        (None, Some(other)) => {
            return Err(CliError(format!(
                "LINKFLOW_PLAID_ENV is `{other}`; expected production or sandbox"
            )))
        }
    };
    let endpoint = KeyEndpoint::new(&base, &client_id, &secret).map_err(CliError)?;
    Ok(Some(PlaidKeys::Endpoint(endpoint)))
}

pub async fn run(
    engine: Engine,
    args: &ServeArgs,
    data_dir: Option<PathBuf>,
) -> Result<ExitCode, CliError> {
    let listen = args.listen.as_str();
    init_logging()?;
    let mut config = HttpConfig::default();
    config.knot_secret = env("LINKFLOW_KNOT_SECRET").map(String::into_bytes);
    config.token = env("LINKFLOW_TOKEN");
    config.plaid_keys = plaid_keys()?.map(std::sync::Arc::new);
    config.max_subscribers = args.max_subscribers.max(1);
    config.data_dir = data_dir;
    config.catch_up_events_per_second =
        (args.catch_up_events_per_sec > 0).then_some(args.catch_up_events_per_sec);
    if let Some(list) = env("LINKFLOW_WEBHOOK_SOURCES") {
        let networks = linkflow_http::webhook_guard::SourceNetworks::parse(&list)
            .map_err(|error| CliError(format!("LINKFLOW_WEBHOOK_SOURCES: {error}")))?;
        config.webhook_sources = Some(networks);
    }
    config.body_timeout = Duration::from_secs(args.body_timeout_secs.max(1));
    config.subscriber_stall = Duration::from_secs(args.subscriber_stall_secs.max(1));
    // A server holds a descriptor per connection: raise the soft limit to the hard one, as
    // servers commonly do, so that `--max-connections` and not `ulimit -n` is the bound.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open file limit"),
    }
    let limits = ServeConfig {
        header_timeout: Duration::from_secs(args.header_timeout_secs.max(1)),
        max_connections: args.max_connections.max(1),
        max_connections_per_client: args.max_connections_per_client.max(1),
        shutdown_deadline: Duration::from_secs(args.shutdown_deadline_secs),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|error| CliError(format!("cannot listen on {listen}: {error}")))?;
    let address = listener
        .local_addr()
        .map_err(|error| CliError(format!("cannot read the listening address: {error}")))?;
    // On stderr, so scripts (and tests with port 0) can find the port.
    eprintln!("linkflow: listening on {address}");
    eprintln!("linkflow: the web console is at http://{address}/ui");
    if engine.raw_retention().is_some() {
        tokio::spawn(expire_every_hour(engine.clone()));
    }
    if engine.compact_after().is_some() {
        tokio::spawn(compact_every_day(engine.clone()));
    }
    if engine.privacy().is_some() {
        eprintln!("linkflow: erasure available: personal fields and raw payloads are sealed under LINKFLOW_MASTER_KEY");
    } else {
        eprintln!("linkflow: erasure unavailable: no LINKFLOW_MASTER_KEY, so personal fields and raw payloads are stored as delivered (docs/privacy.md)");
    }
    tokio::spawn(declare_abandoned_every_tick(engine.clone()));
    // Outbound delivery, with its state in the database (PostgreSQL: every node delivers, one
    // per endpoint by its lease) or in the data directory; the HTTP routes of endpoints and
    // deliveries share it.
    let (stop_delivery, delivery_stopped) = tokio::sync::watch::channel(false);
    let state: Option<std::sync::Arc<dyn linkflow::delivery::DeliveryState>> =
        match (&config.data_dir, engine.shared_delivery_state()) {
            (_, Some(shared)) => Some(shared),
            (Some(dir), None) => Some(std::sync::Arc::new(
                linkflow::delivery::FileDeliveryState::for_data_dir(dir)
                    .map_err(|error| CliError(error.to_string()))?,
            )),
            (None, None) => None,
        };
    let delivery = match state {
        Some(state) => {
            config.delivery = Some(std::sync::Arc::clone(&state));
            let deliverer = linkflow_http::deliver::Deliverer::new(
                engine.clone(),
                state,
                delivery_config(args)?,
            )
            .map_err(|error| CliError(error.to_string()))?;
            Some(tokio::spawn(async move {
                if let Err(error) = deliverer.run(delivery_stopped).await {
                    tracing::error!(%error, "notification delivery stopped");
                }
            }))
        }
        None => None,
    };
    tracing::info!(%address, "serving the linkflow HTTP API");
    let signal = async move {
        shutdown_signal().await;
        let _ = stop_delivery.send(true);
    };
    let served = serve_with(listener, engine, config, limits, signal).await;
    if let Some(delivery) = delivery {
        // Its workers write their cursors as they stop.
        let _ = tokio::time::timeout(Duration::from_secs(10), delivery).await;
    }
    served.map_err(|error| CliError(format!("server error: {error}")))?;
    Ok(ExitCode::SUCCESS)
}

//! `linkflow`: the command line of the linkflow engine.
//!
//! One file per command, behind [`Command`]: `ingest.rs`, `sessions.rs` (sessions, show,
//! history), `parked.rs` (parked), `quarantine.rs` (quarantine, redrive),
//! `accounts.rs` (accounts, merchants), `diagram.rs`,
//! `verify.rs`, `demo.rs`, `serve.rs`, `funnel.rs`. Output is for people by default; `--json` prints the JSON shapes of
//! `linkflow::views`, which the HTTP API shares.
#![forbid(unsafe_code)]

/// `println!` that ends the process quietly when standard output is closed (`linkflow ... |
/// head`), instead of panicking on the broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(error) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::output_failed(error);
        }
    }};
}

/// `print!` with the same broken-pipe handling as `out!`.
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(error) = write!(std::io::stdout().lock(), $($arg)*) {
            $crate::output_failed(error);
        }
    }};
}

/// Standard output failed: a closed pipe ends the process with success (the reader has what
/// it wanted); anything else is reported.
pub(crate) fn output_failed(error: std::io::Error) {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("linkflow: cannot write output: {error}");
    std::process::exit(2);
}

mod accounts;
mod demo;
mod diagram;
mod endpoints;
mod funnel;
mod ingest;
mod parked;
mod quarantine;
mod serve;
mod sessions;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use linkflow::{Engine, EngineError, Feed};
use linkflow_core::{Phase, Provider, SessionId, Version};

/// linkflow: link sessions of connect flows as explicit state machines over a durable log.
#[derive(Debug, Parser)]
#[command(name = "linkflow", version, about)]
pub(crate) struct Cli {
    /// The data directory of the embedded store.
    #[arg(
        long,
        global = true,
        env = "LINKFLOW_DATA_DIR",
        default_value = "./linkflow-data"
    )]
    data_dir: PathBuf,
    /// Keep the log in PostgreSQL instead (`postgres://user:pass@host:5432/db`), shared by every
    /// linkflow node given the same URL. Without it, the embedded sled store in --data-dir.
    #[arg(long, global = true, env = "LINKFLOW_DATABASE_URL", value_name = "URL")]
    store: Option<String>,
    /// With --store: the most PostgreSQL connections this node's calls use at once (ingest,
    /// reads, delivery); the sequencer and the commit watcher hold one each besides.
    #[arg(long, global = true, env = "LINKFLOW_PG_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pg_pool_size: u16,
    /// Print machine-readable JSON instead of text for people.
    #[arg(long, global = true)]
    json: bool,
    /// Minutes without an event after which a non-terminal session is abandoned.
    #[arg(
        long,
        global = true,
        env = "LINKFLOW_INACTIVITY_TIMEOUT_MINUTES",
        default_value_t = 30
    )]
    inactivity_timeout: u32,
    /// The inactivity timeout in seconds instead (short flows, tests): when set, it wins over
    /// --inactivity-timeout.
    #[arg(long, global = true, env = "LINKFLOW_INACTIVITY_TIMEOUT_SECS", value_parser = clap::value_parser!(u32).range(1..))]
    inactivity_timeout_secs: Option<u32>,
    /// Days raw payloads stay readable (needs a master key): `serve` makes each day's
    /// unreadable once the whole day is older, every hour; `expire` does it once. Unset: kept
    /// for as long as the store.
    #[arg(long, global = true, env = "LINKFLOW_RAW_RETENTION_DAYS", value_parser = clap::value_parser!(u32).range(1..))]
    raw_retention_days: Option<u32>,
    /// Days after its last event a session that succeeded or exited keeps its whole history:
    /// `serve` compacts older ones to their final state at start-up and once a day; `compact` does it once
    /// (docs/privacy.md). Unset: every session keeps its history.
    #[arg(long, global = true, env = "LINKFLOW_COMPACT_AFTER_DAYS", value_parser = clap::value_parser!(u32).range(1..))]
    compact_after_days: Option<u32>,
    #[command(subcommand)]
    command: Command,
}

/// A provider, as named on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProviderArg {
    Moneykit,
    Benji,
    Knot,
    Plaid,
}

impl From<ProviderArg> for Provider {
    fn from(arg: ProviderArg) -> Provider {
        match arg {
            ProviderArg::Moneykit => Provider::Moneykit,
            ProviderArg::Benji => Provider::Benji,
            ProviderArg::Knot => Provider::Knot,
            ProviderArg::Plaid => Provider::Plaid,
        }
    }
}

/// An input, as named on the command line: a provider's feed (Knot and Plaid have two).
#[derive(Debug, Clone, Copy, ValueEnum)]
enum FeedArg {
    /// MoneyKit Connect `onEvent` payloads.
    Moneykit,
    /// Benji Connect callbacks in linkflow's envelope.
    Benji,
    /// Knot webhooks.
    Knot,
    /// Knot client SDK callbacks in linkflow's envelope.
    KnotSdk,
    /// Plaid Link client callbacks (`onEvent`, `onSuccess`, `onExit`).
    Plaid,
    /// Plaid webhooks (`LINK`, `ITEM`).
    PlaidWebhook,
}

impl From<FeedArg> for Feed {
    fn from(arg: FeedArg) -> Feed {
        match arg {
            FeedArg::Moneykit => Feed::Moneykit,
            FeedArg::Benji => Feed::Benji,
            FeedArg::Knot => Feed::Knot,
            FeedArg::KnotSdk => Feed::KnotSdk,
            FeedArg::Plaid => Feed::Plaid,
            FeedArg::PlaidWebhook => Feed::PlaidWebhook,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ingest provider payloads: a JSON value, a JSON array, or JSON Lines, from FILE or `-`,
    /// read a chunk at a time (no size limit). Exit 0 when every payload was stored (accepted,
    /// duplicate, parked or quarantined), 1 when any was refused.
    Ingest {
        /// The input the payloads come from.
        #[arg(long, value_enum)]
        provider: FeedArg,
        /// The session the payloads belong to, when they do not say (Benji, Knot's SDK,
        /// MoneyKit's Android bridge). A payload's own session id wins.
        #[arg(long)]
        session: Option<String>,
        /// The end user's id, when the payloads do not say (MoneyKit).
        #[arg(long)]
        user: Option<String>,
        /// No progress on standard error.
        #[arg(long)]
        quiet: bool,
        /// The input file, or `-` for standard input.
        input: String,
    },
    /// Payloads that named no stream, kept in quarantine.
    Quarantine {
        /// Only the ones not released yet.
        #[arg(long)]
        pending: bool,
        /// Only this provider's.
        #[arg(long, value_enum)]
        provider: Option<ProviderArg>,
        /// Entries per page (at most 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
        /// Start after this cursor (the `next_cursor` a previous page printed).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// List sessions.
    Sessions {
        /// Only sessions in this phase.
        #[arg(long)]
        phase: Option<Phase>,
        /// Only sessions of this provider.
        #[arg(long, value_enum)]
        provider: Option<ProviderArg>,
        /// Only abandoned sessions (silent past the inactivity timeout, not terminal).
        #[arg(long)]
        abandoned: bool,
        /// Only sessions at this institution.
        #[arg(long)]
        institution: Option<String>,
        /// Only sessions of this end user (the integrator's id).
        #[arg(long)]
        user: Option<String>,
        /// Sessions per page (at most 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
        /// Start after this cursor (the `next_cursor` a previous page printed).
        #[arg(long, conflicts_with = "all")]
        cursor: Option<String>,
        /// Every page, one after the other: with `--json`, one session per line (JSON Lines),
        /// for exports of any size.
        #[arg(long)]
        all: bool,
    },
    /// Funnel: sessions reaching each phase, conversion, drop-off, reasons, time in phase.
    Funnel(funnel::FunnelArgs),
    /// Show one session (now, or as of a version).
    Show {
        /// The session id.
        session: String,
        /// Show the session as it was after this many events.
        #[arg(long)]
        at: Option<u64>,
    },
    /// Every event of a session in event-time order with its arrival, accepted (with the phase
    /// before and after it) or rejected (with why).
    History {
        /// The session id.
        session: String,
    },
    /// Events their session's fold rejects now, with the reasons.
    Parked {
        /// Only this session's.
        #[arg(long)]
        session: Option<String>,
        /// Events per page of every stream's (at most 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000), conflicts_with = "session")]
        limit: u16,
        /// Start after this cursor (the `next_cursor` a previous page printed).
        #[arg(long, conflicts_with = "session")]
        cursor: Option<String>,
    },
    /// Decode quarantined payloads again (every pending one, or ENTRY) and store those that
    /// now name a stream.
    Redrive {
        /// The session to give the payloads that name none.
        #[arg(long)]
        session: Option<String>,
        /// The user to give payloads that name none.
        #[arg(long)]
        user: Option<String>,
        /// Only this entry (as `linkflow quarantine` lists it).
        entry: Option<String>,
    },
    /// Linked accounts with their state and recent operations, a page at a time (`--json`:
    /// `{"accounts", "next_cursor"}`).
    Accounts {
        /// Accounts per page (at most 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
        /// Start after this cursor (the `next_cursor` a previous page printed).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Merchant availability (Knot).
    Merchants,
    /// Print a state machine as a diagram.
    Diagram {
        /// Output format.
        #[arg(long, value_enum, default_value = "mermaid")]
        format: diagram::Format,
        /// Which machine.
        #[arg(long, value_enum, default_value = "session")]
        machine: diagram::Machine,
    },
    /// Print a shell completion script (`linkflow completions bash > /etc/bash_completion.d/linkflow`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Erase an end user (needs LINKFLOW_MASTER_KEY or LINKFLOW_MASTER_KEY_FILE): destroy the
    /// keys their sessions' and accounts' personal fields and raw payloads are sealed under, so
    /// that every read shows them as `[erased]`, and record a tombstone (who asked, when).
    /// Idempotent; funnels and `verify` do not change. See docs/privacy.md.
    Erase {
        /// The end user's id (the integrator's).
        #[arg(long)]
        user: String,
        /// Who asks (an operator, a ticket), kept in the tombstone; `$USER@cli` by default.
        #[arg(long)]
        requested_by: Option<String>,
    },
    /// Rewrap every erasure key from the master key in LINKFLOW_MASTER_KEY (or _FILE) to the
    /// one in LINKFLOW_NEW_MASTER_KEY (or LINKFLOW_NEW_MASTER_KEY_FILE); from then on every
    /// command and node needs the new one. The store must not be open elsewhere (stop
    /// `serve` first). See docs/privacy.md.
    RotateMasterKey,
    /// Make the raw payloads older than --raw-retention-days unreadable now (their days' keys
    /// destroyed); the canonical events stay. `serve` does it every hour.
    Expire,
    /// Compact the sessions that succeeded or exited more than --compact-after-days ago to
    /// their final state now: their events' contents are deleted, their states, funnel counts
    /// and dedupe keys stay. `serve` does it every hour. See docs/privacy.md.
    Compact,
    /// Check the store: exit 0 when it is consistent, else print a report and exit 1 (a
    /// store whose log or files are damaged, which cannot be opened, is inconsistent too).
    Verify,
    /// Repair the embedded store after `verify` found its write-ahead log damaged: keep a copy
    /// of the log (`wal.damaged-<n>` in the data directory), recover what precedes the damage,
    /// and list every acknowledged event that could not be recovered (exit 1 when some were
    /// lost, 0 when the log was not damaged).
    Repair,
    /// Serve the HTTP API and the web console at /ui (Knot secret from LINKFLOW_KNOT_SECRET,
    /// bearer token from LINKFLOW_TOKEN, Plaid webhook keys from LINKFLOW_PLAID_JWKS or
    /// LINKFLOW_PLAID_CLIENT_ID and LINKFLOW_PLAID_SECRET).
    Serve(serve::ServeArgs),
    /// Where notifications go (`linkflow serve` delivers them; docs/notifications.md).
    Endpoints {
        #[command(subcommand)]
        command: endpoints::EndpointsCommand,
    },
    /// The latest delivery attempts of notifications (newest last), or `redeliver`.
    Deliveries {
        /// Only this endpoint's.
        #[arg(long)]
        endpoint: Option<String>,
        /// At most this many (up to 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
        #[command(subcommand)]
        command: Option<endpoints::DeliveriesCommand>,
    },
    /// Ingest the bundled sample flows of all four providers into a fresh temporary store and
    /// show what the engine made of them.
    Demo,
}

/// A failure the user must see; `main` prints it and exits with status 2.
#[derive(Debug)]
pub struct CliError(String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<EngineError> for CliError {
    fn from(error: EngineError) -> Self {
        CliError(error.to_string())
    }
}

pub(crate) fn session_id(text: &str) -> Result<SessionId, CliError> {
    SessionId::new(text).map_err(|error| CliError(format!("invalid session id `{text}`: {error}")))
}

/// A page cursor given on the command line (`--cursor`), or why it is not one.
pub(crate) fn cursor(text: Option<&str>) -> Result<Option<linkflow::Cursor>, CliError> {
    text.map(str::parse::<linkflow::Cursor>)
        .transpose()
        .map_err(|error| CliError(error.to_string()))
}

/// The engine whose keys open the sealed fields of what a command prints: set when a command
/// opens a store with a master key.
static OPENER: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();

/// A stored text field as commands print it: opened, `[erased]`, or as it is.
pub(crate) fn shown(text: &str) -> String {
    OPENER
        .get()
        .map_or_else(|| text.to_owned(), |engine| engine.show(text))
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) {
    let mut value = serde_json::to_value(value).expect("serializing output to memory cannot fail");
    if let Some(engine) = OPENER.get() {
        engine.show_json(&mut value);
    }
    out!(
        "{}",
        serde_json::to_string_pretty(&value).expect("serializing output to memory cannot fail")
    );
}

/// The master key from `LINKFLOW_MASTER_KEY` or `LINKFLOW_MASTER_KEY_FILE`, if set.
fn master_key() -> Result<Option<std::sync::Arc<linkflow::privacy::MasterKey>>, CliError> {
    linkflow::privacy::MasterKey::from_env()
        .map(|key| key.map(std::sync::Arc::new))
        .map_err(|error| CliError(format!("LINKFLOW_MASTER_KEY: {error}")))
}

/// The store the command names, for messages.
fn store_name(cli: &Cli) -> String {
    match &cli.store {
        None => cli.data_dir.display().to_string(),
        Some(url) => linkflow::config::redact(url),
    }
}

fn open(cli: &Cli) -> Result<Engine, CliError> {
    let engine = open_engine(cli)?
        .map_err(|error| CliError(format!("cannot open {}: {error}", store_name(cli))))?;
    if engine.privacy().is_some() {
        let _ = OPENER.set(engine.clone());
    }
    Ok(engine)
}

/// Opens the engine the options name; the outer error is a bad option, the inner one the
/// engine's.
fn open_engine(cli: &Cli) -> Result<Result<Engine, EngineError>, CliError> {
    // Only `ingest` and `serve` create a store; every other command reads (or repairs) one, and
    // a mistyped --data-dir must not answer "0 sessions" from an empty store made on the spot.
    let creates = matches!(cli.command, Command::Ingest { .. } | Command::Serve(_));
    if cli.store.is_none() && !creates && !cli.data_dir.exists() {
        return Err(CliError(format!(
            "no store at {}: the data directory does not exist (`linkflow ingest` or `linkflow serve` creates it; check --data-dir or LINKFLOW_DATA_DIR)",
            cli.data_dir.display()
        )));
    }
    let (mut config, _) = match &cli.store {
        None => (
            linkflow::EngineConfig::new(&cli.data_dir),
            cli.data_dir.display().to_string(),
        ),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let mut config = linkflow::EngineConfig::postgres(url);
            if let linkflow::config::StoreChoice::Postgres { pool_size, .. } = &mut config.store {
                *pool_size = usize::from(cli.pg_pool_size);
            }
            (config, linkflow::config::redact(url))
        }
        Some(other) => {
            return Err(CliError(format!(
                "--store {}: only postgres:// and postgresql:// URLs are supported (leave it out for the embedded store in --data-dir)",
                linkflow::config::redact(other)
            )))
        }
    };
    config.inactivity_timeout = match cli.inactivity_timeout_secs {
        Some(seconds) => chrono::Duration::seconds(i64::from(seconds)),
        None => chrono::Duration::minutes(i64::from(cli.inactivity_timeout)),
    };
    config.master_key = master_key()?;
    config.raw_retention = cli
        .raw_retention_days
        .map(|days| chrono::Duration::days(i64::from(days)));
    config.compact_after = cli
        .compact_after_days
        .map(|days| chrono::Duration::days(i64::from(days)));
    // A server runs long: its log's first segment is zero-filled at open, so that its syncs are
    // the short kind from the first request on. One-shot commands skip the fraction of a second.
    if matches!(cli.command, Command::Serve(_)) {
        config = config.preallocating_log();
    }
    // An ingest is one pass over a stream of any size: memory stays flat with it.
    if matches!(cli.command, Command::Ingest { .. }) {
        config = config.sized_for_ingest();
    }
    Ok(Engine::open_with(config))
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let json = cli.json;
    match cli.command {
        Command::Diagram { format, machine } => {
            diagram::run(format, machine);
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "linkflow", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo => demo::run(json).await,
        // Blocking calls (files, or the database's tables): off the async threads' duties.
        Command::Endpoints { ref command } => {
            tokio::task::block_in_place(|| endpoints::endpoints(&cli, command, json))
        }
        Command::Deliveries {
            ref endpoint,
            limit,
            ref command,
        } => tokio::task::block_in_place(|| {
            endpoints::deliveries(
                &cli,
                endpoint.as_deref(),
                usize::from(limit),
                command.as_ref(),
                json,
            )
        }),
        Command::Serve(ref args) => {
            let data_dir = cli.store.is_none().then(|| cli.data_dir.clone());
            serve::run(open(&cli)?, args, data_dir).await
        }
        Command::Repair => verify::repair(&cli, json),
        Command::Verify => match open_engine(&cli)? {
            Ok(engine) => {
                let result = verify::run(&engine, json).await;
                engine.shutdown().await?;
                result
            }
            // A store that cannot be opened because its data is damaged is inconsistent.
            Err(error) if error.is_damage() => verify::damaged(&error, json),
            Err(error) => Err(CliError(format!(
                "cannot open {}: {error}",
                store_name(&cli)
            ))),
        },
        _ => {
            let engine = open(&cli)?;
            let command = cli.command;
            let result = match command {
                Command::Ingest {
                    provider,
                    session,
                    user,
                    quiet,
                    input,
                } => match ingest::context(&input, session.as_deref(), user) {
                    Ok(context) => {
                        let show = ingest::Show {
                            json,
                            progress: !quiet,
                            lines: true,
                        };
                        ingest::run(&engine, provider.into(), context, &input, show).await
                    }
                    Err(error) => Err(error),
                },
                Command::Quarantine {
                    pending,
                    provider,
                    limit,
                    cursor,
                } => {
                    let filter = linkflow::QuarantineFilter {
                        pending_only: pending,
                        provider: provider.map(Into::into),
                    };
                    quarantine::list(&engine, filter, usize::from(limit), cursor, json).await
                }
                Command::Sessions {
                    phase,
                    provider,
                    abandoned,
                    institution,
                    user,
                    limit,
                    cursor,
                    all,
                } => {
                    let filter = linkflow::SessionFilter {
                        phase,
                        provider: provider.map(Into::into),
                        abandoned: abandoned.then_some(true),
                        institution,
                        external_user_id: user,
                        ..linkflow::SessionFilter::default()
                    };
                    let page = sessions::Paging {
                        limit: usize::from(limit),
                        cursor,
                        all,
                    };
                    sessions::list(&engine, filter, page, json).await
                }
                Command::Funnel(args) => funnel::run(&engine, args, json).await,
                Command::Show { session, at } => {
                    sessions::show(&engine, &session, at.map(Version), json).await
                }
                Command::History { session } => sessions::history(&engine, &session, json).await,
                Command::Parked {
                    session,
                    limit,
                    cursor,
                } => {
                    parked::list(
                        &engine,
                        session.as_deref(),
                        usize::from(limit),
                        cursor,
                        json,
                    )
                    .await
                }
                Command::Redrive {
                    session,
                    user,
                    entry,
                } => {
                    quarantine::redrive(&engine, entry.as_deref(), session.as_deref(), user, json)
                        .await
                }
                Command::Accounts { limit, cursor } => {
                    accounts::accounts(&engine, usize::from(limit), cursor, json).await
                }
                Command::Merchants => accounts::merchants(&engine, json).await,
                Command::RotateMasterKey => rotate_master_key(&engine, json).await,
                Command::Expire => expire(&engine, json).await,
                Command::Compact => compact(&engine, json).await,
                Command::Erase { user, requested_by } => {
                    erase(&engine, &user, requested_by, json).await
                }
                Command::Diagram { .. }
                | Command::Completions { .. }
                | Command::Demo
                | Command::Endpoints { .. }
                | Command::Deliveries { .. }
                | Command::Serve(_)
                | Command::Verify
                | Command::Repair => {
                    unreachable!("handled above")
                }
            };
            engine.shutdown().await?;
            result
        }
    }
}

/// `linkflow expire`.
async fn expire(engine: &Engine, json: bool) -> Result<ExitCode, CliError> {
    if engine.raw_retention().is_none() {
        return Err(CliError(
            "expire needs --raw-retention-days (or LINKFLOW_RAW_RETENTION_DAYS)".into(),
        ));
    }
    let days = engine.expire_raw_payloads(chrono::Utc::now()).await?;
    if json {
        print_json(&serde_json::json!({ "expired_days": days }));
    } else {
        out!("made the raw payloads of {days} days unreadable");
    }
    Ok(ExitCode::SUCCESS)
}

/// `linkflow compact`.
async fn compact(engine: &Engine, json: bool) -> Result<ExitCode, CliError> {
    if engine.compact_after().is_none() {
        return Err(CliError(
            "compact needs --compact-after-days (or LINKFLOW_COMPACT_AFTER_DAYS)".into(),
        ));
    }
    let report = engine.compact_old_sessions(chrono::Utc::now()).await?;
    if json {
        print_json(&report);
    } else {
        out!(
            "compacted {} sessions ({} events) of {} examined",
            report.sessions,
            report.events,
            report.examined
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `linkflow rotate-master-key`.
async fn rotate_master_key(engine: &Engine, json: bool) -> Result<ExitCode, CliError> {
    let value = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let new = linkflow::privacy::MasterKey::from_sources(
        value("LINKFLOW_NEW_MASTER_KEY"),
        value("LINKFLOW_NEW_MASTER_KEY_FILE"),
    )
    .map_err(|error| CliError(format!("LINKFLOW_NEW_MASTER_KEY: {error}")))?
    .ok_or_else(|| {
        CliError(
            "set LINKFLOW_NEW_MASTER_KEY or LINKFLOW_NEW_MASTER_KEY_FILE to the new master key"
                .into(),
        )
    })?;
    let keys = engine.rotate_master_key(new).await?;
    if json {
        print_json(&serde_json::json!({ "rewrapped_keys": keys }));
    } else {
        out!("rewrapped {keys} keys under the new master key: use it from now on");
    }
    Ok(ExitCode::SUCCESS)
}

/// `linkflow erase --user ID`.
async fn erase(
    engine: &Engine,
    user: &str,
    requested_by: Option<String>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let requested_by = requested_by.unwrap_or_else(|| {
        format!(
            "{}@cli",
            std::env::var("USER").unwrap_or_else(|_| "unknown".into())
        )
    });
    let report = engine.erase_user(user, &requested_by).await?;
    if json {
        print_json(&report);
    } else if report.erased {
        out!(
            "erased: the keys of {} session and account streams are destroyed; tombstone {}",
            report.streams,
            report
                .tombstone
                .as_ref()
                .map_or("-", |stream| stream.as_str())
        );
    } else {
        out!(
            "nothing to erase: no key for this user (never seen, or erased before{})",
            report
                .tombstone
                .as_ref()
                .map_or(String::new(), |stream| format!("; tombstone {stream}"))
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("linkflow: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("linkflow: {error}");
            ExitCode::from(2)
        }
    }
}

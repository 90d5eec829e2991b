//! `linkflow endpoints ...` and `linkflow deliveries ...`: where notifications go, and what
//! their delivery did. On the embedded store they change the delivery state's files directly,
//! so they work while `linkflow serve` holds the store; with `--store postgres://...` they
//! change the database's tables every node reads (`serve` reads the endpoints again every
//! second).

use std::process::ExitCode;

use clap::Subcommand;
use linkflow::delivery::{DeliveryState, FileDeliveryState};
use linkflow::{NotificationId, NotificationKind};

use crate::{print_json, Cli, CliError};

#[derive(Debug, Subcommand)]
pub(crate) enum EndpointsCommand {
    /// Add an endpoint: notifications are POSTed to URL in Standard Webhooks form, signed with
    /// its secret (made when not given; printed once here). It gets what happens from the
    /// moment `serve` starts delivering to it.
    Add {
        /// The http(s) URL (set by the operator: linkflow does not guard it against pointing
        /// inside your network).
        url: String,
        /// Its secret: `whsec_` and the base64 of 24 to 64 bytes.
        #[arg(long)]
        secret: Option<String>,
        /// Only these kinds, comma-separated (`session.succeeded,session.abandoned`).
        #[arg(long, value_delimiter = ',')]
        types: Option<Vec<String>>,
    },
    /// The endpoints, their secrets withheld.
    List,
    /// Remove an endpoint and its cursor.
    Remove {
        /// Its id (`ep_...`).
        id: String,
    },
    /// Switch an endpoint on again after it answered 410 (or was disabled): delivery resumes
    /// where it stopped.
    Enable {
        /// Its id.
        id: String,
    },
    /// Switch an endpoint off: nothing goes to it until it is enabled; its cursor waits.
    Disable {
        /// Its id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeliveriesCommand {
    /// Ask for a notification to be sent again (after it was given up, or to replay it).
    Redeliver {
        /// The endpoint.
        #[arg(long)]
        endpoint: String,
        /// The notification's id (`ntf_<position>_<index>`, its `webhook-id`).
        notification: String,
    },
}

/// The delivery state of the store the options name: the data directory's files, or the
/// database's tables (the engine opened for them, shut down when the command ends).
pub(crate) struct Opened {
    pub state: std::sync::Arc<dyn DeliveryState>,
    engine: Option<linkflow::Engine>,
}

impl Drop for Opened {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.take() {
            let _ = tokio::runtime::Handle::current().block_on(engine.shutdown());
        }
    }
}

pub(crate) fn state(cli: &Cli) -> Result<Opened, CliError> {
    if cli.store.is_some() {
        let engine = crate::open(cli)?;
        let state = engine
            .shared_delivery_state()
            .ok_or_else(|| CliError("this store keeps no delivery state".into()))?;
        return Ok(Opened {
            state,
            engine: Some(engine),
        });
    }
    let state = FileDeliveryState::for_data_dir(&cli.data_dir)
        .map_err(|error| CliError(error.to_string()))?;
    Ok(Opened {
        state: std::sync::Arc::new(state),
        engine: None,
    })
}

fn kinds(types: Option<Vec<String>>) -> Result<Option<Vec<NotificationKind>>, CliError> {
    types
        .map(|names| {
            names
                .iter()
                .map(|name| {
                    NotificationKind::from_name(name.trim()).ok_or_else(|| {
                        CliError(format!(
                            "--types: `{name}` is not a notification type ({})",
                            NotificationKind::ALL
                                .map(NotificationKind::as_str)
                                .join(", ")
                        ))
                    })
                })
                .collect()
        })
        .transpose()
}

pub(crate) fn endpoints(
    cli: &Cli,
    command: &EndpointsCommand,
    json: bool,
) -> Result<ExitCode, CliError> {
    let opened = state(cli)?;
    let state = opened.state.as_ref();
    let failed = |error: linkflow::delivery::DeliveryStateError| CliError(error.to_string());
    match command {
        EndpointsCommand::Add { url, secret, types } => {
            linkflow_http::deliver::parse_endpoint_url(url).map_err(failed)?;
            let endpoint = state
                .add_endpoint(
                    url,
                    secret.clone(),
                    kinds(types.clone())?,
                    chrono::Utc::now(),
                )
                .map_err(failed)?;
            if json {
                print_json(&endpoint);
            } else {
                out!("endpoint {} -> {}", endpoint.id, endpoint.url);
                out!("secret {}", endpoint.secret);
                out!("types {}", endpoint.types_text());
            }
        }
        EndpointsCommand::List => {
            let endpoints: Vec<_> = state
                .endpoints()
                .map_err(failed)?
                .iter()
                .map(linkflow::delivery::Endpoint::redacted)
                .collect();
            if json {
                print_json(&serde_json::json!({ "endpoints": endpoints }));
            } else if endpoints.is_empty() {
                out!("no endpoints");
            } else {
                for endpoint in endpoints {
                    let cursor = state.cursor(&endpoint.id).map_err(failed)?;
                    out!(
                        "{}  {}  types {}  {}  delivered through {}",
                        endpoint.id,
                        endpoint.url,
                        endpoint.types_text(),
                        endpoint.disabled.as_ref().map_or(
                            "enabled".to_owned(),
                            |disabled| format!(
                                "disabled since {} ({})",
                                disabled.at, disabled.reason
                            )
                        ),
                        cursor.map_or("- (not started)".to_owned(), |id| id.to_string())
                    );
                }
            }
        }
        EndpointsCommand::Remove { id } => {
            if !state.remove_endpoint(id).map_err(failed)? {
                return Err(CliError(format!("no endpoint {id}")));
            }
            if json {
                print_json(&serde_json::json!({ "removed": id }));
            } else {
                out!("removed {id}");
            }
        }
        EndpointsCommand::Enable { id } | EndpointsCommand::Disable { id } => {
            let disabled = matches!(command, EndpointsCommand::Disable { .. }).then(|| {
                linkflow::delivery::Disabled {
                    at: chrono::Utc::now(),
                    reason: "disabled by the operator".into(),
                }
            });
            let enabled = disabled.is_none();
            state.set_disabled(id, disabled).map_err(failed)?;
            if json {
                print_json(&serde_json::json!({ "endpoint": id, "enabled": enabled }));
            } else {
                out!("{id} {}", if enabled { "enabled" } else { "disabled" });
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `linkflow deliveries`: the latest attempts, or a redelivery asked for.
pub(crate) fn deliveries(
    cli: &Cli,
    endpoint: Option<&str>,
    limit: usize,
    command: Option<&DeliveriesCommand>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let opened = state(cli)?;
    let state = opened.state.as_ref();
    let failed = |error: linkflow::delivery::DeliveryStateError| CliError(error.to_string());
    if let Some(DeliveriesCommand::Redeliver {
        endpoint,
        notification,
    }) = command
    {
        let id = NotificationId::parse(notification).ok_or_else(|| {
            CliError(format!(
                "`{notification}` is not a notification id (ntf_<position>_<index>)"
            ))
        })?;
        state.request_redelivery(endpoint, id).map_err(failed)?;
        if json {
            print_json(&serde_json::json!({ "endpoint": endpoint, "redelivery": id.to_string() }));
        } else {
            out!("{id} will be sent to {endpoint} again (by `serve`, within a second)");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let attempts = state.attempts(endpoint, limit).map_err(failed)?;
    if json {
        print_json(&serde_json::json!({ "attempts": attempts }));
        return Ok(ExitCode::SUCCESS);
    }
    if attempts.is_empty() {
        out!("no delivery attempts");
    }
    for attempt in attempts {
        let outcome = match &attempt.outcome {
            linkflow::delivery::AttemptOutcome::Delivered => "delivered".to_owned(),
            linkflow::delivery::AttemptOutcome::Retrying { next_at } => {
                format!("failed, retry at {next_at}")
            }
            linkflow::delivery::AttemptOutcome::GaveUp => "failed, given up".to_owned(),
            linkflow::delivery::AttemptOutcome::EndpointDisabled => {
                "410 Gone: endpoint disabled".to_owned()
            }
        };
        out!(
            "{}  {}  {} {} ({})  attempt {}{}  {}{}",
            attempt.at,
            attempt.endpoint,
            attempt.notification,
            attempt.kind,
            attempt.stream,
            attempt.attempt,
            if attempt.redelivery {
                " (redelivery)"
            } else {
                ""
            },
            outcome,
            attempt
                .error
                .map_or(String::new(), |error| format!(": {error}"))
        );
    }
    Ok(ExitCode::SUCCESS)
}

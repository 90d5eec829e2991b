//! `linkflow serve`: the HTTP API until SIGTERM or Ctrl-C; accepted requests finish and are
//! durable before the process exits.

use std::process::ExitCode;

use linkflow::Engine;
use linkflow_http::plaid_keys::{self, KeyEndpoint, PlaidKeys};
use linkflow_http::{serve, HttpConfig};
use linkflow_providers::plaid_jwt::JwkSet;
use tracing_subscriber::EnvFilter;

use crate::CliError;

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

pub async fn run(engine: Engine, listen: &str) -> Result<ExitCode, CliError> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let config = HttpConfig {
        knot_secret: std::env::var("LINKFLOW_KNOT_SECRET")
            .ok()
            .filter(|secret| !secret.is_empty())
            .map(String::into_bytes),
        token: std::env::var("LINKFLOW_TOKEN")
            .ok()
            .filter(|token| !token.is_empty()),
        plaid_keys: plaid_keys()?.map(std::sync::Arc::new),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|error| CliError(format!("cannot listen on {listen}: {error}")))?;
    let address = listener
        .local_addr()
        .map_err(|error| CliError(format!("cannot read the listening address: {error}")))?;
    // On stderr, so scripts (and tests with port 0) can find the port.
    eprintln!("linkflow: listening on {address}");
    tracing::info!(%address, "serving the linkflow HTTP API");
    serve(listener, engine, config, shutdown_signal())
        .await
        .map_err(|error| CliError(format!("server error: {error}")))?;
    Ok(ExitCode::SUCCESS)
}

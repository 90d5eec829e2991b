//! `linkflow serve`: the HTTP API until SIGTERM or Ctrl-C; accepted requests finish and are
//! durable before the process exits.

use std::process::ExitCode;

use linkflow::Engine;
use linkflow_http::{serve, HttpConfig};
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

//! Shared helpers for the workspace-level end-to-end tests: where the fixtures are.

use std::path::{Path, PathBuf};

/// The `tests/fixtures` folder, wherever the tests run from.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The README's Rust examples, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The `linkflow` binary, built once per test process with the same cargo and target
/// directory as the tests (a binary-only package cannot be a dependency).
pub fn linkflow_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let mut command = std::process::Command::new(cargo);
            // The variables cargo sets for this test process (the package's name, version and
            // directory, ...) would reach the build scripts of the binary's dependencies, some
            // of which rebuild when they change (seen: ring, and rustls after it, about 26 s per
            // test process): build as `cargo build` from a shell does.
            for (name, _) in std::env::vars_os() {
                let name = name.to_string_lossy();
                if [
                    "CARGO_PKG_",
                    "CARGO_MANIFEST_",
                    "CARGO_CRATE_",
                    "CARGO_BIN_",
                    "CARGO_PRIMARY_",
                    "CARGO_TARGET_TMPDIR",
                    "OUT_DIR",
                ]
                .iter()
                .any(|prefix| name.starts_with(prefix))
                {
                    command.env_remove(name.as_ref());
                }
            }
            let status = command
                .current_dir(&workspace)
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "linkflow-cli",
                    "--bin",
                    "linkflow",
                ])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the linkflow binary failed");
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace.join("target"));
            target.join("debug").join("linkflow")
        })
        .clone()
}

/// A real `linkflow serve` on a free loopback port, killed when dropped.
pub struct Server {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Server {
    /// Starts the server on `data_dir` with `env` set (and no `LINKFLOW_TOKEN` unless given),
    /// and waits until it prints its address.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_with_logs(data_dir, env).0
    }

    /// [`Server::start`], and the server's log lines (its stderr) as they come.
    pub fn start_with_logs(
        data_dir: &Path,
        env: &[(&str, &str)],
    ) -> (Server, std::sync::mpsc::Receiver<String>) {
        use std::io::{BufRead, BufReader};
        let mut command = std::process::Command::new(linkflow_bin());
        command
            .arg("--data-dir")
            .arg(data_dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env_remove("LINKFLOW_TOKEN")
            .env_remove("LINKFLOW_KNOT_SECRET")
            .env_remove("LINKFLOW_PLAID_JWKS")
            .env_remove("LINKFLOW_PLAID_CLIENT_ID")
            .env_remove("LINKFLOW_PLAID_SECRET")
            .env("RUST_LOG", "warn")
            .stderr(std::process::Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("the server starts");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        let address = loop {
            let line = lines
                .next()
                .expect("the server prints its address")
                .expect("stderr is readable");
            if let Some(address) = line.strip_prefix("linkflow: listening on ") {
                break address.to_owned();
            }
        };
        // Keep draining the logs so the server never blocks on a full pipe.
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let server = Server {
            child,
            base: format!("http://{address}"),
        };
        (server, receiver)
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends SIGKILL (no shutdown of any kind) and waits for the process to be gone.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL is sent");
        self.child.wait().expect("the server is gone");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {pid} failed");
        self.child.wait().expect("the server exits")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server's first log line after its address that holds `needle` (within 10 s each).
pub fn line_with(logs: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    loop {
        let line = logs
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|error| panic!("no log line with `{needle}`: {error}"));
        if line.contains(needle) {
            return line;
        }
    }
}

/// `GET url` and its body as text, failing the test on any transport error.
pub async fn get_text(client: &reqwest::Client, url: &str) -> String {
    client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|error| panic!("GET {url}: {error}"))
        .text()
        .await
        .unwrap_or_else(|error| panic!("GET {url}: {error}"))
}

/// `GET url` and its body as JSON, failing the test on any transport or decode error.
pub async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|error| panic!("GET {url}: {error}"))
        .json()
        .await
        .unwrap_or_else(|error| panic!("GET {url} is not JSON: {error}"))
}

/// Reads `count` SSE events (their ids) from a response.
pub async fn read_sse_ids(response: reqwest::Response, count: usize) -> Vec<u64> {
    read_sse_frames(response, count)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// The first `count` events of an SSE response: each id with its JSON data.
pub async fn read_sse_frames(
    response: reqwest::Response,
    count: usize,
) -> Vec<(u64, serde_json::Value)> {
    let mut frames = Vec::new();
    let mut buffer = String::new();
    let mut stream = futures_util::StreamExt::boxed(response.bytes_stream());
    while frames.len() < count {
        let chunk = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            futures_util::StreamExt::next(&mut stream),
        )
        .await
        .expect("the stream keeps up")
        .expect("the stream stays open")
        .unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            if let Some(id) = frame.lines().find_map(|line| line.strip_prefix("id: ")) {
                let data = frame
                    .lines()
                    .find_map(|line| line.strip_prefix("data: "))
                    .map_or(serde_json::Value::Null, |data| {
                        serde_json::from_str(data).unwrap()
                    });
                frames.push((id.trim().parse().unwrap(), data));
            }
        }
    }
    frames
}

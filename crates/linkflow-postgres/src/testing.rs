//! A throwaway PostgreSQL cluster for tests and benchmarks (feature `testing`).
//!
//! [`TestCluster::start`] runs `initdb` and `pg_ctl` from the machine's PostgreSQL binaries in a
//! temporary directory and listens on a free loopback port (and a socket in that directory
//! only). `initdb` refuses to run as root, so under root the cluster runs as the `postgres`
//! user. A watchdog process stops the cluster and removes its directory when the process that
//! started it exits, however it exits.
//!
//! Without PostgreSQL binaries, [`TestCluster::shared_or_skip`] prints a loud notice and lets
//! the test pass, except under `CI=true`, where a skip is a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Why a cluster did not start.
#[derive(Debug, Clone)]
pub enum StartError {
    /// No PostgreSQL binaries on this machine: tests skip (or fail under `CI=true`).
    Missing(String),
    /// The binaries are there but the cluster did not start: always a failure.
    Failed(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Missing(reason) | StartError::Failed(reason) => f.write_str(reason),
        }
    }
}

/// A running PostgreSQL cluster in a temporary directory.
pub struct TestCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    run_as: Option<String>,
    databases: AtomicU32,
}

/// Where the PostgreSQL server binaries are: `LINKFLOW_PG_BIN`, the `PATH`, or Debian's
/// `/usr/lib/postgresql/<version>/bin` (newest first).
pub fn find_binaries() -> Option<PathBuf> {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "psql"]
            .iter()
            .all(|b| dir.join(b).exists())
    };
    if let Some(dir) = std::env::var_os("LINKFLOW_PG_BIN") {
        let dir = PathBuf::from(dir);
        return has_all(&dir).then_some(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_all(&dir) {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_all(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn user_ids(user: &str) -> Result<(u32, u32), StartError> {
    let id = |flag: &str| -> Result<u32, StartError> {
        let output = Command::new("id")
            .args([flag, user])
            .output()
            .map_err(|error| StartError::Failed(format!("cannot run `id`: {error}")))?;
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .map_err(|_| {
                StartError::Failed(format!(
                    "running as root needs a `{user}` user for initdb (Debian's postgresql package creates it)"
                ))
            })
    };
    Ok((id("-u")?, id("-g")?))
}

fn free_port() -> Result<u16, StartError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|error| StartError::Failed(format!("no free loopback port: {error}")))
}

impl TestCluster {
    fn command(&self, program: &str) -> Command {
        command(&self.bin, self.run_as.as_deref(), program)
    }

    /// Starts a new cluster. It stops when the returned value is dropped or the process exits.
    pub fn start() -> Result<TestCluster, StartError> {
        let bin = find_binaries().ok_or_else(|| {
            StartError::Missing(
                "no PostgreSQL server binaries (initdb, pg_ctl, psql) found on PATH, in \
                 /usr/lib/postgresql/*/bin or in LINKFLOW_PG_BIN; install Debian's `postgresql`"
                    .into(),
            )
        })?;
        let failed = |what: &str| {
            let what = what.to_owned();
            move |error: std::io::Error| StartError::Failed(format!("{what}: {error}"))
        };
        let dir = tempfile::Builder::new()
            .prefix("linkflow-pg-")
            .tempdir()
            .map_err(failed("cannot create a temporary directory"))?;
        let run_as = if running_as_root() {
            let (uid, gid) = user_ids("postgres")?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(failed("cannot hand the directory to postgres"))?;
            Some("postgres".to_owned())
        } else {
            None
        };
        let mut cluster = TestCluster {
            dir,
            bin,
            port: 0,
            run_as,
            databases: AtomicU32::new(0),
        };
        let data = cluster.data_dir();
        let output = cluster
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(failed("cannot run initdb"))?;
        if !output.status.success() {
            return Err(StartError::Failed(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        let mut last_error = String::new();
        for _ in 0..3 {
            cluster.port = free_port()?;
            let options = format!(
                "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=200",
                cluster.port,
                cluster.dir.path().display()
            );
            let status = cluster
                .command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(cluster.dir.path().join("server.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(failed("cannot run pg_ctl"))?;
            if status.success() {
                cluster.spawn_watchdog()?;
                return Ok(cluster);
            }
            last_error =
                std::fs::read_to_string(cluster.dir.path().join("server.log")).unwrap_or_default();
        }
        Err(StartError::Failed(format!(
            "pg_ctl start failed three times; server log:\n{last_error}"
        )))
    }

    /// One cluster per test process, started on first use; `None` (after a loud notice) when
    /// the machine has no PostgreSQL binaries. Panics under `CI=true` instead of skipping, and
    /// whenever the binaries exist but the cluster does not start.
    pub fn shared_or_skip(test: &str) -> Option<&'static TestCluster> {
        static SHARED: OnceLock<Result<TestCluster, StartError>> = OnceLock::new();
        match SHARED.get_or_init(TestCluster::start) {
            Ok(cluster) => Some(cluster),
            Err(StartError::Missing(reason)) => {
                if std::env::var("CI").is_ok_and(|value| value == "true") {
                    panic!("{test}: CI=true and the PostgreSQL tests cannot run: {reason}");
                }
                eprintln!("\n*** SKIPPED {test}: {reason}. PostgreSQL tests did NOT run. ***\n");
                None
            }
            Err(StartError::Failed(reason)) => panic!("{test}: PostgreSQL did not start: {reason}"),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `name` in this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a new, empty database and returns its URL.
    pub fn create_database(&self) -> String {
        let name = format!(
            "linkflow_test_{}_{}",
            std::process::id(),
            self.databases.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Runs one SQL command with `psql` and returns what it printed (unaligned, tuples only).
    /// Panics with psql's error when the command fails.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = self
            .command("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(database)
            .arg("-c")
            .arg(sql)
            .stdin(Stdio::null())
            .output()
            .expect("psql runs");
        assert!(
            output.status.success(),
            "psql `{sql}` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Whether a dump of [`TestCluster::pg_dump`] holds `text`: as text (a `text` column, an
    /// identifier) or as the hex digits a plain dump writes `bytea` values in (records,
    /// index keys).
    pub fn dump_holds(dump: &[u8], text: &str) -> bool {
        let hex: String = text.bytes().map(|byte| format!("{byte:02x}")).collect();
        [text.as_bytes(), hex.as_bytes()]
            .iter()
            .any(|needle| dump.windows(needle.len()).any(|window| window == *needle))
    }

    /// `pg_dump` of `database` (its URL's last segment): the whole dump as bytes.
    pub fn pg_dump(&self, database: &str) -> Vec<u8> {
        let output = self
            .command("pg_dump")
            .args(["-h", "127.0.0.1", "-U", "postgres"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg(database)
            .stdin(Stdio::null())
            .output()
            .expect("pg_dump runs");
        assert!(
            output.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// Stops the cluster when this process ends, even on a crash or a kill.
    fn spawn_watchdog(&self) -> Result<(), StartError> {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = match &self.run_as {
            Some(user) => format!(
                "runuser -u {user} -- '{}' -D '{}' stop -m immediate",
                pg_ctl.display(),
                self.data_dir().display()
            ),
            None => format!(
                "'{}' -D '{}' stop -m immediate",
                pg_ctl.display(),
                self.data_dir().display()
            ),
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop}; rm -rf '{dir}'",
            pid = std::process::id(),
            dir = self.dir.path().display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(drop)
            .map_err(|error| StartError::Failed(format!("cannot start the watchdog: {error}")))
    }
}

fn command(bin: &Path, run_as: Option<&str>, program: &str) -> Command {
    match run_as {
        Some(user) => {
            let mut command = Command::new("runuser");
            command.args(["-u", user, "--"]).arg(bin.join(program));
            command
        }
        None => Command::new(bin.join(program)),
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["stop", "-m", "fast"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

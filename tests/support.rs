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
            let status = std::process::Command::new(cargo)
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

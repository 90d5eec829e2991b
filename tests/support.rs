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

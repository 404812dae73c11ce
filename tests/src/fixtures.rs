//! Locating the shared real-network fixtures, which live beside the repository and are never
//! copied into it.
//!
//! When they are absent (a fresh clone on a user's machine) tests that need them print a line
//! starting with `SKIPPED:` and pass; with `ATKAFKA_REQUIRE_FIXTURES=1`, as CI sets it, the absence
//! fails the test instead.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Returns the fixtures folder: `$ATKAFKA_FIXTURES`, or `shared/fixtures` beside the repository.
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ATKAFKA_FIXTURES") {
        return PathBuf::from(dir);
    }
    crate::workspace_dir().join("..").join("shared").join("fixtures")
}

/// Returns the fixture at `relative`, or `None` after reporting the skip. Panics instead when
/// `ATKAFKA_REQUIRE_FIXTURES=1`.
pub fn fixture(relative: &str) -> Option<PathBuf> {
    let path = fixtures_dir().join(relative);
    if path.exists() {
        return Some(path);
    }
    let required = std::env::var("ATKAFKA_REQUIRE_FIXTURES").is_ok_and(|value| value == "1");
    assert!(!required, "fixture {} is missing and ATKAFKA_REQUIRE_FIXTURES=1", path.display());
    eprintln!("SKIPPED: fixture {} not found; set ATKAFKA_FIXTURES to the fixtures folder", path.display());
    None
}

/// Returns early from a test, reporting the skip, when the fixture is missing.
#[macro_export]
macro_rules! fixture_or_skip {
    ($relative:expr) => {
        match $crate::fixtures::fixture($relative) {
            Some(path) => path,
            None => return,
        }
    };
}

/// Reads a zstd-compressed capture of `[u32 little-endian length][frame bytes]` records.
pub fn read_capture(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let compressed = std::fs::read(path)?;
    let mut bytes = Vec::new();
    zstd::stream::read::Decoder::new(compressed.as_slice())?.read_to_end(&mut bytes)?;
    let mut frames = Vec::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        anyhow::ensure!(rest.len() >= 4, "capture ends inside a length prefix");
        let (length, tail) = rest.split_at(4);
        let length = u32::from_le_bytes(length.try_into().expect("four bytes")) as usize;
        anyhow::ensure!(tail.len() >= length, "capture ends inside a frame of {length} bytes");
        let (frame, tail) = tail.split_at(length);
        frames.push(frame.to_vec());
        rest = tail;
    }
    Ok(frames)
}

/// Reads a JSON-lines file.
pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path)?;
    text.lines().filter(|line| !line.trim().is_empty()).map(|line| Ok(serde_json::from_str(line)?)).collect()
}

/// Returns the path of a guest component built by `make guests`, such as `atkafka_formatter_hostile`.
pub fn built_guest(name: &str) -> PathBuf {
    let path = crate::workspace_dir().join("target/guest-build/wasm32-wasip2/guest").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run `make guests`", path.display());
    path
}

/// Returns the path of an example formatter built by `make examples`, such as `posts-python`.
pub fn built_example(name: &str) -> PathBuf {
    let path = crate::workspace_dir().join("target/examples").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run `make examples`", path.display());
    path
}

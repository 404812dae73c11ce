//! Test support for atkafka-host: the shared real-network fixtures, a Tansu broker, a replay
//! relay, the host process, a topic consumer, and the comparison against Jetstream's rendering.
//!
//! Every server started here listens on 127.0.0.1 only and is stopped by PID when dropped.

pub mod broker;
pub mod consume;
pub mod dagjson;
pub mod expected;
pub mod fixtures;
pub mod host;
pub mod pds;
pub mod synthetic;
pub mod replay;
pub mod scenario;

/// Returns the workspace folder, the parent of this crate, which contains `target/`.
pub fn workspace_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_path_buf()
}

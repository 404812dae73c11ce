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

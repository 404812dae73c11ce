//! atkafka-host: streams the AT Protocol firehose into Kafka through WebAssembly formatters.
//!
//! The decode path (`firehose`) is pure; I/O lives in `relay` (the WebSocket), `kafka` (the
//! producer) and `metrics` (the HTTP endpoint); `pipeline` joins them and `app` runs the whole.

pub mod app;
pub mod cli;
pub mod cursor;
pub mod event_id;
pub mod fatal;
pub mod firehose;
pub mod format_command;
pub mod formatter;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod prefetch;
pub mod ratelimit;
pub mod raw_frames;
pub mod relay;
pub mod relay_connection;
pub mod skip;
pub mod spent_frames;
pub mod standard_shape;
pub mod tenant;
pub mod websocket;

//! Replays a recorded firehose capture on a loopback WebSocket, for trying atkafka-host without
//! internet access:
//!
//! ```text
//! replay-relay --capture ../shared/fixtures/relay-capture/frames.bin.zst --port 9001
//! atkafka-host --relay-host ws://127.0.0.1:9001 ...
//! ```

use std::path::PathBuf;

use atkafka_integration_tests::fixtures::read_capture;
use atkafka_integration_tests::replay::{ReplayOptions, ReplayRelay};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Replays a zstd capture of [u32 little-endian length][frame] records as a relay on 127.0.0.1")]
struct Args {
    /// The capture file.
    #[arg(long)]
    capture: PathBuf,
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let frames = read_capture(&args.capture)?;
    let relay = ReplayRelay::try_start(ReplayOptions { frames, port: args.port, ..ReplayOptions::default() })?;
    println!("replaying {} on {} (Ctrl-C stops)", args.capture.display(), relay.url());
    loop {
        std::thread::park();
    }
}

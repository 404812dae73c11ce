//! The `atkafka-host` command: parses the command line and runs the host until a signal stops it.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use atkafka_host::cli::Cli;
use clap::Parser as _;

/// jemalloc, not the system allocator. Each event allocates a few small strings and its record's
/// JSON, and glibc's malloc and free took over a quarter of the decoding thread's CPU in a profile
/// of the end-to-end benchmark. With jemalloc the host took 4.6 instead of 5.8 µs of CPU a frame
/// (medians of 5 alternating runs each), and RSS stayed flat at 38 MB instead of 33 MB. mimalloc
/// gained less in the same kind of runs.
///
/// jemalloc also serves C's `malloc` and `free` (the `unprefixed_malloc_on_supported_platforms`
/// feature), so librdkafka allocates through it too. librdkafka allocates each message on the
/// tenant's thread and frees it on the polling thread after its delivery report. In a profile of
/// the end-to-end benchmark, glibc's malloc and free took 4.2 % of the host's CPU for that, and
/// jemalloc 0.8 %.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if error.use_stderr() => {
            // One line naming the flag, instead of clap's usage block.
            let text = error.to_string();
            let summary: Vec<&str> = text.lines().take_while(|line| !line.trim().is_empty()).map(str::trim).collect();
            eprintln!("{}", summary.join(" "));
            return ExitCode::from(2);
        }
        Err(error) => error.exit(),
    };
    if let Some(atkafka_host::cli::Command::Format(args)) = cli.command {
        return match atkafka_host::format_command::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let settings = match cli.settings() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };

    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(atkafka_host::app::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

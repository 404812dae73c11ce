//! The command line: every flag, its environment variable, unit and default, and the checks
//! that turn it into [`Settings`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::formatter::{FormatterLimits, FormatterSource};
use crate::tenant::policy::ErrorPolicy;
use crate::tenant::{self, TenantSpec};

/// The name of the single tenant the command-line flags describe.
pub const DEFAULT_TENANT: &str = "default";

#[derive(Debug, Parser)]
#[command(
    name = "atkafka-host",
    version,
    about = "Streams the AT Protocol firehose into Kafka, one message per event, formatted by WebAssembly components.",
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Relay to subscribe to: `wss://host`, `ws://host:port`, or a bare host name (wss is used).
    #[arg(long, env = "ATKAFKA_RELAY_HOST", default_value = "wss://bsky.network")]
    pub relay_host: String,

    /// Kafka bootstrap servers, comma-separated `host:port` pairs.
    #[arg(long, env = "ATKAFKA_BOOTSTRAP_SERVERS", required = true)]
    pub bootstrap_servers: Option<String>,

    /// Tenant config file (TOML) declaring one or more tenants, each with its formatter, topic,
    /// filter, limits and error policy. Replaces the single-tenant flags `--output-topic`,
    /// `--formatter`, `--osprey-compatible`, `--formatter-option` and the `--formatter-*` limits.
    #[arg(long, env = "ATKAFKA_CONFIG", conflicts_with_all = ["output_topic", "formatter", "osprey_compatible", "formatter_options", "formatter_timeout_ms", "formatter_memory_mib"])]
    pub config: Option<std::path::PathBuf>,

    /// Topic the formatted messages go to, for the single tenant the flags describe. Created when
    /// missing.
    #[arg(long, env = "ATKAFKA_OUTPUT_TOPIC", required_unless_present = "config")]
    pub output_topic: Option<String>,

    #[command(flatten)]
    pub formatter: FormatterArgs,

    #[command(flatten)]
    pub cache: CacheArgs,

    /// Address of the Prometheus metrics endpoint (`/metrics`).
    #[arg(long, env = "ATKAFKA_METRICS_LISTEN_ADDRESS", default_value = "0.0.0.0:2112")]
    pub metrics_listen_address: SocketAddr,

    /// Partitions of the output topic when the host creates it.
    #[arg(long, env = "ATKAFKA_TOPIC_PARTITIONS", default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    pub topic_partitions: i32,

    /// Replication factor of the output topic when the host creates it; -1 uses the broker's
    /// default.
    #[arg(long, env = "ATKAFKA_TOPIC_REPLICATION_FACTOR", default_value_t = -1, allow_negative_numbers = true)]
    pub topic_replication_factor: i32,

    /// A librdkafka producer property as `key=value` (for example `compression.type=zstd` or
    /// `security.protocol=ssl`). Repeatable; in the environment variable, separate properties
    /// with commas.
    #[arg(long = "kafka-property", env = "ATKAFKA_KAFKA_PROPERTIES", value_delimiter = ',', value_parser = parse_key_value)]
    pub kafka_properties: Vec<(String, String)>,

    /// Id of this host among hosts writing to the same consumers (0 to 1023); it is part of every
    /// event id, so distinct hosts never produce the same id.
    #[arg(long, env = "ATKAFKA_INSTANCE_ID", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..1024))]
    pub instance_id: u16,

    /// File that keeps the cursor (the highest seq up to which every event was acknowledged) across
    /// restarts. Read at start-up and used on every connection as `?cursor=`. Without it the host
    /// starts at the relay's live position.
    #[arg(long, env = "ATKAFKA_CURSOR_FILE")]
    pub cursor_file: Option<std::path::PathBuf>,

    /// Start after this seq instead of the cursor file's value, for this start only (to replay from
    /// a chosen point). The cursor file is still written as events are acknowledged.
    #[arg(long, env = "ATKAFKA_CURSOR", value_parser = clap::value_parser!(i64).range(0..))]
    pub cursor: Option<i64>,

    /// How often the cursor file is written while the cursor moves, in milliseconds. It is also
    /// written at shutdown.
    #[arg(long, env = "ATKAFKA_CURSOR_FLUSH_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub cursor_flush_interval_ms: u64,

    /// A connection that delivers no frame for this long is considered dead and reopened, in
    /// seconds.
    #[arg(long, env = "ATKAFKA_RELAY_IDLE_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub relay_idle_timeout_secs: u64,

    /// Frames larger than this are counted (`frame_too_large`) and skipped, in bytes. At most
    /// 268435456 (256 MiB), because a frame is held whole in memory until decoded.
    #[arg(long, env = "ATKAFKA_MAX_FRAME_BYTES", default_value_t = 16 << 20)]
    pub max_frame_bytes: usize,

    /// A PEM file of root certificates to trust for a wss:// relay, besides the webpki roots: for
    /// a relay whose certificate a private certificate authority signed. [default: none]
    #[arg(long, env = "ATKAFKA_RELAY_CA_FILE")]
    pub relay_ca_file: Option<std::path::PathBuf>,

    /// On SIGTERM or SIGINT, how long to wait for messages in flight to be acknowledged, in
    /// seconds.
    #[arg(long, env = "ATKAFKA_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
}

/// The formatter of the single tenant the command-line flags describe.
#[derive(Debug, Clone, clap::Args)]
pub struct FormatterArgs {
    /// Format events as Osprey action envelopes; the same as `--formatter osprey`.
    #[arg(long, env = "ATKAFKA_OSPREY_COMPATIBLE")]
    pub osprey_compatible: bool,

    /// Formatter: `standard`, `osprey`, or a path to a `.wasm` component exporting the
    /// atkafka:formatter world. [default: standard]
    #[arg(long, env = "ATKAFKA_FORMATTER")]
    pub formatter: Option<String>,

    /// An option passed to the formatter's configure call, as `key=value`. Repeatable; in the
    /// environment variable, separate options with commas.
    #[arg(long = "formatter-option", env = "ATKAFKA_FORMATTER_OPTIONS", value_delimiter = ',', value_parser = parse_key_value)]
    pub formatter_options: Vec<(String, String)>,

    /// CPU time one formatter call may take before it is interrupted, in milliseconds. A call
    /// past it is tried once more on a fresh instance before the event counts as failed.
    #[arg(long, env = "ATKAFKA_FORMATTER_TIMEOUT_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub formatter_timeout_ms: u64,

    /// Linear memory a formatter instance may use, in MiB.
    #[arg(long, env = "ATKAFKA_FORMATTER_MEMORY_MIB", default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub formatter_memory_mib: u64,
}

/// The location of the cache of compiled components.
#[derive(Debug, Clone, clap::Args)]
pub struct CacheArgs {
    /// Directory for compiled formatter components, so that a restart loads them in milliseconds
    /// instead of compiling them again. Only this host's user should be able to write to it: its
    /// files are loaded as native code. [default: $XDG_CACHE_HOME/atkafka-host or
    /// ~/.cache/atkafka-host]
    #[arg(long, env = "ATKAFKA_COMPILE_CACHE_DIR")]
    pub compile_cache_dir: Option<std::path::PathBuf>,

    /// Compile formatters on every start instead of caching them.
    #[arg(long, env = "ATKAFKA_NO_COMPILE_CACHE", conflicts_with = "compile_cache_dir")]
    pub no_compile_cache: bool,
}

impl CacheArgs {
    pub fn cache_dir(&self) -> Option<std::path::PathBuf> {
        if self.no_compile_cache {
            return None;
        }
        self.compile_cache_dir.clone().or_else(crate::formatter::default_cache_dir)
    }
}

impl FormatterArgs {
    /// Returns the formatter these flags name, checking `--osprey-compatible` against `--formatter`.
    pub fn source(&self) -> Result<FormatterSource, String> {
        match (self.osprey_compatible, self.formatter.as_deref()) {
            (true, Some(formatter)) if formatter != "osprey" => {
                Err(format!("--osprey-compatible conflicts with --formatter {formatter}: use one of them"))
            }
            (true, _) => Ok(FormatterSource::Builtin("osprey")),
            (false, None) => Ok(FormatterSource::Builtin("standard")),
            (false, Some(value)) => FormatterSource::parse(value).map_err(|error| format!("invalid --formatter: {error}")),
        }
    }

    pub fn limits(&self) -> FormatterLimits {
        FormatterLimits {
            timeout: Duration::from_millis(self.formatter_timeout_ms),
            max_memory_bytes: (self.formatter_memory_mib as usize) << 20,
            output_cap_bytes: GUEST_OUTPUT_CAP_BYTES,
            ..FormatterLimits::default()
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Runs a formatter on sample events and prints its messages, without a relay or Kafka.
    Format(crate::format_command::FormatArgs),
}

pub fn parse_key_value(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.to_owned())),
        _ => Err(format!("`{value}` is not of the form key=value")),
    }
}

/// The checked settings the host runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub relay_url: String,
    pub bootstrap_servers: String,
    pub tenants: Vec<TenantSpec>,
    pub compile_cache_dir: Option<std::path::PathBuf>,
    pub metrics_listen_address: SocketAddr,
    pub topic_partitions: i32,
    pub topic_replication_factor: i32,
    pub kafka_properties: Vec<(String, String)>,
    pub instance_id: u16,
    pub shutdown_timeout: Duration,
    pub cursor_file: Option<std::path::PathBuf>,
    pub cursor: Option<i64>,
    pub cursor_flush_interval: Duration,
    pub relay_idle_timeout: Duration,
    pub max_frame_bytes: usize,
    /// TLS settings for a wss:// relay.
    pub relay_tls: std::sync::Arc<rustls::ClientConfig>,
}

/// Bytes of a guest's stdout and of its stderr kept per call for the log.
const GUEST_OUTPUT_CAP_BYTES: usize = 4096;

impl Cli {
    /// Checks the flags together and names the flag behind any problem.
    pub fn settings(self) -> Result<Settings, String> {
        let bootstrap_servers = self.bootstrap_servers.clone().unwrap_or_default();
        if bootstrap_servers.split(',').all(|server| server.trim().is_empty()) {
            return Err("invalid --bootstrap-servers: no server given".to_owned());
        }
        let tenants = match (&self.config, &self.output_topic) {
            (Some(path), _) => tenant::config::load(path).map_err(|error| format!("invalid --config: {error}"))?,
            (None, Some(topic)) => {
                if topic.trim().is_empty() {
                    return Err("invalid --output-topic: the topic name is empty".to_owned());
                }
                vec![TenantSpec {
                    name: DEFAULT_TENANT.to_owned(),
                    formatter: self.formatter.source()?,
                    topic: topic.clone(),
                    options: self.formatter.formatter_options.clone(),
                    filter: Default::default(),
                    limits: self.formatter.limits(),
                    on_error: ErrorPolicy::Skip,
                    quarantine: None,
                }]
            }
            (None, None) => return Err("missing --output-topic (or --config)".to_owned()),
        };
        if self.topic_replication_factor == 0 || self.topic_replication_factor < -1 {
            return Err(format!(
                "invalid --topic-replication-factor {}: use -1 (the broker's default) or a positive number",
                self.topic_replication_factor
            ));
        }
        if let Some((key, _)) = self.kafka_properties.iter().find(|(key, _)| key == "bootstrap.servers") {
            return Err(format!("--kafka-property {key} conflicts with --bootstrap-servers: use --bootstrap-servers"));
        }
        // librdkafka checks every property's name and value when it builds its configuration, so
        // a typo stops the host here rather than when it first reaches for Kafka.
        crate::kafka::producer::client_config(&bootstrap_servers, &self.kafka_properties)
            .create_native_config()
            .map_err(|error| match error {
                rdkafka::error::KafkaError::ClientConfig(_, description, key, value) => {
                    format!("invalid --kafka-property {key}={value}: {description}")
                }
                other => format!("invalid --kafka-property: {other}"),
            })?;
        if self.max_frame_bytes == 0 || self.max_frame_bytes > crate::relay::WEBSOCKET_MESSAGE_LIMIT {
            return Err(format!(
                "invalid --max-frame-bytes {}: use 1 to {}",
                self.max_frame_bytes,
                crate::relay::WEBSOCKET_MESSAGE_LIMIT
            ));
        }
        let relay_url = crate::relay::subscribe_url(&self.relay_host)
            .map_err(|error| format!("invalid --relay-host: {error}"))?;
        if self.relay_ca_file.is_some() && !relay_url.starts_with("wss://") {
            return Err(format!("--relay-ca-file applies only to a wss:// relay, and --relay-host is `{}`", self.relay_host));
        }
        let relay_tls = crate::relay_connection::tls_config(self.relay_ca_file.as_deref()).map_err(|error| error.to_string())?;

        Ok(Settings {
            relay_url,
            bootstrap_servers,
            tenants,
            compile_cache_dir: self.cache.cache_dir(),
            metrics_listen_address: self.metrics_listen_address,
            topic_partitions: self.topic_partitions,
            topic_replication_factor: self.topic_replication_factor,
            kafka_properties: self.kafka_properties,
            instance_id: self.instance_id,
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_secs),
            cursor_file: self.cursor_file,
            cursor: self.cursor,
            cursor_flush_interval: Duration::from_millis(self.cursor_flush_interval_ms),
            relay_idle_timeout: Duration::from_secs(self.relay_idle_timeout_secs),
            max_frame_bytes: self.max_frame_bytes,
            relay_tls,
        })
    }
}

//! `make bench`: measures the whole path on this machine and prints a table of medians, also
//! written to `target/bench/results.md`.
//!
//! 1. decode: frames/s of the decode path alone (frame to events with record JSON), in-process;
//! 2. format: events/s of the standard formatter as a WebAssembly guest in batch calls of 128
//!    events (as a tenant formats them) and natively, timed pass by pass in turn, and the median
//!    of the runs' ratios. Also the guest with one event a call, as for a formatter without
//!    `format-batch`;
//! 3. end to end: a loopback relay sends generated frames as fast as the host reads them, and the
//!    host produces into a Tansu broker: frames/s, messages/s, CPU seconds per 1000 frames of the
//!    host, the relay and the broker, peak RSS (and the rate on the real capture cycled with
//!    rewritten seqs);
//! 4. the Kafka-side limit: a plain rdkafka producer sending the same messages with the same keys
//!    and settings into the same broker, the CPU it and the broker spend, and the ratio of (3) to
//!    it. Each end-to-end run is followed by a plain run, and the ratio is the median of the
//!    pairs' ratios, so that both sides of a ratio meet the broker in the same state;
//! 5. latency at 2000 frames/s: p50 and p99 from frame receipt to acknowledgement, after a 2 s
//!    warm-up, and the p99 of the whole run;
//! 6. memory: RSS after 100 000 and after 1 000 000 events, each the median of the samples taken
//!    within 50 000 events of it;
//! 7. start-up: from process start to the first acknowledged message, with compiled components
//!    cached.
//!
//! Sizes can be lowered for a quick look with BENCH_FRAMES (end-to-end frames per run, default
//! 500 000), BENCH_MEMORY_FRAMES (default 1 000 000) and BENCH_RUNS (runs of steps 1 to 4, and
//! start-ups after the first, default 3). The report's first line gives them. BENCH_STEPS
//! picks steps by number (default all). `BENCH_STEPS=1,2` measures only the in-process steps,
//! without a broker, for profiling decode and format. Steps (3) and (4) always run together.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atkafka_host::firehose::decode::decode;
use atkafka_host::firehose::event::Event;
use atkafka_host::formatter::{BatchEvent, Formatter, FormatterEngine, FormatterLimits, FormatterSource, MAX_BATCH_EVENTS};
use atkafka_host::pipeline::FRAME_PREFETCH_BYTES;
use atkafka_host::prefetch::for_each_ahead;
use atkafka_integration_tests::broker::{free_port, Broker};
use atkafka_integration_tests::fixtures::{fixtures_dir, read_capture};
use atkafka_integration_tests::host::{http_get, metric_value, HostProcess};
use atkafka_integration_tests::synthetic::{realistic_commit, seq_offset, SplitMix};
use tokio::io::AsyncWriteExt;

/// The host's allocator, so that steps 1 and 2 allocate as the host does.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const FIRST_SEQ: i64 = 1 << 33;
const POOL_FRAMES: usize = 20_000;
/// Passes over the pool in one timed run of step 1, and over its events in step 2, so that each
/// timing spans about 100 ms or more. One pass of the native formatter took 5 ms, and its rate
/// varied threefold between runs.
const DECODE_PASSES: usize = 3;
const FORMAT_PASSES: usize = 20;
const DIDS: u64 = 50_000;
/// The latency run: 20 s at the live firehose's rate, of which the first 2 s are a warm-up.
const LATENCY_RATE: u32 = 2000;
const LATENCY_FRAMES: usize = 40_000;
const LATENCY_WARM_UP: usize = 4000;
/// RSS at a checkpoint is the median of the samples taken while the acknowledged frames were
/// within this many of it. One sample alone varies by 10 MB within half a second, as librdkafka's
/// queue and the frame buffers fill and drain.
const RSS_WINDOW_FRAMES: usize = 50_000;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// Returns the steps listed in BENCH_STEPS (numbers separated by commas), or every step when it is
/// unset.
fn steps() -> Vec<u32> {
    match std::env::var("BENCH_STEPS") {
        Ok(list) => list
            .split(',')
            .map(|step| step.trim().parse().unwrap_or_else(|_| panic!("BENCH_STEPS: `{step}` is not a step number")))
            .collect(),
        Err(_) => (1..=7).collect(),
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Frames with patchable 9-byte seqs, and the offset of each seq.
struct Pool {
    frames: Vec<Vec<u8>>,
    offsets: Vec<usize>,
}

impl Pool {
    fn generated(count: usize) -> Pool {
        let mut random = SplitMix(42);
        let frames: Vec<Vec<u8>> =
            (0..count).map(|index| realistic_commit(FIRST_SEQ + index as i64, DIDS, &mut random)).collect();
        Pool::from_frames(frames)
    }

    fn from_frames(frames: Vec<Vec<u8>>) -> Pool {
        let offsets = frames.iter().map(|frame| seq_offset(frame).expect("a 9-byte seq")).collect();
        Pool { frames, offsets }
    }

    fn average_bytes(&self) -> usize {
        self.frames.iter().map(Vec::len).sum::<usize>() / self.frames.len()
    }
}

/// Returns a topic name that no earlier step of this run used. The steps share one broker, and a
/// name made from a free port can repeat.
fn unique_topic(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// The bytes the relay collects before it writes them to the socket.
const CHUNK_BYTES: usize = 256 * 1024;

/// The maximum number of frames in one vectored write: their four slices each stay under Linux's
/// limit of 1024 slices a call.
const MAX_CHUNK_FRAMES: usize = 250;

/// Writes every byte of `slices` to `stream`.
async fn write_all_vectored(stream: &mut tokio::net::TcpStream, mut slices: &mut [std::io::IoSlice<'_>]) -> std::io::Result<()> {
    while !slices.is_empty() {
        let written = stream.write_vectored(slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

/// Appends the header of an unmasked, final, binary WebSocket frame (RFC 6455, section 5.2) with
/// a payload of `length` bytes.
fn push_websocket_header(out: &mut Vec<u8>, length: usize) {
    out.push(0x82);
    if length < 126 {
        out.push(length as u8);
    } else if let Ok(length) = u16::try_from(length) {
        out.push(126);
        out.extend_from_slice(&length.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(length as u64).to_be_bytes());
    }
}

/// A loopback relay that sends `total` frames cycled from the pool with increasing seqs, as fast
/// as the reader takes them or at `rate` frames a second.
struct StreamRelay {
    address: std::net::SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    /// When the host connected and the first frame went out.
    started: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl StreamRelay {
    fn start(pool: Arc<Pool>, total: usize, rate: Option<u32>) -> StreamRelay {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let address = listener.local_addr().unwrap();
        let started_at = Arc::new(std::sync::Mutex::new(None));
        let first_send = started_at.clone();
        runtime.spawn(async move {
            let Ok((stream, _)) = listener.accept().await else { return };
            let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else { return };
            let started = Instant::now();
            *first_send.lock().unwrap() = Some(started);
            // The frames go out as ready-made WebSocket frames written straight to the socket, in
            // chunks of about CHUNK_BYTES, so that the relay takes as little of the cores the
            // host and the broker share as it can. A relay on another machine would take none.
            // Each chunk is one vectored write of the pool's frames around their new seqs, so the
            // frames are not copied in user space. `headers` contains each frame's WebSocket
            // header followed by its 8-byte seq, and `pending` each frame's slot and header offset.
            // The relay took 1.0 instead of 1.2 µs of CPU a frame.
            let mut headers = Vec::with_capacity(MAX_CHUNK_FRAMES * 18);
            let mut pending: Vec<(usize, usize)> = Vec::with_capacity(MAX_CHUNK_FRAMES);
            let mut chunk_bytes = 0;
            for index in 0..total {
                let slot = index % pool.frames.len();
                let frame = &pool.frames[slot];
                pending.push((slot, headers.len()));
                push_websocket_header(&mut headers, frame.len());
                headers.extend_from_slice(&(FIRST_SEQ + index as i64).to_be_bytes());
                chunk_bytes += frame.len();
                let due = rate.map(|rate| started + Duration::from_secs_f64((index + 1) as f64 / f64::from(rate)));
                let full = chunk_bytes >= CHUNK_BYTES || pending.len() == MAX_CHUNK_FRAMES;
                if due.is_some() || full || index + 1 == total {
                    let mut slices = Vec::with_capacity(pending.len() * 4);
                    for (position, &(slot, start)) in pending.iter().enumerate() {
                        let end = pending.get(position + 1).map_or(headers.len(), |next| next.1);
                        let (frame, offset) = (&pool.frames[slot], pool.offsets[slot]);
                        slices.extend([
                            std::io::IoSlice::new(&headers[start..end - 8]),
                            std::io::IoSlice::new(&frame[..offset]),
                            std::io::IoSlice::new(&headers[end - 8..end]),
                            std::io::IoSlice::new(&frame[offset + 8..]),
                        ]);
                    }
                    if write_all_vectored(socket.get_mut(), &mut slices).await.is_err() {
                        return;
                    }
                    headers.clear();
                    pending.clear();
                    chunk_bytes = 0;
                }
                if let Some(due) = due {
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            while let Some(Ok(_)) = futures::StreamExt::next(&mut socket).await {}
        });
        StreamRelay { address, runtime: Some(runtime), started: started_at }
    }
}

impl Drop for StreamRelay {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// CPU seconds (user and system) and peak and current RSS of a process, from /proc.
fn process_usage(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |index: usize| fields.get(index).and_then(|value| value.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (ticks(11) + ticks(12)) / per_second;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (cpu, kib("VmHWM:") * 1024, kib("VmRSS:") * 1024)
}

struct HostRun {
    frames_per_second: f64,
    messages_per_second: f64,
    /// CPU seconds a frame of the host, of this process (which runs the relay) and of the broker.
    cpu_per_frame: f64,
    relay_cpu_per_frame: f64,
    broker_cpu_per_frame: f64,
    peak_rss: u64,
    /// Each RSS checkpoint with the median of the RSS samples taken around it.
    rss_samples: Vec<(usize, u64)>,
    metrics: String,
    /// The metrics when the run's first `warm_up` frames were acknowledged.
    warm_metrics: String,
}

/// Builds the host flags for a run against `relay` and `broker`, producing to `topic`.
fn host_args(relay: &StreamRelay, broker: &Broker, topic: &str, metrics_address: &str) -> Vec<String> {
    let relay_url = format!("ws://{}", relay.address);
    ["--relay-host", &relay_url, "--bootstrap-servers", &broker.address, "--output-topic", topic]
        .into_iter()
        .chain(["--metrics-listen-address", metrics_address])
        .map(str::to_owned)
        .collect()
}

/// Runs the host binary against a stream relay until it acknowledged `total` frames. The metrics
/// are also kept as they were when `warm_up` frames were acknowledged.
fn run_host(broker: &Broker, pool: Arc<Pool>, total: usize, rate: Option<u32>, rss_at: &[usize], warm_up: usize) -> HostRun {
    let topic = unique_topic("bench");
    let relay = StreamRelay::start(pool, total, rate);
    let metrics_address = format!("127.0.0.1:{}", free_port());
    let mut args = host_args(&relay, broker, &topic, &metrics_address);
    args.extend(["--topic-partitions".to_owned(), "4".to_owned()]);
    let mut host = HostProcess::start(&args);
    let (broker_cpu_before, relay_cpu_before) = (process_usage(broker.pid()).0, process_usage(std::process::id()).0);
    let last_seq = (FIRST_SEQ + total as i64 - 1) as f64;
    let mut rss_windows: Vec<Vec<f64>> = vec![Vec::new(); rss_at.len()];
    let mut warm_metrics = None;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let metrics = loop {
        assert!(Instant::now() < deadline, "the host did not finish; log:\n{}", host.log());
        let metrics = http_get(&metrics_address, "/metrics").unwrap_or_default();
        let cursor = metric_value(&metrics, "atkafka_cursor_seq").unwrap_or(0.0);
        let done_frames = (cursor - FIRST_SEQ as f64 + 1.0).max(0.0) as usize;
        for (checkpoint, samples) in rss_at.iter().zip(&mut rss_windows) {
            if done_frames.abs_diff(*checkpoint) <= RSS_WINDOW_FRAMES {
                samples.push(process_usage(host.pid()).2 as f64);
            }
        }
        if warm_metrics.is_none() && done_frames >= warm_up {
            warm_metrics = Some(metrics.clone());
        }
        if cursor >= last_seq {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(if rate.is_some() { 200 } else { 20 }));
    };
    let elapsed = relay.started.lock().unwrap().expect("the host connected").elapsed().as_secs_f64();
    let (cpu, peak_rss, _) = process_usage(host.pid());
    let broker_cpu = process_usage(broker.pid()).0 - broker_cpu_before;
    let relay_cpu = process_usage(std::process::id()).0 - relay_cpu_before;
    let messages = metric_value(&metrics, "atkafka_produced_events{status=\"ok\"}").unwrap_or(0.0);
    // The relay rewrites the seqs of the frames it sends: the host must have seen them consecutive.
    for counter in ["atkafka_seq_gaps", "atkafka_seq_regressions"] {
        assert_eq!(metric_value(&metrics, counter), Some(0.0), "{counter} after a run; log:\n{}", host.log());
    }
    let _ = host.terminate(Duration::from_secs(60));
    delete_topic(broker, &topic);
    HostRun {
        frames_per_second: total as f64 / elapsed,
        messages_per_second: messages / elapsed,
        cpu_per_frame: cpu / total as f64,
        relay_cpu_per_frame: relay_cpu / total as f64,
        broker_cpu_per_frame: broker_cpu / total as f64,
        peak_rss,
        rss_samples: rss_at
            .iter()
            .zip(&mut rss_windows)
            .filter(|(_, samples)| !samples.is_empty())
            .map(|(checkpoint, samples)| (*checkpoint, median(samples) as u64))
            .collect(),
        metrics,
        warm_metrics: warm_metrics.unwrap_or_default(),
    }
}

/// Returns the cumulative buckets of a Prometheus histogram exposition, as (bound, count).
fn histogram_buckets(metrics: &str, name: &str) -> Vec<(f64, f64)> {
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&format!("{name}_bucket{{le=\""))?;
            let (bound, count) = rest.split_once("\"} ")?;
            let bound = if bound == "+Inf" { f64::INFINITY } else { bound.parse().ok()? };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// Computes a quantile of what a histogram counted between the `earlier` and the `later`
/// exposition, interpolated within its bucket.
fn histogram_quantile(later: &str, earlier: &str, name: &str, quantile: f64) -> f64 {
    let before = histogram_buckets(earlier, name);
    let buckets: Vec<(f64, f64)> = histogram_buckets(later, name)
        .into_iter()
        .map(|(bound, count)| {
            let counted_before = before.iter().find(|(earlier_bound, _)| *earlier_bound == bound).map_or(0.0, |b| b.1);
            (bound, count - counted_before)
        })
        .collect();
    let total = buckets.last().map(|bucket| bucket.1).unwrap_or(0.0);
    let target = total * quantile;
    let (mut lower, mut below) = (0.0, 0.0);
    for (bound, count) in buckets {
        if count >= target {
            if bound.is_infinite() {
                return lower;
            }
            let share = if count > below { (target - below) / (count - below) } else { 0.0 };
            return lower + (bound - lower) * share;
        }
        lower = bound;
        below = count;
    }
    lower
}

/// Measures the Kafka-side limit: the same standard messages, keyed by DID, sent with the host's producer
/// settings by a plain rdkafka producer, its delivery reports awaited in order on another thread
/// as the host does. Returns messages per second.
fn kafka_limit(broker: &Broker, messages: &[(String, Vec<u8>)], total: usize) -> LimitRun {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let topic = unique_topic("limit");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    runtime.block_on(broker.create_topic(&topic, 4));
    let config = atkafka_host::kafka::producer::client_config(&broker.address, &[]);
    let producer: FutureProducer = config.create().unwrap();
    let (sender, mut receiver) = tokio::sync::mpsc::channel(16 * 1024);
    let checker = runtime.spawn(async move {
        while let Some(delivery) = receiver.recv().await {
            let delivery: rdkafka::producer::DeliveryFuture = delivery;
            delivery.await.expect("a delivery report").expect("delivered");
        }
    });
    // The host connects to the relay only after its producer has the topic's metadata, so the
    // end-to-end clock starts with a warm producer. This one is warmed further: its clock starts
    // after a first message was acknowledged, so that neither the connection nor the idempotent
    // producer's id request counts against it.
    let (key, value) = &messages[0];
    let first = producer.send_result(FutureRecord::to(&topic).key(key.as_bytes()).payload(value)).map_err(|(error, _)| error);
    runtime.block_on(first.expect("the producer took the first message")).expect("a delivery report").expect("delivered");
    let (broker_cpu_before, producer_cpu_before) = (process_usage(broker.pid()).0, process_usage(std::process::id()).0);
    let started = Instant::now();
    for index in 0..total {
        let (key, value) = &messages[index % messages.len()];
        loop {
            match producer.send_result(FutureRecord::to(&topic).key(key.as_bytes()).payload(value)) {
                Ok(delivery) => {
                    sender.blocking_send(delivery).unwrap();
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, _)) => panic!("the producer refused a message: {error}"),
            }
        }
    }
    drop(sender);
    runtime.block_on(checker).unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let per_message = |cpu: f64| cpu / total as f64;
    let run = LimitRun {
        messages_per_second: total as f64 / elapsed,
        producer_cpu_per_message: per_message(process_usage(std::process::id()).0 - producer_cpu_before),
        broker_cpu_per_message: per_message(process_usage(broker.pid()).0 - broker_cpu_before),
    };
    drop(producer);
    runtime.block_on(broker.delete_topic(&topic));
    run
}

/// Deletes a run's topic. Tansu keeps its topics in memory, and with every run's messages kept
/// the broker slowed from run to run.
fn delete_topic(broker: &Broker, topic: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(broker.delete_topic(topic));
}

/// The plain producer's rate, and the CPU the producer and the broker spent on it.
struct LimitRun {
    messages_per_second: f64,
    /// CPU seconds a message of the process that runs the producer, and of the broker.
    producer_cpu_per_message: f64,
    broker_cpu_per_message: f64,
}

/// Latency of a plain rdkafka producer at `rate` messages a second, from send to acknowledgement:
/// the broker's share of (5). Returns the p50 and p99 in seconds.
fn kafka_latency(broker: &Broker, messages: &[(String, Vec<u8>)], total: usize, rate: u32) -> (f64, f64) {
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let topic = unique_topic("latency");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    runtime.block_on(broker.create_topic(&topic, 4));
    let overrides: Vec<(String, String)> = std::env::var("BENCH_PLAIN_PROPERTIES")
        .unwrap_or_default()
        .split(',')
        .filter_map(|pair| pair.split_once('=').map(|(key, value)| (key.to_owned(), value.to_owned())))
        .collect();
    let config = atkafka_host::kafka::producer::client_config(&broker.address, &overrides);
    let producer: FutureProducer = config.create().unwrap();
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<(Instant, rdkafka::producer::DeliveryFuture)>(1 << 16);
    let checker = runtime.spawn(async move {
        let mut latencies = Vec::new();
        while let Some((sent, delivery)) = receiver.recv().await {
            delivery.await.expect("a delivery report").expect("delivered");
            latencies.push(sent.elapsed().as_secs_f64());
        }
        latencies
    });
    let started = Instant::now();
    for index in 0..total {
        let (key, value) = &messages[index % messages.len()];
        let delivery = producer.send_result(FutureRecord::to(&topic).key(key.as_bytes()).payload(value)).ok().unwrap();
        sender.blocking_send((Instant::now(), delivery)).unwrap();
        let due = started + Duration::from_secs_f64((index + 1) as f64 / f64::from(rate));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    drop(sender);
    let mut latencies = runtime.block_on(checker).unwrap().split_off(LATENCY_WARM_UP);
    latencies.sort_by(f64::total_cmp);
    (latencies[latencies.len() / 2], latencies[latencies.len() * 99 / 100])
}

/// Time from process start to the first acknowledged message, with compiled components cached.
fn startup(broker: &Broker, pool: Arc<Pool>) -> f64 {
    let relay = StreamRelay::start(pool, 1000, None);
    let topic = unique_topic("startup");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(broker.create_topic(&topic, 1));
    let metrics_address = format!("127.0.0.1:{}", free_port());
    let args = host_args(&relay, broker, &topic, &metrics_address);
    let started = Instant::now();
    let mut host = HostProcess::start(&args);
    let mut first_scrape = None;
    loop {
        let metrics = http_get(&metrics_address, "/metrics").unwrap_or_default();
        if first_scrape.is_none() && !metrics.is_empty() {
            first_scrape = Some(started.elapsed());
        }
        if metric_value(&metrics, "atkafka_produced_events{status=\"ok\"}").is_some_and(|count| count >= 1.0) {
            let elapsed = started.elapsed().as_secs_f64();
            let _ = host.terminate(Duration::from_secs(30));
            if std::env::var_os("BENCH_SHOW_STARTUP").is_some() {
                eprintln!("first scrape after {first_scrape:?}, first acknowledgement after {elapsed} s\n{}", host.log());
            }
            return elapsed;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no message; log:\n{}", host.log());
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| text.lines().find_map(|line| line.strip_prefix("model name").map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())))
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| text.lines().next().map(|line| line.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0)))
        .unwrap_or(0);
    let cores = std::thread::available_parallelism().map(|cores| cores.get()).unwrap_or(1);
    format!("{cpu}, {cores} cores, {} GiB", memory / (1024 * 1024))
}

fn main() -> anyhow::Result<()> {
    let runs = env_number("BENCH_RUNS", 3).max(1);
    let e2e_frames = env_number("BENCH_FRAMES", 500_000);
    let memory_frames = env_number("BENCH_MEMORY_FRAMES", 1_000_000);
    let steps = steps();
    let mut report = String::new();
    writeln!(
        report,
        "Machine: {}; atkafka-host {}; median of {runs} runs; {e2e_frames} frames an end-to-end run, {memory_frames} in the memory run.\n",
        machine(),
        env!("CARGO_PKG_VERSION")
    )?;
    if std::env::var_os("BENCH_STEPS").is_some() {
        writeln!(report, "Steps measured: {steps:?}.\n")?;
    }
    writeln!(report, "| measure | result |\n|---|---|")?;
    let mut row = |name: &str, value: String| {
        println!("{name}: {value}");
        writeln!(report, "| {name} | {value} |").unwrap();
    };

    eprintln!("generating {POOL_FRAMES} realistic frames");
    let pool = Arc::new(Pool::generated(POOL_FRAMES));
    row("generated stream", format!("{POOL_FRAMES} distinct commits cycled, {} bytes a frame on average, {DIDS} DIDs", pool.average_bytes()));

    let events: Vec<Event> = pool.frames.iter().flat_map(|frame| decode(frame).events).collect();

    // 1. decode
    let mut decode_per_frame = None;
    if steps.contains(&1) {
        let mut rates = Vec::new();
        for _ in 0..runs {
            let started = Instant::now();
            let mut count = 0;
            for _ in 0..DECODE_PASSES {
                // As on the host's decoding thread, the next frame is requested into the caches
                // while one is decoded.
                let frames = pool.frames.iter().map(|frame| (frame.as_slice(), ()));
                for_each_ahead(frames, FRAME_PREFETCH_BYTES, |frame, ()| count += decode(frame).events.len());
            }
            rates.push((DECODE_PASSES * pool.frames.len()) as f64 / started.elapsed().as_secs_f64());
            assert!(count > 0);
        }
        let rate = median(&mut rates);
        row("1. decode (frames/s, one core)", format!("{rate:.0}"));
        decode_per_frame = Some(1.0 / rate);
    }

    // 2. format: the guest in batch calls of MAX_BATCH_EVENTS events (as a tenant formats a full
    // handoff) and with one event a call. The native code formats one event at a time, because
    // natively a batch would only group the same calls.
    let mut guest_per_event = None;
    if steps.contains(&2) {
        let engine = FormatterEngine::new(None)?;
        let mut formatter = Formatter::new(&engine, &FormatterSource::Builtin("standard"), Vec::new(), FormatterLimits::default())?;
        let (mut guest_rates, mut single_rates, mut native_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            // The guest and the native code take turns pass by pass, so that both meet the
            // machine in the same state: timed apart, the native rate alone varied twofold
            // between runs.
            let (mut guest_seconds, mut native_seconds) = (0.0, 0.0);
            for _ in 0..FORMAT_PASSES {
                let started = Instant::now();
                for (chunk_index, chunk) in events.chunks(MAX_BATCH_EVENTS).enumerate() {
                    let batch: Vec<BatchEvent<'_>> = chunk
                        .iter()
                        .enumerate()
                        .map(|(offset, event)| BatchEvent { event, event_id: (chunk_index * MAX_BATCH_EVENTS + offset) as u64, received_at_us: 0 })
                        .collect();
                    for result in formatter.format_batch(&batch) {
                        result.expect("the standard formatter formats");
                    }
                }
                guest_seconds += started.elapsed().as_secs_f64();

                let started = Instant::now();
                for event in &events {
                    let mut value = Vec::with_capacity(512);
                    atkafka_host::standard_shape::write_standard(&mut value, event);
                    std::hint::black_box(value);
                }
                native_seconds += started.elapsed().as_secs_f64();
            }
            let formatted = (FORMAT_PASSES * events.len()) as f64;
            guest_rates.push(formatted / guest_seconds);
            native_rates.push(formatted / native_seconds);
            ratios.push(native_seconds / guest_seconds);

            let started = Instant::now();
            for _ in 0..FORMAT_PASSES {
                for (index, event) in events.iter().enumerate() {
                    formatter.format(event, index as u64, 0).expect("the standard formatter formats");
                }
            }
            single_rates.push(formatted / started.elapsed().as_secs_f64());
        }
        let (guest, single, native) = (median(&mut guest_rates), median(&mut single_rates), median(&mut native_rates));
        row(
            &format!("2. format, WASM guest, {MAX_BATCH_EVENTS} events a call (events/s)"),
            format!("{guest:.0} ({:.2} µs an event)", 1e6 / guest),
        );
        row("2. format, WASM guest, one event a call (events/s)", format!("{single:.0} ({:.2} µs an event)", 1e6 / single));
        row("2. format, native (events/s)", format!("{native:.0} ({:.2} µs an event)", 1e6 / native));
        row("2. format, WASM / native, median of the runs' ratios", format!("{:.2}", median(&mut ratios)));
        // The ratio falls when the shared formatting code gets faster, so the time the sandbox
        // adds to an event is shown too.
        row("2. format, time the sandbox adds (batched guest minus native)", format!("{:.2} µs an event", 1e6 / guest - 1e6 / native));
        guest_per_event = Some(1.0 / guest);
    }
    if !steps.iter().any(|step| (3..=7).contains(step)) {
        return write_report(&report);
    }

    eprintln!("starting the Tansu broker");
    let broker = Broker::start();

    // 7. start-up, on a fresh broker and with the compiled component cached by an earlier start.
    let mut startup_median = None;
    if steps.contains(&7) {
        let mut startups = Vec::new();
        for _ in 0..=runs {
            startups.push(startup(&broker, pool.clone()));
        }
        startup_median = Some(median(&mut startups[1..]));
    }

    let sample: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|event| {
            let mut value = Vec::new();
            atkafka_host::standard_shape::write_standard(&mut value, event);
            (event.default_key().to_owned(), value)
        })
        .collect();

    // 3. end to end and 4. the Kafka-side limit, in pairs: each end-to-end run is followed by a
    // plain producer run on the broker in the same state, and the ratio is taken per pair.
    if steps.contains(&3) || steps.contains(&4) {
        let (mut e2e, mut limits, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            let host = run_host(&broker, pool.clone(), e2e_frames, None, &[], 0);
            let limit = kafka_limit(&broker, &sample, e2e_frames);
            let ratio = host.messages_per_second / limit.messages_per_second;
            eprintln!(
                "run {}: end to end {:.0} messages/s with {:.1} µs of host CPU a frame, plain producer {:.0} messages/s, ratio {ratio:.2}",
                run + 1,
                host.messages_per_second,
                host.cpu_per_frame * 1e6,
                limit.messages_per_second
            );
            e2e.push(host);
            limits.push(limit);
            ratios.push(ratio);
        }
        let median_of = |runs: &[HostRun], field: fn(&HostRun) -> f64| median(&mut runs.iter().map(field).collect::<Vec<_>>());
        let e2e_frames_per_second = median_of(&e2e, |run| run.frames_per_second);
        let messages_per_frame = median_of(&e2e, |run| run.messages_per_second / run.frames_per_second);
        let relay_cpu = median_of(&e2e, |run| run.relay_cpu_per_frame);
        row("3. end to end (frames/s)", format!("{e2e_frames_per_second:.0}"));
        row("3. end to end (messages/s)", format!("{:.0}", median_of(&e2e, |run| run.messages_per_second)));
        row(
            "3. CPU seconds per 1000 frames: host / relay / broker",
            format!(
                "{:.4} / {:.4} / {:.4}",
                median_of(&e2e, |run| run.cpu_per_frame) * 1e3,
                relay_cpu * 1e3,
                median_of(&e2e, |run| run.broker_cpu_per_frame) * 1e3
            ),
        );
        row("3. peak RSS", format!("{:.1} MB", median_of(&e2e, |run| run.peak_rss as f64) / 1e6));

        let capture_path = fixtures_dir().join("relay-capture/frames.bin.zst");
        let real_capture_rate = if capture_path.exists() {
            let capture = read_capture(&capture_path)?;
            let real = Arc::new(Pool::from_frames(capture.into_iter().filter(|frame| seq_offset(frame).is_some()).collect()));
            eprintln!("end to end on the real capture, cycled: {e2e_frames} frames");
            let run = run_host(&broker, real, e2e_frames, None, &[], 0);
            format!("{:.0}", run.frames_per_second)
        } else {
            format!("not measured: no capture at {}", capture_path.display())
        };
        row("3. end to end, real capture cycled (frames/s)", real_capture_rate);

        let median_of = |runs: &[LimitRun], field: fn(&LimitRun) -> f64| median(&mut runs.iter().map(field).collect::<Vec<_>>());
        let plain = median_of(&limits, |run| run.messages_per_second);
        let (producer_cpu, broker_cpu) = (median_of(&limits, |run| run.producer_cpu_per_message), median_of(&limits, |run| run.broker_cpu_per_message));
        row("4. plain rdkafka producer (messages/s)", format!("{plain:.0}"));
        row(
            "4. CPU seconds per 1000 messages: plain producer / broker",
            format!("{:.4} / {:.4}", producer_cpu * 1e3, broker_cpu * 1e3),
        );
        row("4. end to end / plain producer, median of the runs' ratios", format!("{:.2}", median(&mut ratios)));

        // The end-to-end rate these cores would allow a host that spent only what its parts cost
        // alone: decoding (1), the guest (2) and the plain producer's CPU (4), beside the relay
        // and the broker. The gap between it and the plain producer comes from the shared cores,
        // and the gap between it and (3) is the host's own overhead.
        if let (Some(decode), Some(guest)) = (decode_per_frame, guest_per_event) {
            let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get()) as f64;
            let per_frame = decode + relay_cpu + messages_per_frame * (guest + producer_cpu + broker_cpu);
            let ceiling = cores / per_frame;
            row(
                "4. ceiling on these cores beside this relay and broker: frames/s if the host cost only (1) + (2) + the plain producer's CPU",
                format!("{ceiling:.0} ({:.2} of the plain producer)", ceiling * messages_per_frame / plain),
            );
            row("4. end to end / that ceiling", format!("{:.2}", e2e_frames_per_second / ceiling));
        }
    }

    // 5. latency at the live firehose's rate, in the steady state. The first 2 s are left out,
    // because messages wait until the idempotent producer has its producer id, and librdkafka
    // requests it again only after 500 ms when no broker connection was up yet. (7) measures
    // start-up.
    if steps.contains(&5) {
        eprintln!("latency at 2000 frames/s for 20 s");
        let paced = run_host(&broker, pool.clone(), LATENCY_FRAMES, Some(LATENCY_RATE), &[], LATENCY_WARM_UP);
        if std::env::var_os("BENCH_SHOW_LATENCY").is_some() {
            for line in paced.metrics.lines().filter(|line| line.starts_with("atkafka_delivery_latency_seconds")) {
                eprintln!("{line}");
            }
        }
        let histogram = "atkafka_delivery_latency_seconds";
        let p50 = histogram_quantile(&paced.metrics, &paced.warm_metrics, histogram, 0.5);
        let p99 = histogram_quantile(&paced.metrics, &paced.warm_metrics, histogram, 0.99);
        let p99_whole = histogram_quantile(&paced.metrics, "", histogram, 0.99);
        row("5. latency at 2000 frames/s after 2 s, p50", format!("{:.1} ms", p50 * 1e3));
        row("5. latency at 2000 frames/s after 2 s, p99", format!("{:.1} ms", p99 * 1e3));
        row("5. latency at 2000 frames/s, whole run with start-up, p99", format!("{:.1} ms", p99_whole * 1e3));
        let (plain_p50, plain_p99) = kafka_latency(&broker, &sample, LATENCY_FRAMES, LATENCY_RATE);
        row(
            "5. plain producer at 2000 messages/s after 2 s, p50 / p99",
            format!("{:.1} ms / {:.1} ms", plain_p50 * 1e3, plain_p99 * 1e3),
        );
    }

    // 6. memory over time
    if steps.contains(&6) {
        eprintln!("memory: {memory_frames} frames");
        let checkpoints = [100_000.min(memory_frames), memory_frames];
        let long = run_host(&broker, pool.clone(), memory_frames + RSS_WINDOW_FRAMES, None, &checkpoints, 0);
        for (events, bytes) in &long.rss_samples {
            row(
                &format!("6. RSS after {events} events (median of the samples within {RSS_WINDOW_FRAMES} events)"),
                format!("{:.1} MB", *bytes as f64 / 1e6),
            );
        }
        if let [(_, first), (_, last)] = long.rss_samples[..] {
            row("6. RSS growth", format!("{:+.1} %", (last as f64 / first as f64 - 1.0) * 100.0));
        }
    }

    if let Some(startup) = startup_median {
        row("7. start-up to first acknowledged message", format!("{:.0} ms", startup * 1e3));
    }

    write_report(&report)
}

/// Prints the report and writes it to target/bench/results.md.
fn write_report(report: &str) -> anyhow::Result<()> {
    let out = atkafka_integration_tests::workspace_dir().join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("results.md"), report)?;
    println!("\n{report}\nwritten to {}", out.join("results.md").display());
    Ok(())
}

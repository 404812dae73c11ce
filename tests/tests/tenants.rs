//! Several tenants on one host: a well-behaved tenant delivers every event of the capture while
//! misbehaving guests in other tenants are contained by the sandbox, and each tenant's filter,
//! error policy and quarantine behave as its config declares.

use std::process::Command;
use std::time::Duration;

use atkafka_integration_tests::consume::consume;
use atkafka_integration_tests::expected::{compare, from_standard, Summary};
use atkafka_integration_tests::fixtures::built_guest;
use atkafka_integration_tests::host::{binary, metric_value};
use atkafka_integration_tests::replay::ReplayOptions;
use atkafka_integration_tests::scenario::{capture_stream, Bench};
use serde_json::Value;

/// Writes a tenant config file beside the bench's cursor file and returns the host flags for it.
fn config_args(bench_dir: &std::path::Path, config: &str) -> Vec<String> {
    let path = bench_dir.join("tenants.toml");
    std::fs::write(&path, config).unwrap();
    vec!["--config".to_owned(), path.display().to_string(), "--topic-partitions".to_owned(), "2".to_owned()]
}

fn hostile_tenant(name: &str, behavior: &str, extra: &str) -> String {
    format!(
        "[[tenant]]\nname = \"{name}\"\nformatter = \"{}\"\ntopic = \"{name}\"\noptions = {{ behavior = \"{behavior}\" }}\n{extra}\n",
        built_guest("atkafka_formatter_hostile").display()
    )
}

fn values(records: &[atkafka_integration_tests::consume::Record]) -> Vec<Value> {
    records.iter().map(|record| serde_json::from_slice(&record.value).unwrap()).collect()
}

#[test]
fn hostile_tenants_are_contained_while_a_good_tenant_delivers_everything() {
    let Some(stream) = capture_stream(0) else { return };
    let directory = std::env::temp_dir().join(format!("atkafka-tenants-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let mut config = String::from("[[tenant]]\nname = \"good\"\nformatter = \"standard\"\ntopic = \"good\"\n\n");
    config += &hostile_tenant("loop", "loop", "quarantine_after_failures = 3\nquarantine_secs = 600\nlimits = { timeout_ms = 20 }");
    config += &hostile_tenant("memory", "memory", "limits = { memory_mib = 32 }\nquarantine_after_failures = 0");
    config += &hostile_tenant("trap", "trap", "quarantine_after_failures = 5\nquarantine_secs = 600");
    config += &hostile_tenant("oversized", "oversized", "on_error = \"dead-letter\"\ndead_letter_topic = \"dead\"\nquarantine_after_failures = 0");
    config += &hostile_tenant("many", "many", "quarantine_after_failures = 0");
    // Within the tenant's own limit, but above librdkafka's default message.max.bytes (1000000).
    config += &hostile_tenant(
        "too-big-for-kafka",
        "oversized",
        "on_error = \"dead-letter\"\ndead_letter_topic = \"dead-kafka\"\nquarantine_after_failures = 0\nlimits = { max_message_bytes = 4194304 }",
    );
    config += &hostile_tenant("read-file", "read-file", "quarantine_after_failures = 0");
    config += &hostile_tenant("environment", "environment", "quarantine_after_failures = 0");
    config += &hostile_tenant("socket", "socket", "quarantine_after_failures = 0");
    let args = config_args(&directory, &config);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let bench = Bench::new(ReplayOptions { frames: stream.frames.clone(), ..ReplayOptions::default() }, &arg_refs);
    let mut host = bench.start_host();
    bench.wait_for_cursor(&host, stream.last_seq, Duration::from_secs(120));

    // The well-behaved tenant delivers exactly what Jetstream rendered.
    let good = consume(&bench.broker.address, "good", stream.expected.len(), Duration::from_secs(30), Duration::from_secs(1));
    let actual: Vec<Summary> = values(&good).iter().map(|value| from_standard(value).unwrap()).collect();
    if let Err(report) = compare(&stream.expected, &actual) {
        panic!("good tenant: {report}");
    }

    // The oversized tenant's events went to its dead-letter topic, with headers naming the failure.
    let dead = consume(&bench.broker.address, "dead", stream.expected.len(), Duration::from_secs(30), Duration::from_secs(1));
    assert_eq!(dead.len(), stream.expected.len(), "dead letters");
    for record in &dead {
        let header = |name: &str| {
            record.headers.iter().find(|(key, _)| key == name).map(|(_, value)| String::from_utf8_lossy(value).into_owned())
        };
        assert_eq!(header("atkafka-tenant").as_deref(), Some("oversized"));
        assert_eq!(header("atkafka-error-kind").as_deref(), Some("output"));
        assert!(header("atkafka-error").is_some_and(|error| error.contains("2097152 bytes")), "{:?}", header("atkafka-error"));
        assert!(header("atkafka-seq").is_some_and(|seq| seq.parse::<i64>().is_ok()));
        let event: Value = serde_json::from_slice(&record.value).unwrap();
        assert_eq!(header("atkafka-did").as_deref(), event["did"].as_str());
    }

    // The message librdkafka refused as too large went through the tenant's policy, not lost.
    let refused = consume(&bench.broker.address, "dead-kafka", stream.expected.len(), Duration::from_secs(30), Duration::from_secs(1));
    assert_eq!(refused.len(), stream.expected.len(), "dead letters of messages above message.max.bytes");
    let error = refused[0].headers.iter().find(|(key, _)| key == "atkafka-error").map(|(_, value)| String::from_utf8_lossy(value).into_owned());
    assert!(
        error.as_deref().is_some_and(|error| error.contains("message.max.bytes") && error.contains("2097")),
        "the error names the size and the limit: {error:?}"
    );

    // No hostile tenant produced anything, least of all a leak.
    for topic in ["loop", "memory", "trap", "oversized", "many", "read-file", "environment", "socket", "too-big-for-kafka"] {
        let records = consume(&bench.broker.address, topic, 1, Duration::from_secs(2), Duration::ZERO);
        assert!(records.is_empty(), "tenant {topic} produced {} messages", records.len());
    }

    let metrics = bench.metrics();
    let value = |sample: &str| metric_value(&metrics, sample).unwrap_or_else(|| panic!("{sample} missing"));
    let events = stream.expected.len() as f64;
    assert_eq!(value("atkafka_formatter_errors{kind=\"deadline\",tenant=\"loop\"}"), 3.0);
    assert_eq!(value("atkafka_formatter_errors{kind=\"quarantined\",tenant=\"loop\"}"), events - 3.0);
    assert_eq!(value("atkafka_tenant_quarantined{tenant=\"loop\"}"), 1.0);
    assert_eq!(value("atkafka_formatter_deadline_retries{tenant=\"loop\"}"), 3.0);
    let errors_of = |tenant: &str| -> Vec<&str> {
        let label = format!("tenant=\"{tenant}\"");
        metrics.lines().filter(|line| line.starts_with("atkafka_formatter_errors{") && line.contains(&label)).collect()
    };
    assert_eq!(value("atkafka_formatter_errors{kind=\"memory\",tenant=\"memory\"}"), events, "{:?}", errors_of("memory"));
    assert!(value("atkafka_formatter_memory_bytes{tenant=\"memory\"}") <= (32 << 20) as f64);
    assert_eq!(value("atkafka_formatter_errors{kind=\"trap\",tenant=\"trap\"}"), 5.0);
    assert_eq!(value("atkafka_tenant_quarantined{tenant=\"trap\"}"), 1.0);
    assert_eq!(value("atkafka_formatter_errors{kind=\"output\",tenant=\"oversized\"}"), events);
    assert_eq!(value("atkafka_tenant_dead_lettered{tenant=\"oversized\"}"), events);
    assert_eq!(value("atkafka_formatter_errors{kind=\"output\",tenant=\"many\"}"), events);
    for tenant in ["read-file", "environment", "socket"] {
        assert_eq!(value(&format!("atkafka_formatter_errors{{kind=\"error\",tenant=\"{tenant}\"}}")), events, "{tenant}");
    }
    assert_eq!(value("atkafka_tenant_events{tenant=\"good\"}"), events);
    assert_eq!(value("atkafka_formatter_errors{kind=\"trap\",tenant=\"good\"}"), 0.0);
    assert!(host.terminate(Duration::from_secs(30)).success());
    let _ = std::fs::remove_dir_all(directory);
}

#[test]
fn filters_select_collections_dids_and_kinds() {
    let Some(stream) = capture_stream(0) else { return };
    let directory = std::env::temp_dir().join(format!("atkafka-filters-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let some_did = stream.expected.iter().find(|event| event.kind != "identity").unwrap().did.clone();
    let config = format!(
        "[[tenant]]\nname = \"likes\"\nformatter = \"standard\"\ntopic = \"likes\"\nfilter = {{ collections = [\"app.bsky.feed.like\"] }}\n\n\
         [[tenant]]\nname = \"bsky\"\nformatter = \"standard\"\ntopic = \"bsky\"\nfilter = {{ collections = [\"app.bsky.*\"], kinds = [\"operation\"] }}\n\n\
         [[tenant]]\nname = \"lifecycle\"\nformatter = \"osprey\"\ntopic = \"lifecycle\"\nfilter = {{ kinds = [\"identity\", \"account\"] }}\n\n\
         [[tenant]]\nname = \"one\"\nformatter = \"standard\"\ntopic = \"one\"\nfilter = {{ dids = [\"{some_did}\"] }}\n"
    );
    let args = config_args(&directory, &config);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let bench = Bench::new(ReplayOptions { frames: stream.frames.clone(), ..ReplayOptions::default() }, &arg_refs);
    let mut host = bench.start_host();
    bench.wait_for_cursor(&host, stream.last_seq, Duration::from_secs(60));

    let check = |topic: &str, wanted: &dyn Fn(&Summary) -> bool| {
        let expected: Vec<Summary> = stream.expected.iter().filter(|event| wanted(event)).cloned().collect();
        assert!(!expected.is_empty(), "{topic}: the capture has no matching event");
        let records = consume(&bench.broker.address, topic, expected.len(), Duration::from_secs(30), Duration::from_secs(1));
        let actual: Vec<Summary> = values(&records)
            .iter()
            .map(|value| from_standard(value.pointer("/data/data").unwrap_or(value)).unwrap())
            .collect();
        if let Err(report) = compare(&expected, &actual) {
            panic!("{topic}: {report}");
        }
    };
    check("likes", &|event| event.collection == "app.bsky.feed.like");
    check("bsky", &|event| event.collection.starts_with("app.bsky."));
    check("lifecycle", &|event| event.kind == "identity" || event.kind == "account");
    check("one", &|event| event.did == some_did);

    let metrics = bench.metrics();
    let filtered = metric_value(&metrics, "atkafka_tenant_filtered{tenant=\"lifecycle\"}").unwrap();
    assert_eq!(filtered, (stream.expected.len() - 2) as f64);
    assert!(host.terminate(Duration::from_secs(30)).success());
    let _ = std::fs::remove_dir_all(directory);
}

#[test]
fn halt_policy_stops_the_host_before_the_failed_event() {
    let Some(stream) = capture_stream(0) else { return };
    let directory = std::env::temp_dir().join(format!("atkafka-halt-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let mut config = String::from("[[tenant]]\nname = \"good\"\nformatter = \"standard\"\ntopic = \"good\"\n\n");
    config += &hostile_tenant("strict", "trap", "on_error = \"halt\"\nfilter = { kinds = [\"identity\"] }");
    let args = config_args(&directory, &config);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let bench = Bench::new(ReplayOptions { frames: stream.frames.clone(), ..ReplayOptions::default() }, &arg_refs);
    let mut host = bench.start_host();
    let status = host.wait_for_exit(Duration::from_secs(60)).unwrap_or_else(|| panic!("still running:\n{}", host.log()));
    assert!(!status.success(), "halt must exit with a failure");
    let log = host.log();
    assert!(log.contains("tenant `strict`"), "the log names the tenant:\n{log}");
    assert!(log.contains("halt"), "the log names the policy:\n{log}");

    // The identity event is the second-to-last frame: the cursor stops before it.
    let identity_seq = stream.last_seq - 1;
    let stored = bench.stored_cursor().expect("the cursor of the frames before it is stored");
    assert!(stored < identity_seq, "cursor {stored} passed the failed event {identity_seq}");
    let _ = std::fs::remove_dir_all(directory);
}

#[test]
fn tenant_batch_trap_fails_only_its_event() {
    let Some(stream) = capture_stream(0) else { return };
    let directory = std::env::temp_dir().join(format!("atkafka-batch-trap-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let config = hostile_tenant(
        "deletes",
        "trap-on-delete",
        "on_error = \"dead-letter\"\ndead_letter_topic = \"deletes-dead\"\nquarantine_after_failures = 0",
    );
    let args = config_args(&directory, &config);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let bench = Bench::new(ReplayOptions { frames: stream.frames.clone(), ..ReplayOptions::default() }, &arg_refs);
    let mut host = bench.start_host();
    bench.wait_for_cursor(&host, stream.last_seq, Duration::from_secs(60));

    // Every event but the deletes is delivered, in the standard shape.
    let (deletes, others): (Vec<Summary>, Vec<Summary>) = stream.expected.iter().cloned().partition(|event| event.kind == "delete");
    assert!(!deletes.is_empty(), "the capture has deletes");
    let delivered = consume(&bench.broker.address, "deletes", others.len(), Duration::from_secs(30), Duration::from_secs(1));
    let actual: Vec<Summary> = values(&delivered).iter().map(|value| from_standard(value).unwrap()).collect();
    if let Err(report) = compare(&others, &actual) {
        panic!("events other than deletes: {report}");
    }

    // Each delete trapped on its own and went to the dead-letter topic.
    let dead = consume(&bench.broker.address, "deletes-dead", deletes.len(), Duration::from_secs(30), Duration::from_secs(1));
    let dead_summaries: Vec<Summary> = values(&dead).iter().map(|value| from_standard(value).unwrap()).collect();
    if let Err(report) = compare(&deletes, &dead_summaries) {
        panic!("dead letters: {report}");
    }
    for record in &dead {
        let kind = record.headers.iter().find(|(key, _)| key == "atkafka-error-kind").map(|(_, value)| value.as_slice());
        assert_eq!(kind, Some(b"trap".as_slice()));
    }

    let metrics = bench.metrics();
    let value = |sample: &str| metric_value(&metrics, sample).unwrap_or_else(|| panic!("{sample} missing"));
    assert_eq!(value("atkafka_formatter_errors{kind=\"trap\",tenant=\"deletes\"}"), deletes.len() as f64);
    assert_eq!(value("atkafka_tenant_messages{tenant=\"deletes\"}"), others.len() as f64);
    assert!(value("atkafka_formatter_batch_fallbacks{tenant=\"deletes\"}") >= 1.0, "a batch call with a delete trapped");
    assert!(host.terminate(Duration::from_secs(30)).success());
    let _ = std::fs::remove_dir_all(directory);
}

#[test]
fn component_with_unknown_import_is_rejected_naming_it() {
    let output = Command::new(binary())
        .args(["--bootstrap-servers", "127.0.0.1:1", "--output-topic", "t", "--metrics-listen-address", "127.0.0.1:0"])
        .arg("--formatter")
        .arg(built_guest("atkafka_formatter_hostile_import"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("example:hostile/missing"), "the error names the import:\n{stderr}");
}

#[test]
fn config_conflicting_with_single_tenant_flags_is_rejected() {
    let output = Command::new(binary())
        .args(["--bootstrap-servers", "127.0.0.1:1", "--config", "tenants.toml", "--output-topic", "t"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--config"), "{stderr}");
    assert!(stderr.contains("--output-topic"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn dead_letter_policy_without_topic_is_rejected_at_start() {
    let directory = std::env::temp_dir().join(format!("atkafka-badconfig-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let path = directory.join("tenants.toml");
    std::fs::write(&path, "[[tenant]]\nname = \"a\"\nformatter = \"standard\"\ntopic = \"t\"\non_error = \"dead-letter\"\n").unwrap();
    let output = Command::new(binary()).args(["--bootstrap-servers", "127.0.0.1:1", "--config"]).arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("dead_letter_topic"), "{stderr}");
    assert!(stderr.contains("tenant `a`"), "{stderr}");
    let _ = std::fs::remove_dir_all(directory);
}

//! The example formatter, written in Rust, JavaScript and Python and built from source by
//! `make examples`, run by the host on the real capture: all three must produce exactly the
//! messages the example promises. A Python guest, which leaks memory on every call, must format a
//! million events under a 64 MiB cap because the host recycles its instance in time.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use atkafka_integration_tests::consume::consume;
use atkafka_integration_tests::fixture_or_skip;
use atkafka_integration_tests::fixtures::built_example;
use atkafka_integration_tests::host::{binary, metric_value};
use atkafka_integration_tests::replay::ReplayOptions;
use atkafka_integration_tests::scenario::{capture_stream, Bench};
use serde_json::{json, Value};

const LANGUAGES: [&str; 3] = ["rust", "js", "python"];

#[test]
fn examples_in_three_languages_produce_the_same_posts() {
    let Some(stream) = capture_stream(0) else { return };
    // What the example promises: one message per created or updated post.
    let expected: BTreeSet<String> = stream
        .expected
        .iter()
        .filter(|event| event.collection == "app.bsky.feed.post" && (event.kind == "create" || event.kind == "update"))
        .map(|event| {
            let record = event.record.as_ref().unwrap();
            let langs = record.get("langs").cloned().filter(Value::is_array).unwrap_or(json!([]));
            json!({"did": event.did, "rkey": event.rkey, "text": record["text"], "langs": langs}).to_string()
        })
        .collect();
    assert!(expected.len() > 10, "the capture has posts");

    let directory = std::env::temp_dir().join(format!("atkafka-examples-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let mut config = String::new();
    for language in LANGUAGES {
        config += &format!(
            "[[tenant]]\nname = \"{language}\"\nformatter = \"{}\"\ntopic = \"posts-{language}\"\n\n",
            built_example(&format!("posts-{language}")).display()
        );
    }
    let path = directory.join("tenants.toml");
    std::fs::write(&path, config).unwrap();
    let path = path.display().to_string();
    let bench = Bench::new(ReplayOptions { frames: stream.frames.clone(), ..ReplayOptions::default() }, &["--config", &path]);
    let mut host = bench.start_host();
    bench.wait_for_cursor(&host, stream.last_seq, Duration::from_secs(180));

    let metrics = bench.metrics();
    for language in LANGUAGES {
        let topic = format!("posts-{language}");
        let records = consume(&bench.broker.address, &topic, expected.len(), Duration::from_secs(30), Duration::from_secs(1));
        let actual: Vec<String> = records
            .iter()
            .map(|record| {
                let value: Value = serde_json::from_slice(&record.value).unwrap();
                assert_eq!(record.key.as_deref(), value["did"].as_str().map(str::as_bytes), "{language}: key is the DID");
                value.to_string()
            })
            .collect();
        assert_eq!(actual.len(), expected.len(), "{language}: one message per post");
        let actual: BTreeSet<String> = actual.into_iter().collect();
        assert_eq!(actual, expected, "{language}: messages differ");
        let errors = metric_value(&metrics, &format!("atkafka_formatter_errors{{kind=\"error\",tenant=\"{language}\"}}"));
        assert_eq!(errors, Some(0.0), "{language}: formatter errors");
    }
    assert!(host.terminate(Duration::from_secs(30)).success());
    let _ = std::fs::remove_dir_all(directory);
}

#[test]
fn leaking_python_guest_formats_a_million_events_under_64_mib() {
    let capture = fixture_or_skip!("relay-capture/frames.bin.zst");
    // 152 events a round: 6580 rounds make 1,000,160 calls.
    let output = Command::new(binary())
        .args(["format", "--quiet", "--repeat", "6580", "--formatter-memory-mib", "64", "--formatter"])
        .arg(built_example("posts-python"))
        .arg("--capture")
        .arg(&capture)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    println!("{}", stderr.trim());
    assert!(stderr.contains("152 events x 6580 rounds"), "{stderr}");
    assert!(stderr.contains(" 0 failed"), "{stderr}");
    let recycled: u64 = stderr
        .trim()
        .split("; ")
        .find_map(|part| part.strip_prefix("instances recycled: "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no recycle count in: {stderr}"));
    assert!(recycled > 0, "the leaking guest was never recycled: {stderr}");
}

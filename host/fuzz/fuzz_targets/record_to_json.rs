//! Any bytes as a record block: conversion must return an error or valid JSON, never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(json) = atkafka_host::firehose::record::record_to_json(data) {
        assert!(json.starts_with('{') && json.ends_with('}'), "a record renders as a JSON object: {json}");
    }
});

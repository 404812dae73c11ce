//! Any bytes as a firehose frame: decoding must return, never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let decoded = atkafka_host::firehose::decode::decode(data);
    // Every event must render in the standard shape as well.
    let mut out = Vec::new();
    for event in &decoded.events {
        out.clear();
        atkafka_host::standard_shape::write_standard(&mut out, event);
    }
});

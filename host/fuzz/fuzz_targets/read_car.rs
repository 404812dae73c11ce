//! Any bytes as a commit's CAR: reading the blocks and checking each against its CID must return,
//! never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(blocks) = atkafka_host::firehose::car::read_blocks(data) {
        for (cid, block) in &blocks {
            let _ = atkafka_host::firehose::car::check_block(cid, block);
        }
    }
});

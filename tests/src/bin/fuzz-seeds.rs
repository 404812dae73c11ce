//! Writes seed inputs for the fuzz targets into the folder given as the only argument: the frames
//! of the relay capture (when the fixtures are present) and generated commits, the record blocks
//! and the CAR files inside them.

use std::path::PathBuf;

use atkafka_integration_tests::fixtures::{fixtures_dir, read_capture};
use atkafka_integration_tests::synthetic::{realistic_commit, SplitMix};

fn main() -> anyhow::Result<()> {
    let corpus = PathBuf::from(std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: fuzz-seeds FOLDER"))?);
    let mut frames = Vec::new();
    let capture = fixtures_dir().join("relay-capture/frames.bin.zst");
    if capture.exists() {
        frames.extend(read_capture(&capture)?);
    }
    let mut random = SplitMix(7);
    frames.extend((0..200).map(|seq| realistic_commit(seq, 100, &mut random)));

    for (index, frame) in frames.iter().enumerate() {
        std::fs::write(corpus.join("decode_frame").join(format!("frame-{index}")), frame)?;
        let mut rest = frame.as_slice();
        let _header: ciborium::Value = ciborium::de::from_reader(&mut rest)?;
        let body: ciborium::Value = ciborium::de::from_reader(&mut rest)?;
        let Some(blocks) = body.as_map().and_then(|entries| {
            entries.iter().find(|(key, _)| key.as_text() == Some("blocks")).and_then(|(_, value)| value.as_bytes())
        }) else {
            continue;
        };
        std::fs::write(corpus.join("read_car").join(format!("car-{index}")), blocks)?;
        for (block_index, (_, block)) in atkafka_host::firehose::car::read_blocks(blocks)?.iter().enumerate().take(3) {
            std::fs::write(corpus.join("record_to_json").join(format!("block-{index}-{block_index}")), block)?;
        }
    }
    println!("wrote seeds for {} frames into {}", frames.len(), corpus.display());
    Ok(())
}

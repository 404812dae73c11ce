//! Reading the blocks of a commit's CAR file and checking a block against its CID.

use cid::Cid;
use futures::FutureExt;
use sha2::{Digest, Sha256};

/// The multihash code of SHA-256, the only hash atproto repositories use.
const SHA2_256: u64 = 0x12;

/// Why a CAR file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CarError {
    #[error("invalid CAR: {0}")]
    Invalid(String),
}

/// Reads every block of an in-memory CAR file, in file order.
pub fn read_blocks(car: &[u8]) -> Result<Vec<(Cid, Vec<u8>)>, CarError> {
    // iroh-car's reader is async, but an in-memory slice is always ready, so the future completes
    // on its first poll; `now_or_never` returning `None` would mean a reader that waits, which a
    // slice never does.
    let read = async {
        let mut reader = iroh_car::CarReader::new(car).await?;
        let mut blocks = Vec::new();
        while let Some(block) = reader.next_block().await? {
            blocks.push(block);
        }
        Ok::<_, iroh_car::Error>(blocks)
    };
    match read.now_or_never() {
        Some(result) => result.map_err(|error| CarError::Invalid(error.to_string())),
        None => Err(CarError::Invalid("the CAR reader did not complete on in-memory input".to_owned())),
    }
}

/// How a block compares with the CID that names it.
#[derive(Debug, PartialEq, Eq)]
pub enum BlockCheck {
    Matches,
    Mismatch,
    UnsupportedHash(u64),
}

/// Checks that `block` hashes to `cid`.
pub fn check_block(cid: &Cid, block: &[u8]) -> BlockCheck {
    let hash = cid.hash();
    if hash.code() != SHA2_256 {
        return BlockCheck::UnsupportedHash(hash.code());
    }
    if hash.digest() == Sha256::digest(block).as_slice() {
        BlockCheck::Matches
    } else {
        BlockCheck::Mismatch
    }
}

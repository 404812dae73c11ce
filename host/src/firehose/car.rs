//! Reading the blocks of a commit's CAR file and checking a block against its CID.
//!
//! The CAR is read in place: each block comes back as a slice of the frame, so a commit costs no
//! copy of its blocks. iroh-car's reader copies every block into its own buffer, although most
//! blocks of a commit (the commit itself, MST nodes) are never looked at. The integration tests
//! check that both readers return the same blocks for real repositories and firehose commits.
//!
//! Guarantees: every block of a CAR that reads without error is named by a valid CID and lies
//! inside the input. Nothing here panics on any input.

use sha2::{Digest, Sha256};

use super::cbor::{CborError, Cursor};
use super::cid_ref::CidRef;

/// The multihash code of SHA-256, the only hash atproto repositories use.
const SHA2_256: u64 = 0x12;

/// Nesting limit for the CAR header, a map of a version and a list of roots.
const HEADER_RECURSION_LIMIT: usize = 8;

/// Why a CAR file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CarError {
    #[error("invalid CAR: {0}")]
    Invalid(String),
}

fn invalid(reason: impl Into<String>) -> CarError {
    CarError::Invalid(reason.into())
}

/// Reads every block of an in-memory CAR file (version 1), in file order, as slices of `car`.
pub fn read_blocks(car: &[u8]) -> Result<Vec<(CidRef<'_>, &[u8])>, CarError> {
    let (header, mut rest) = split_section(car)?.ok_or_else(|| invalid("no header"))?;
    check_header(header)?;
    // A commit's CAR holds the commit block, a few MST nodes and the records: rarely more than 8.
    let mut blocks = Vec::with_capacity(8);
    while let Some((section, after)) = split_section(rest)? {
        rest = after;
        let (cid, block) = CidRef::read(section).map_err(|error| invalid(format!("a block's CID: {error}")))?;
        blocks.push((cid, block));
    }
    Ok(blocks)
}

/// Splits a varint-length-prefixed section off `input`; `None` at the end of the input.
fn split_section(input: &[u8]) -> Result<Option<(&[u8], &[u8])>, CarError> {
    if input.is_empty() {
        return Ok(None);
    }
    let (length, rest) =
        unsigned_varint::decode::usize(input).map_err(|error| invalid(format!("a section length: {error}")))?;
    if length > rest.len() {
        return Err(invalid(format!("a section of {length} bytes with {} bytes left", rest.len())));
    }
    Ok(Some(rest.split_at(length)))
}

/// Checks the header: a DAG-CBOR map with `version` 1 and a non-empty list of root CIDs.
fn check_header(header: &[u8]) -> Result<(), CarError> {
    let header_error = |error: CborError| invalid(format!("the header: {error}"));
    let mut cursor = Cursor::new(header);
    let (mut version, mut roots) = (None, None);
    let entries = cursor.map().map_err(header_error)?;
    for _ in 0..entries {
        match cursor.text().map_err(header_error)? {
            "version" => version = Some(cursor.integer().map_err(header_error)?),
            "roots" => {
                let count = cursor.array().map_err(header_error)?;
                for _ in 0..count {
                    cursor.cid_link().map_err(header_error)?;
                }
                roots = Some(count);
            }
            _ => cursor.skip(HEADER_RECURSION_LIMIT).map_err(header_error)?,
        }
    }
    if cursor.remaining() > 0 {
        return Err(invalid(format!("{} bytes follow the header", cursor.remaining())));
    }
    match (version, roots) {
        (Some(1), Some(count)) if count > 0 => Ok(()),
        (Some(1), Some(_)) => Err(invalid("no roots")),
        (Some(1), None) => Err(invalid("the header has no `roots`")),
        (Some(version), _) => Err(invalid(format!("version {version}; only version 1 is supported"))),
        (None, _) => Err(invalid("the header has no `version`")),
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
pub fn check_block(cid: &CidRef<'_>, block: &[u8]) -> BlockCheck {
    if cid.hash_code() != SHA2_256 {
        return BlockCheck::UnsupportedHash(cid.hash_code());
    }
    if cid.digest() == Sha256::digest(block).as_slice() {
        BlockCheck::Matches
    } else {
        BlockCheck::Mismatch
    }
}

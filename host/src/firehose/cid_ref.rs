//! CIDs read in place from CAR sections and DAG-CBOR links, and their string form.
//!
//! What counts as a CID is what the `cid` crate reads; this module reads the same bytes without
//! copying them. `cid::Cid` reads through `io::Read` one byte at a time, copies each digest into a
//! 64-byte array, and its `Display` allocates twice. Together that was 18 % of the time spent
//! decoding a commit. A [`CidRef`] is the slice that encodes the CID, compared byte for byte, and
//! its string is written without allocating. The tests compare both readers on real CIDs, on
//! every truncation and on arbitrary bytes.
//!
//! Guarantees: [`CidRef::read`] accepts exactly the inputs `cid::Cid::read_bytes` accepts, reads
//! the same number of bytes, and the string equals `cid::Cid`'s. Nothing here panics on any input.

use std::fmt;
use std::sync::LazyLock;

use data_encoding::{Encoding, Specification};

/// The multihash code of SHA-256. A CIDv0 is a SHA-256 multihash alone.
const SHA2_256: u64 = 0x12;
/// The largest digest `cid::Cid` holds, in bytes.
const MAX_DIGEST_BYTES: u64 = 64;
/// The longest CID, in bytes: four varints of at most 10 bytes, then the digest.
const MAX_CID_BYTES: usize = 40 + MAX_DIGEST_BYTES as usize;

/// Multibase's `base32` (lower case, no padding), the string form of a CIDv1 after its `b`
/// prefix.
static BASE32_LOWER: LazyLock<Encoding> = LazyLock::new(|| {
    let mut specification = Specification::new();
    specification.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    specification.encoding().expect("the base32 alphabet is a valid specification")
});

/// A CID, as the bytes that encode it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CidRef<'a> {
    /// Version, codec, hash code, digest size and digest. For a CIDv0, the multihash alone.
    bytes: &'a [u8],
    hash_code: u64,
    /// The offset of the digest in `bytes`, which ends with it.
    digest_start: usize,
}

fn varint<'a>(input: &'a [u8], field: &str) -> Result<(u64, &'a [u8]), String> {
    unsigned_varint::decode::u64(input).map_err(|error| format!("invalid CID {field}: {error}"))
}

impl<'a> CidRef<'a> {
    /// Reads a CID from the start of `input`, and returns it with the bytes after it.
    pub fn read(input: &'a [u8]) -> Result<(CidRef<'a>, &'a [u8]), String> {
        let (version, rest) = varint(input, "version")?;
        let (codec, rest) = varint(rest, "codec")?;
        // `rest` starts at the digest, of `size` bytes.
        let (hash_code, rest, size) = if (version, codec) == (SHA2_256, 0x20) {
            // A CIDv0: the SHA-256 multihash, whose code and size were read as version and codec.
            (SHA2_256, rest, 32)
        } else {
            match version {
                1 => {}
                0 => return Err("version 0 is only valid as a bare SHA-256 multihash".to_owned()),
                other => return Err(format!("unknown CID version {other}")),
            }
            let (hash_code, rest) = varint(rest, "multihash code")?;
            let (size, rest) = varint(rest, "digest size")?;
            if size > MAX_DIGEST_BYTES {
                return Err(format!("a digest of {size} bytes (at most {MAX_DIGEST_BYTES})"));
            }
            (hash_code, rest, size as usize)
        };
        if rest.len() < size {
            return Err(format!("a digest of {size} bytes with {} bytes left", rest.len()));
        }
        let digest_start = input.len() - rest.len();
        let (bytes, after) = input.split_at(digest_start + size);
        Ok((CidRef { bytes, hash_code, digest_start }, after))
    }

    /// Reads a CID that fills `input` up to optional trailing bytes, which are ignored as
    /// `cid::Cid::try_from` ignores them.
    pub fn from_bytes(input: &'a [u8]) -> Result<CidRef<'a>, String> {
        Self::read(input).map(|(cid, _)| cid)
    }

    /// Returns the multihash code of the digest.
    pub fn hash_code(&self) -> u64 {
        self.hash_code
    }

    pub fn digest(&self) -> &'a [u8] {
        &self.bytes[self.digest_start..]
    }

    fn is_v0(&self) -> bool {
        self.bytes.first() == Some(&(SHA2_256 as u8))
    }

    /// Appends the CID's string form to `out`: multibase base32 for a CIDv1, base58btc for a CIDv0.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        if self.is_v0() {
            out.extend_from_slice(self.to_string().as_bytes());
            return;
        }
        out.push(b'b');
        let start = out.len();
        out.resize(start + BASE32_LOWER.encode_len(self.bytes.len()), 0);
        BASE32_LOWER.encode_mut(self.bytes, &mut out[start..]);
    }
}

impl CidRef<'_> {
    /// Returns the CID's string form, as [`CidRef::write_to`] writes it. Each record operation's
    /// CID goes through here, which spares it the formatter and the UTF-8 check of `to_string`.
    pub fn to_cid_string(&self) -> String {
        if self.is_v0() {
            return self.to_string();
        }
        let mut text = String::with_capacity(1 + BASE32_LOWER.encode_len(self.bytes.len()));
        text.push('b');
        BASE32_LOWER.encode_append(self.bytes, &mut text);
        text
    }
}

impl fmt::Display for CidRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_v0() {
            // CIDv0 is rare in atproto data, so the crate's own base58 encoder writes it.
            return match cid::Cid::try_from(self.bytes) {
                Ok(cid) => write!(f, "{cid}"),
                Err(_) => Err(fmt::Error),
            };
        }
        let mut buffer = [0u8; 1 + MAX_CID_BYTES * 8 / 5 + 1];
        buffer[0] = b'b';
        let length = BASE32_LOWER.encode_len(self.bytes.len());
        BASE32_LOWER.encode_mut(self.bytes, &mut buffer[1..=length]);
        f.write_str(std::str::from_utf8(&buffer[..=length]).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for CidRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CidRef({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a CIDv1 of DAG-CBOR with a SHA-256 digest, as atproto records use.
    fn record_cid() -> Vec<u8> {
        let mut bytes = vec![0x01, 0x71, 0x12, 0x20];
        bytes.extend((0..32).map(|index| index * 7));
        bytes
    }

    /// Checks that `CidRef` and `cid::Cid` agree on `input`: both fail, or both read the same
    /// bytes and write the same string.
    fn assert_agrees(input: &[u8]) {
        let mut theirs_input = input;
        let theirs = cid::Cid::read_bytes(&mut theirs_input);
        match (CidRef::read(input), theirs) {
            (Ok((ours, rest)), Ok(theirs)) => {
                assert_eq!(rest.len(), theirs_input.len(), "bytes left after {input:02x?}");
                assert_eq!(ours.to_string(), theirs.to_string(), "string of {input:02x?}");
                assert_eq!(ours.to_cid_string(), theirs.to_string(), "owned string of {input:02x?}");
                let mut written = b"prefix ".to_vec();
                ours.write_to(&mut written);
                assert_eq!(written, format!("prefix {theirs}").into_bytes());
                assert_eq!(ours.hash_code(), theirs.hash().code());
                assert_eq!(ours.digest(), theirs.hash().digest());
            }
            (Err(_), Err(_)) => {}
            (ours, theirs) => panic!("on {input:02x?}: ours {ours:?}, the cid crate's {theirs:?}"),
        }
    }

    #[test]
    fn record_cid_matches_cid_crate() {
        let mut input = record_cid();
        input.extend_from_slice(b"after");
        let (cid, rest) = CidRef::read(&input).unwrap();
        assert_eq!(rest, b"after");
        assert!(cid.to_string().starts_with("bafyrei"), "{cid}");
        assert_agrees(&input);
    }

    #[test]
    fn cidv0_and_other_codecs_match() {
        let digest: Vec<u8> = (0..32).collect();
        let v0 = [&[0x12, 0x20][..], &digest].concat();
        assert_agrees(&v0);
        assert!(CidRef::from_bytes(&v0).unwrap().to_string().starts_with("Qm"));
        // Raw codec, identity hash of 5 bytes, and a blake2b-256 code that needs a 2-byte varint.
        assert_agrees(&[0x01, 0x55, 0x00, 0x05, 1, 2, 3, 4, 5]);
        assert_agrees(&[&[0x01, 0x71, 0xa0, 0xe4, 0x02, 0x20][..], &digest].concat());
        // A digest of 64 bytes is the largest.
        assert_agrees(&[&[0x01, 0x71, 0x13, 0x40][..], &[9; 64]].concat());
        assert!(CidRef::read(&[&[0x01, 0x71, 0x13, 0x41][..], &[9; 65]].concat()).is_err());
    }

    #[test]
    fn truncations_and_bad_versions_fail() {
        let cid = record_cid();
        for end in 0..cid.len() {
            assert!(CidRef::read(&cid[..end]).is_err(), "a CID cut at {end} bytes");
            assert_agrees(&cid[..end]);
        }
        for version in [0x00, 0x02, 0x80] {
            let mut bad = cid.clone();
            bad[0] = version;
            assert_agrees(&bad);
        }
        // A version varint that is not minimal.
        assert_agrees(&[&[0x81, 0x00][..], &cid[1..]].concat());
    }

    #[test]
    fn arbitrary_bytes_match_cid_crate() {
        // A fixed pseudo-random sequence, mostly near the shape of a real CID so that many
        // inputs get past the varints.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut input = record_cid();
            let flips = next() % 4;
            for _ in 0..flips {
                let at = (next() % input.len() as u64) as usize;
                input[at] = next() as u8;
            }
            input.truncate((next() % (input.len() as u64 + 8)) as usize);
            assert_agrees(&input);
        }
        for _ in 0..20_000 {
            let input: Vec<u8> = (0..next() % 48).map(|_| next() as u8).collect();
            assert_agrees(&input);
        }
    }
}

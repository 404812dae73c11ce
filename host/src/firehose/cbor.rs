//! A cursor over one DAG-CBOR buffer: item headers are read with ciborium-ll, strings and byte
//! strings come back as slices of the buffer.
//!
//! ciborium's serde decoder builds owned values only, so every string of a frame and the whole
//! CAR of a commit were copied (the CAR grown chunk by chunk) before anything looked at them.
//! Frames and records are decoded through this cursor instead, which borrows.
//!
//! Guarantees: every read is bounds-checked against the buffer, and a length the input announces
//! is checked against the bytes left before anything is sized by it, so no input can panic the
//! cursor or make it allocate. Indefinite lengths are rejected, because DAG-CBOR forbids them.

use ciborium_ll::{Decoder, Header};
use smallvec::{smallvec, SmallVec};

use super::cid_ref::CidRef;

/// An error reading a buffer as DAG-CBOR. Offsets count from the start of the buffer.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    #[error("the input ends inside an item at byte {0}")]
    Truncated(usize),
    #[error("malformed item at byte {0}")]
    Malformed(usize),
    #[error("invalid UTF-8 in a text string at byte {0}")]
    InvalidUtf8(usize),
    #[error("expected {expected} at byte {at}, found {found}")]
    Unexpected { at: usize, expected: &'static str, found: String },
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
}

/// A read position in one buffer.
pub struct Cursor<'a> {
    data: &'a [u8],
    position: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data, position: 0 }
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.position
    }

    /// Reads the next item header. For a string or byte string, the content follows and must be
    /// read with [`Cursor::take`].
    ///
    /// Integers, strings, containers, tags, `false`, `true` and `null` are read here directly,
    /// because ciborium-ll's generic reader took a third of the decode time in a profile. Floats,
    /// other simple values, breaks and malformed input go through ciborium-ll.
    pub fn pull(&mut self) -> Result<Header, CborError> {
        if let Some(header) = self.pull_common() {
            return Ok(header);
        }
        let mut decoder = Decoder::from(&self.data[self.position..]);
        match decoder.pull() {
            Ok(header) => {
                self.position += decoder.offset();
                Ok(header)
            }
            Err(ciborium_ll::Error::Io(_)) => Err(CborError::Truncated(self.position)),
            Err(ciborium_ll::Error::Syntax(offset)) => Err(CborError::Malformed(self.position + offset)),
        }
    }

    /// Reads a header of major type 0 to 6 with a definite argument, or `false`, `true` or
    /// `null`. Returns `None` without reading for anything else.
    fn pull_common(&mut self) -> Option<Header> {
        let initial = *self.data.get(self.position)?;
        let (major, minor) = (initial >> 5, initial & 0x1f);
        if major == 7 {
            return match initial {
                0xf4..=0xf6 => {
                    self.position += 1;
                    Some(Header::Simple(minor))
                }
                _ => None,
            };
        }
        let width = match minor {
            0..=23 => 0,
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => return None,
        };
        let argument = if width == 0 {
            u64::from(minor)
        } else {
            let bytes = self.data.get(self.position + 1..self.position + 1 + width)?;
            bytes.iter().fold(0u64, |value, byte| value << 8 | u64::from(*byte))
        };
        let length = || usize::try_from(argument).ok();
        let header = match major {
            0 => Header::Positive(argument),
            1 => Header::Negative(argument),
            2 => Header::Bytes(Some(length()?)),
            3 => Header::Text(Some(length()?)),
            4 => Header::Array(Some(length()?)),
            5 => Header::Map(Some(length()?)),
            _ => Header::Tag(argument),
        };
        self.position += 1 + width;
        Some(header)
    }

    /// Returns the next `length` bytes.
    pub fn take(&mut self, length: usize) -> Result<&'a [u8], CborError> {
        if length > self.remaining() {
            return Err(CborError::Truncated(self.position));
        }
        let bytes = &self.data[self.position..self.position + length];
        self.position += length;
        Ok(bytes)
    }

    /// Returns the content of a text string whose header announced `length` bytes.
    pub fn take_text(&mut self, length: usize) -> Result<&'a str, CborError> {
        let at = self.position;
        let bytes = self.take(length)?;
        // Most text strings are short ASCII: map keys, NSIDs, timestamps. simdutf8 passes strings
        // under 64 bytes to std's check, an out-of-line call that took about 8 % of decoding
        // time, so ASCII is recognized here first.
        if bytes.is_ascii() {
            // SAFETY: ASCII is valid UTF-8.
            return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        // Every other text string of a frame and of its records is checked here. simdutf8 accepts
        // exactly what `std::str::from_utf8` accepts, and uses SIMD instructions where the CPU has
        // them.
        simdutf8::basic::from_utf8(bytes).map_err(|_| CborError::InvalidUtf8(at))
    }

    fn unexpected(&self, at: usize, expected: &'static str, found: &Header) -> CborError {
        CborError::Unexpected { at, expected, found: describe(found) }
    }

    /// Reads a text string.
    pub fn text(&mut self) -> Result<&'a str, CborError> {
        let at = self.position;
        match self.pull()? {
            Header::Text(Some(length)) => self.take_text(length),
            other => Err(self.unexpected(at, "a text string", &other)),
        }
    }

    /// Reads a byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], CborError> {
        let at = self.position;
        match self.pull()? {
            Header::Bytes(Some(length)) => self.take(length),
            other => Err(self.unexpected(at, "a byte string", &other)),
        }
    }

    /// Reads an integer in the signed 64-bit range.
    pub fn integer(&mut self) -> Result<i64, CborError> {
        let at = self.position;
        let header = self.pull()?;
        let value = match header {
            Header::Positive(value) => i64::try_from(value).ok(),
            Header::Negative(value) => i64::try_from(value).ok().map(|value| -1 - value),
            _ => None,
        };
        value.ok_or_else(|| self.unexpected(at, "a signed 64-bit integer", &header))
    }

    /// Reads a boolean.
    pub fn boolean(&mut self) -> Result<bool, CborError> {
        let at = self.position;
        match self.pull()? {
            Header::Simple(ciborium_ll::simple::FALSE) => Ok(false),
            Header::Simple(ciborium_ll::simple::TRUE) => Ok(true),
            other => Err(self.unexpected(at, "a boolean", &other)),
        }
    }

    /// Consumes a `null` if one comes next, and returns whether it did.
    pub fn null(&mut self) -> bool {
        if self.data.get(self.position) == Some(&0xf6) {
            self.position += 1;
            true
        } else {
            false
        }
    }

    /// Reads the header of a map of definite length and returns its number of entries.
    pub fn map(&mut self) -> Result<usize, CborError> {
        let at = self.position;
        match self.pull()? {
            Header::Map(Some(entries)) => Ok(entries),
            other => Err(self.unexpected(at, "a map", &other)),
        }
    }

    /// Reads the header of an array of definite length and returns its number of items.
    pub fn array(&mut self) -> Result<usize, CborError> {
        let at = self.position;
        match self.pull()? {
            Header::Array(Some(items)) => Ok(items),
            other => Err(self.unexpected(at, "an array", &other)),
        }
    }

    /// Reads a CID link: tag 42 around a byte string holding 0x00 and the CID.
    pub fn cid_link(&mut self) -> Result<CidRef<'a>, CborError> {
        let at = self.position;
        match self.pull()? {
            Header::Tag(42) => {}
            other => return Err(self.unexpected(at, "a CID link (tag 42)", &other)),
        }
        let at = self.position;
        let bytes = self.bytes()?;
        parse_cid_link(bytes).map_err(|found| CborError::Unexpected { at, expected: "a CID link", found })
    }

    /// Skips one whole item, nested items included, at most `depth_limit` levels deep.
    pub fn skip(&mut self, depth_limit: usize) -> Result<(), CborError> {
        // Items still to read at each open level; the bottom entry is the item itself. Frames
        // nest a few levels, so the levels stay on the stack.
        let mut remaining: SmallVec<[usize; 8]> = smallvec![1];
        while let Some(top) = remaining.last_mut() {
            if *top == 0 {
                remaining.pop();
                continue;
            }
            *top -= 1;
            let at = self.position;
            let header = self.pull()?;
            let children = match header {
                Header::Bytes(Some(length)) | Header::Text(Some(length)) => {
                    self.take(length)?;
                    0
                }
                Header::Tag(_) => 1,
                Header::Array(Some(items)) => self.announced(items, 1)?,
                Header::Map(Some(entries)) => self.announced(entries, 2)?,
                Header::Bytes(None) | Header::Text(None) | Header::Array(None) | Header::Map(None) | Header::Break => {
                    return Err(self.unexpected(at, "an item of definite length", &header));
                }
                Header::Positive(_) | Header::Negative(_) | Header::Float(_) | Header::Simple(_) => 0,
            };
            if children > 0 {
                if remaining.len() > depth_limit {
                    return Err(CborError::TooDeep(depth_limit));
                }
                remaining.push(children);
            }
        }
        Ok(())
    }

    /// Returns how many items a container of `count` entries of `per_entry` items holds, rejecting
    /// a count the rest of the buffer cannot hold (every item takes at least one byte), so that a
    /// forged count neither overflows nor reserves memory.
    pub fn announced(&self, count: usize, per_entry: usize) -> Result<usize, CborError> {
        match count.checked_mul(per_entry) {
            Some(items) if items <= self.remaining() => Ok(items),
            _ => Err(CborError::Truncated(self.position)),
        }
    }
}

/// Parses the bytes inside a tag-42 CID link.
pub fn parse_cid_link(bytes: &[u8]) -> Result<CidRef<'_>, String> {
    match bytes.split_first() {
        Some((0, cid)) => CidRef::from_bytes(cid).map_err(|error| format!("invalid CID link: {error}")),
        Some((prefix, _)) => Err(format!("CID link starts with {prefix:#04x}, not the multibase identity prefix 0x00")),
        None => Err("empty CID link".to_owned()),
    }
}

/// Names an item by its header, for error messages.
fn describe(header: &Header) -> String {
    match header {
        Header::Positive(value) => format!("the integer {value}"),
        Header::Negative(value) => format!("the integer -1-{value}"),
        Header::Float(value) => format!("the float {value}"),
        Header::Simple(ciborium_ll::simple::FALSE | ciborium_ll::simple::TRUE) => "a boolean".to_owned(),
        Header::Simple(ciborium_ll::simple::NULL) => "null".to_owned(),
        Header::Simple(ciborium_ll::simple::UNDEFINED) => "undefined".to_owned(),
        Header::Simple(value) => format!("the simple value {value}"),
        Header::Break => "a break".to_owned(),
        Header::Tag(tag) => format!("tag {tag}"),
        Header::Bytes(Some(_)) => "a byte string".to_owned(),
        Header::Text(Some(_)) => "a text string".to_owned(),
        Header::Array(Some(_)) => "an array".to_owned(),
        Header::Map(Some(_)) => "a map".to_owned(),
        Header::Bytes(None) | Header::Text(None) | Header::Array(None) | Header::Map(None) => {
            "an item of indefinite length".to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_borrowed_from_the_buffer() {
        let buffer = [0x63, b'a', b'b', b'c', 0x42, 1, 2];
        let mut cursor = Cursor::new(&buffer);
        let text = cursor.text().unwrap();
        assert_eq!(text, "abc");
        assert!(std::ptr::eq(text.as_ptr(), buffer[1..].as_ptr()));
        assert_eq!(cursor.bytes().unwrap(), &[1, 2]);
        assert_eq!(cursor.remaining(), 0);
    }

    #[test]
    fn length_beyond_buffer_is_truncation() {
        assert_eq!(Cursor::new(&[0x65, b'a']).text(), Err(CborError::Truncated(1)));
        assert_eq!(Cursor::new(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).skip(8), Err(CborError::Truncated(9)));
    }

    #[test]
    fn out_of_range_integers_are_rejected() {
        assert_eq!(Cursor::new(&[0x3b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).integer(), Ok(i64::MIN));
        assert!(Cursor::new(&[0x1b, 0x80, 0, 0, 0, 0, 0, 0, 0]).integer().is_err());
        assert!(Cursor::new(&[0x3b, 0x80, 0, 0, 0, 0, 0, 0, 0]).integer().is_err());
    }

    #[test]
    fn skipping_stops_at_the_depth_limit() {
        let deep = [0x81; 10];
        assert_eq!(Cursor::new(&deep).skip(4), Err(CborError::TooDeep(4)));
        let mut shallow = vec![0x81, 0x81];
        shallow.push(0x01);
        let mut cursor = Cursor::new(&shallow);
        cursor.skip(4).unwrap();
        assert_eq!(cursor.remaining(), 0);
    }

    #[test]
    fn headers_read_directly_match_ciborium_ll() {
        // Every initial byte, with an argument of eight bytes after it.
        for initial in 0..=255u8 {
            let input = [initial, 0, 0, 0, 0, 0, 0, 1, 2];
            let mut cursor = Cursor::new(&input);
            let ours = cursor.pull().map(|header| (header, cursor.position()));
            let mut decoder = Decoder::from(&input[..]);
            let theirs = decoder.pull().map(|header| (header, decoder.offset()));
            match (ours, theirs) {
                (Ok(ours), Ok(theirs)) => assert_eq!(ours, theirs, "initial byte {initial:#04x}"),
                (Err(_), Err(_)) => {}
                (ours, theirs) => panic!("initial byte {initial:#04x}: {ours:?} against {theirs:?}"),
            }
        }
    }

    #[test]
    fn text_strings_accept_exactly_valid_utf8() {
        let samples: [&[u8]; 12] = [
            b"plain ascii",
            "é, 日本語 and 🦋".as_bytes(),
            &[0x80],
            &[0xc0, 0xaf],
            &[0xe0, 0x80, 0xaf],
            &[0xed, 0xa0, 0x80],
            &[0xf4, 0x90, 0x80, 0x80],
            &[0xf8, 0x88, 0x80, 0x80, 0x80],
            &[0xe6, 0x97],
            &[0xf0, 0x9f, 0xa6, 0x8b],
            &[0xff],
            &[0xef, 0xbf, 0xbf],
        ];
        for sample in samples {
            // Also deep inside a long string, where the SIMD path reads it.
            for padding in [0, 7, 64, 200] {
                let mut content = vec![b'a'; padding];
                content.extend_from_slice(sample);
                content.extend_from_slice(b"tail");
                let mut input = vec![0x79, (content.len() >> 8) as u8, content.len() as u8];
                input.extend_from_slice(&content);
                let ours = Cursor::new(&input).text().map(str::to_owned);
                let expected = std::str::from_utf8(&content).map(str::to_owned).map_err(|_| CborError::InvalidUtf8(3));
                assert_eq!(ours, expected, "sample {sample:x?} after {padding} bytes");
            }
        }
    }

    #[test]
    fn indefinite_lengths_are_rejected() {
        assert!(Cursor::new(&[0x9f, 0x01, 0xff]).skip(8).is_err());
        assert!(Cursor::new(&[0x7f, 0x61, b'a', 0xff]).text().is_err());
    }
}

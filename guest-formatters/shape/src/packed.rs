//! The byte layout of `format-packed` (see `wit/formatter.wit`): the host's encoding of a batch of
//! events and the guest's encoding of their results. Both have a writer and a reader here, so the
//! host and every guest built on this crate share one definition.
//!
//! Guarantees: the readers never read past their buffer and never panic. A buffer that does not
//! follow the layout (too short, a bad case or action byte, a string that is not UTF-8, bytes
//! left over) is a [`LayoutError`] naming the byte offset where reading stopped. Only
//! [`read_host_events`] takes strings unchecked, from a caller that vouches for them. The writers
//! produce exactly what the readers accept.

use crate::{Action, EventView};

/// The length written for an absent optional string or byte string.
const ABSENT: u32 = u32::MAX;

const CASE_COMMIT_OP: u8 = 0;
const CASE_ACCOUNT: u8 = 1;
const CASE_IDENTITY: u8 = 2;
const CASE_SYNC: u8 = 3;
const CASE_INFO: u8 = 4;

const RESULT_OK: u8 = 0;
const RESULT_ERROR: u8 = 1;

/// A buffer that does not follow the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutError {
    /// The byte offset where reading stopped.
    pub offset: usize,
    pub problem: &'static str,
}

impl std::fmt::Display for LayoutError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "malformed packed buffer at byte {}: {}", self.offset, self.problem)
    }
}

impl std::error::Error for LayoutError {}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_length(out: &mut Vec<u8>, length: usize) {
    let length = u32::try_from(length).ok().filter(|length| *length != ABSENT).expect("a packed field is under 4 GiB");
    put_u32(out, length);
}

fn put_bytes(out: &mut Vec<u8>, value: &[u8]) {
    put_length(out, value.len());
    out.extend_from_slice(value);
}

fn put_optional_bytes(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(value) => put_bytes(out, value),
        None => put_u32(out, ABSENT),
    }
}

fn put_str(out: &mut Vec<u8>, value: &str) {
    put_bytes(out, value.as_bytes());
}

fn put_optional_str(out: &mut Vec<u8>, value: Option<&str>) {
    put_optional_bytes(out, value.map(str::as_bytes));
}

/// Starts a packed batch of `count` events in `out`, which is cleared first.
pub fn begin_events(out: &mut Vec<u8>, count: usize) {
    out.clear();
    put_length(out, count);
}

/// Appends one event with its context to a batch started by [`begin_events`].
pub fn put_event(out: &mut Vec<u8>, event: &EventView<'_>, event_id: u64, received_at_us: u64) {
    out.extend_from_slice(&event_id.to_le_bytes());
    out.extend_from_slice(&received_at_us.to_le_bytes());
    match *event {
        EventView::Operation { did, seq, rev, time, action, collection, rkey, cid, record } => {
            out.push(CASE_COMMIT_OP);
            put_str(out, did);
            out.extend_from_slice(&seq.to_le_bytes());
            put_str(out, rev);
            put_str(out, time);
            out.push(match action {
                Action::Create => 0,
                Action::Update => 1,
                Action::Delete => 2,
            });
            put_str(out, collection);
            put_str(out, rkey);
            put_optional_str(out, cid);
            put_optional_str(out, record);
        }
        EventView::Account { did, seq, time, active, status } => {
            out.push(CASE_ACCOUNT);
            put_str(out, did);
            out.extend_from_slice(&seq.to_le_bytes());
            put_str(out, time);
            out.push(u8::from(active));
            put_optional_str(out, status);
        }
        EventView::Identity { did, seq, time, handle } => {
            out.push(CASE_IDENTITY);
            put_str(out, did);
            out.extend_from_slice(&seq.to_le_bytes());
            put_str(out, time);
            put_optional_str(out, handle);
        }
        EventView::Sync { did, seq, time, rev } => {
            out.push(CASE_SYNC);
            put_str(out, did);
            out.extend_from_slice(&seq.to_le_bytes());
            put_str(out, time);
            put_str(out, rev);
        }
        EventView::Info { name, message } => {
            out.push(CASE_INFO);
            put_str(out, name);
            put_optional_str(out, message);
        }
    }
}

/// A bounds-checked cursor over a packed buffer.
struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
    /// Whether the strings are known to be UTF-8 and are taken without a check. Only
    /// [`read_host_events`], whose caller vouches for it, sets this.
    utf8_known: bool,
}

impl<'a> Reader<'a> {
    fn error(&self, problem: &'static str) -> LayoutError {
        LayoutError { offset: self.offset, problem }
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], LayoutError> {
        let end = self.offset.checked_add(length).filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| self.error("the buffer ends inside a field"))?;
        let field = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(field)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], LayoutError> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    fn u8(&mut self) -> Result<u8, LayoutError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, LayoutError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, LayoutError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, LayoutError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn bool(&mut self) -> Result<bool, LayoutError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.error("a bool is neither 0 nor 1")),
        }
    }

    fn optional_bytes(&mut self) -> Result<Option<&'a [u8]>, LayoutError> {
        match self.u32()? {
            ABSENT => Ok(None),
            length => self.take(length as usize).map(Some),
        }
    }

    fn bytes(&mut self) -> Result<&'a [u8], LayoutError> {
        self.optional_bytes()?.ok_or_else(|| self.error("a required field is absent"))
    }

    fn optional_str(&mut self) -> Result<Option<&'a str>, LayoutError> {
        let start = self.offset;
        match self.optional_bytes()? {
            None => Ok(None),
            Some(bytes) if self.utf8_known => {
                debug_assert!(std::str::from_utf8(bytes).is_ok(), "a host string at offset {start} is not UTF-8");
                // SAFETY: `utf8_known` is set only by `read_host_events`, whose caller guarantees
                // that every string of the buffer is UTF-8.
                Ok(Some(unsafe { std::str::from_utf8_unchecked(bytes) }))
            }
            Some(bytes) => std::str::from_utf8(bytes)
                .map(Some)
                .map_err(|_| LayoutError { offset: start, problem: "a string is not UTF-8" }),
        }
    }

    fn str(&mut self) -> Result<&'a str, LayoutError> {
        self.optional_str()?.ok_or_else(|| self.error("a required field is absent"))
    }

    /// Reads a count and checks that the rest of the buffer could hold that many items of at
    /// least `item_bytes` each, so a bogus count cannot make a reader reserve memory for it.
    fn count(&mut self, item_bytes: usize) -> Result<usize, LayoutError> {
        let count = self.u32()? as usize;
        if count.saturating_mul(item_bytes) > self.bytes.len() - self.offset {
            return Err(self.error("a count exceeds what the rest of the buffer can hold"));
        }
        Ok(count)
    }

    fn finish(&self) -> Result<(), LayoutError> {
        if self.offset == self.bytes.len() {
            Ok(())
        } else {
            Err(self.error("bytes are left after the last item"))
        }
    }
}

/// One event of a packed batch, borrowing the buffer.
#[derive(Clone, Copy, Debug)]
pub struct PackedEvent<'a> {
    pub event: EventView<'a>,
    pub event_id: u64,
    pub received_at_us: u64,
}

/// Reads a packed batch of events.
pub fn read_events(bytes: &[u8]) -> Result<Vec<PackedEvent<'_>>, LayoutError> {
    read_events_with(Reader { bytes, offset: 0, utf8_known: false })
}

/// Reads a packed batch of events that the host passed to `format-packed`, without checking that
/// its strings are UTF-8. The check took about a tenth of the standard formatter's time. The
/// layout is still checked as by [`read_events`].
///
/// # Safety
///
/// Every string of `bytes` must be valid UTF-8. The host guarantees it for the buffers it passes
/// (see the layout in `wit/formatter.wit`), as the canonical ABI does for `string` arguments,
/// which wit-bindgen's generated bindings also take unchecked.
pub unsafe fn read_host_events(bytes: &[u8]) -> Result<Vec<PackedEvent<'_>>, LayoutError> {
    read_events_with(Reader { bytes, offset: 0, utf8_known: true })
}

fn read_events_with(mut reader: Reader<'_>) -> Result<Vec<PackedEvent<'_>>, LayoutError> {
    // The smallest event is an info event with an empty name and no message: 25 bytes.
    let count = reader.count(25)?;
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        let event_id = reader.u64()?;
        let received_at_us = reader.u64()?;
        let event = match reader.u8()? {
            CASE_COMMIT_OP => EventView::Operation {
                did: reader.str()?,
                seq: reader.i64()?,
                rev: reader.str()?,
                time: reader.str()?,
                action: match reader.u8()? {
                    0 => Action::Create,
                    1 => Action::Update,
                    2 => Action::Delete,
                    _ => return Err(reader.error("an unknown action")),
                },
                collection: reader.str()?,
                rkey: reader.str()?,
                cid: reader.optional_str()?,
                record: reader.optional_str()?,
            },
            CASE_ACCOUNT => EventView::Account {
                did: reader.str()?,
                seq: reader.i64()?,
                time: reader.str()?,
                active: reader.bool()?,
                status: reader.optional_str()?,
            },
            CASE_IDENTITY => EventView::Identity {
                did: reader.str()?,
                seq: reader.i64()?,
                time: reader.str()?,
                handle: reader.optional_str()?,
            },
            CASE_SYNC => EventView::Sync { did: reader.str()?, seq: reader.i64()?, time: reader.str()?, rev: reader.str()? },
            CASE_INFO => EventView::Info { name: reader.str()?, message: reader.optional_str()? },
            _ => return Err(reader.error("an unknown event case")),
        };
        events.push(PackedEvent { event, event_id, received_at_us });
    }
    reader.finish()?;
    Ok(events)
}

/// One message of a packed result, borrowing the buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedMessage<'a> {
    pub value: &'a [u8],
    pub key: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, &'a [u8])>,
    pub topic: Option<&'a str>,
}

/// Reads packed results in place, one event and one message at a time, so that the caller
/// converts each message as it is read.
///
/// After [`ResultReader::next_result`] returns a message count, the caller reads exactly that
/// many messages with [`ResultReader::next_message`] before the next result.
pub struct ResultReader<'a> {
    reader: Reader<'a>,
    /// The results not read yet.
    results_left: usize,
    /// The messages of the current result not read yet.
    messages_left: usize,
}

impl<'a> ResultReader<'a> {
    /// Starts reading `bytes`, whose first field is the number of results.
    pub fn new(bytes: &'a [u8]) -> Result<Self, LayoutError> {
        let mut reader = Reader { bytes, offset: 0, utf8_known: false };
        // The smallest result is an error with an empty message: 5 bytes.
        let results_left = reader.count(5)?;
        Ok(ResultReader { reader, results_left, messages_left: 0 })
    }

    /// Returns the number of results not read yet.
    pub fn len(&self) -> usize {
        self.results_left
    }

    /// Returns whether every result was read.
    pub fn is_empty(&self) -> bool {
        self.results_left == 0
    }

    /// Reads the next event's result: its number of messages, or its error. Returns `None` after
    /// the last result, once it checked that no bytes follow.
    ///
    /// # Panics
    ///
    /// When messages of the previous result were left unread.
    pub fn next_result(&mut self) -> Result<Option<Result<usize, &'a str>>, LayoutError> {
        assert_eq!(self.messages_left, 0, "every message of a result is read before the next result");
        if self.results_left == 0 {
            self.reader.finish()?;
            return Ok(None);
        }
        self.results_left -= 1;
        match self.reader.u8()? {
            RESULT_ERROR => Ok(Some(Err(self.reader.str()?))),
            RESULT_OK => {
                // The smallest message is an empty value, no key, no headers and no topic.
                self.messages_left = self.reader.count(16)?;
                Ok(Some(Ok(self.messages_left)))
            }
            _ => Err(self.reader.error("a result is neither 0 (messages) nor 1 (error)")),
        }
    }

    /// Reads the next message of the current result.
    ///
    /// # Panics
    ///
    /// When every message of the current result was read.
    pub fn next_message(&mut self) -> Result<PackedMessage<'a>, LayoutError> {
        assert!(self.messages_left > 0, "a message is read only within its result's count");
        self.messages_left -= 1;
        let reader = &mut self.reader;
        let value = reader.bytes()?;
        let key = reader.optional_bytes()?;
        let header_count = reader.count(8)?;
        let mut headers = Vec::with_capacity(header_count);
        for _ in 0..header_count {
            headers.push((reader.str()?, reader.bytes()?));
        }
        let topic = reader.optional_str()?;
        Ok(PackedMessage { value, key, headers, topic })
    }
}

/// Writes packed results, one event at a time: [`ResultWriter::error`], or
/// [`ResultWriter::messages`] followed by that many [`ResultWriter::message`] calls.
///
/// NOTE: a message value contains a copy of the record's JSON although the host already has it.
/// A value that points at the event's record, with records left out of the batch, saves three
/// copies of each record. It did not pay in `make bench` on a 2-core Intel Xeon, because the host
/// then allocates and copies each value to join it: guest / native was 0.45-0.47 with it and
/// 0.45-0.49 without, in alternating runs.
pub struct ResultWriter {
    out: Vec<u8>,
}

impl ResultWriter {
    /// Starts the results of `count` events, with room for `capacity` bytes.
    pub fn new(count: usize, capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity.max(4));
        put_length(&mut out, count);
        ResultWriter { out }
    }

    /// Writes the next event's result as an error.
    pub fn error(&mut self, message: &str) {
        self.out.push(RESULT_ERROR);
        put_str(&mut self.out, message);
    }

    /// Starts the next event's result as `count` messages.
    pub fn messages(&mut self, count: usize) {
        self.out.push(RESULT_OK);
        put_length(&mut self.out, count);
    }

    /// Writes one message whose value `write_value` appends to the buffer it is given.
    pub fn message(
        &mut self,
        write_value: impl FnOnce(&mut Vec<u8>),
        key: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        topic: Option<&str>,
    ) {
        let length_at = self.out.len();
        put_u32(&mut self.out, 0);
        write_value(&mut self.out);
        let length = self.out.len() - length_at - 4;
        let length = u32::try_from(length).ok().filter(|length| *length != ABSENT).expect("a message value is under 4 GiB");
        self.out[length_at..length_at + 4].copy_from_slice(&length.to_le_bytes());
        put_optional_bytes(&mut self.out, key);
        put_length(&mut self.out, headers.len());
        for (header_key, header_value) in headers {
            put_str(&mut self.out, header_key);
            put_bytes(&mut self.out, header_value);
        }
        put_optional_str(&mut self.out, topic);
    }

    /// Returns the packed results.
    pub fn finish(self) -> Vec<u8> {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_events() -> Vec<EventView<'static>> {
        vec![
            EventView::Operation {
                did: "did:plc:abc",
                seq: 42,
                rev: "3lrev",
                time: "2026-07-04T14:38:07.877Z",
                action: Action::Create,
                collection: "app.bsky.feed.post",
                rkey: "3k",
                cid: Some("bafyrei"),
                record: Some(r#"{"text":"héllo"}"#),
            },
            EventView::Operation {
                did: "did:plc:abc",
                seq: -1,
                rev: "",
                time: "t",
                action: Action::Delete,
                collection: "app.bsky.feed.like",
                rkey: "3m",
                cid: None,
                record: None,
            },
            EventView::Account { did: "did:plc:x", seq: 7, time: "t", active: false, status: Some("takendown") },
            EventView::Identity { did: "did:plc:y", seq: 8, time: "t", handle: None },
            EventView::Sync { did: "did:plc:z", seq: 9, time: "t", rev: "3s" },
            EventView::Info { name: "OutdatedCursor", message: None },
        ]
    }

    fn packed_events() -> Vec<u8> {
        let events = sample_events();
        let mut out = Vec::new();
        begin_events(&mut out, events.len());
        for (index, event) in events.iter().enumerate() {
            put_event(&mut out, event, index as u64 + 100, index as u64 * 3);
        }
        out
    }

    #[test]
    fn events_read_back_as_written() {
        let bytes = packed_events();
        let read = read_events(&bytes).expect("the writer's output reads");
        let expected = sample_events();
        assert_eq!(read.len(), expected.len());
        for (index, (read, expected)) in read.iter().zip(&expected).enumerate() {
            assert_eq!(format!("{:?}", read.event), format!("{expected:?}"), "event {index}");
            assert_eq!(read.event_id, index as u64 + 100);
            assert_eq!(read.received_at_us, index as u64 * 3);
        }
    }

    #[test]
    fn host_events_read_like_checked_events() {
        let bytes = packed_events();
        let checked = read_events(&bytes).expect("the writer's output reads");
        // SAFETY: the writer's strings come from `&str`s.
        let unchecked = unsafe { read_host_events(&bytes) }.expect("the writer's output reads");
        assert_eq!(format!("{unchecked:?}"), format!("{checked:?}"));
        for length in 0..bytes.len() {
            // SAFETY: a string cut by the prefix fails the length check before it is read, so
            // every string read is one the writer wrote whole.
            assert!(unsafe { read_host_events(&bytes[..length]) }.is_err(), "truncated at {length}");
        }
    }

    /// Reads every result of a packed reply: the event's messages, or its error.
    fn read_results(bytes: &[u8]) -> Result<Vec<Result<Vec<PackedMessage<'_>>, &str>>, LayoutError> {
        let mut reader = ResultReader::new(bytes)?;
        let mut results = Vec::new();
        while let Some(result) = reader.next_result()? {
            match result {
                Err(error) => results.push(Err(error)),
                Ok(count) => {
                    let messages = (0..count).map(|_| reader.next_message()).collect::<Result<Vec<_>, _>>()?;
                    results.push(Ok(messages));
                }
            }
        }
        Ok(results)
    }

    #[test]
    fn results_read_back_as_written() {
        let mut writer = ResultWriter::new(3, 0);
        writer.messages(2);
        writer.message(|out| out.extend_from_slice(b"{}"), None, &[], None);
        writer.message(|out| out.extend_from_slice(b"v"), Some(b"k"), &[("h", b"1"), ("", b"")], Some("other"));
        writer.error("rejected");
        writer.messages(0);
        let bytes = writer.finish();

        let results = read_results(&bytes).expect("the writer's output reads");
        assert_eq!(
            results,
            vec![
                Ok(vec![
                    PackedMessage { value: b"{}", key: None, headers: vec![], topic: None },
                    PackedMessage { value: b"v", key: Some(b"k"), headers: vec![("h", b"1"), ("", b"")], topic: Some("other") },
                ]),
                Err("rejected"),
                Ok(vec![]),
            ]
        );
    }

    #[test]
    fn every_truncation_of_a_batch_is_an_error() {
        let bytes = packed_events();
        for length in 0..bytes.len() {
            let error = read_events(&bytes[..length]).expect_err("a truncated batch does not read");
            assert!(error.offset <= length, "truncated at {length}: {error}");
        }
    }

    #[test]
    fn every_truncation_of_results_is_an_error() {
        let mut writer = ResultWriter::new(2, 0);
        writer.messages(1);
        writer.message(|out| out.extend_from_slice(b"value"), Some(b"key"), &[("h", b"v")], Some("t"));
        writer.error("no");
        let bytes = writer.finish();
        for length in 0..bytes.len() {
            assert!(read_results(&bytes[..length]).is_err(), "truncated at {length}");
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = packed_events();
        bytes.push(0);
        assert_eq!(read_events(&bytes).unwrap_err().problem, "bytes are left after the last item");
    }

    #[test]
    fn bad_case_action_and_utf8_are_errors() {
        let bytes = packed_events();
        // The first event's case byte follows the count and the two u64s of its context.
        let mut bad_case = bytes.clone();
        bad_case[20] = 9;
        assert_eq!(read_events(&bad_case).unwrap_err(), LayoutError { offset: 21, problem: "an unknown event case" });

        // The action follows the DID, seq, rev and time: 81 bytes into the buffer.
        let mut bad_action = bytes.clone();
        assert_eq!(bad_action[81], 0, "the first event is a create");
        bad_action[81] = 7;
        assert_eq!(read_events(&bad_action).unwrap_err(), LayoutError { offset: 82, problem: "an unknown action" });

        let mut bad_utf8 = bytes.clone();
        // The first event's DID starts after its case byte and the DID's length.
        bad_utf8[25] = 0xff;
        assert_eq!(read_events(&bad_utf8).unwrap_err(), LayoutError { offset: 21, problem: "a string is not UTF-8" });

        let mut writer = ResultWriter::new(1, 0);
        writer.error("x");
        let mut bad_result = writer.finish();
        bad_result[4] = 2;
        assert!(read_results(&bad_result).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic_a_reader() {
        // A fixed xorshift sequence: the same buffers on every run.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid = packed_events();
        for _ in 0..2000 {
            let length = (next() % 96) as usize;
            let random: Vec<u8> = (0..length).map(|_| next() as u8).collect();
            let _ = read_events(&random);
            let _ = read_results(&random);

            let mut flipped = valid.clone();
            let index = next() as usize % flipped.len();
            flipped[index] ^= 1 << (next() % 8);
            let _ = read_events(&flipped);
        }
    }

    #[test]
    fn count_too_large_is_rejected_before_allocating() {
        let bytes = u32::MAX.to_le_bytes();
        assert_eq!(read_results(&bytes).unwrap_err().problem, "a count exceeds what the rest of the buffer can hold");
        let mut events = (u32::MAX - 1).to_le_bytes().to_vec();
        events.extend_from_slice(&[0; 64]);
        assert_eq!(read_events(&events).unwrap_err().problem, "a count exceeds what the rest of the buffer can hold");
    }
}

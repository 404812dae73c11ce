//! WebSocket framing (RFC 6455, section 5) of the frames a relay sends, parsed in place in the
//! reader's buffer.
//!
//! The relay reader reads the socket straight into the buffer of the batch it hands to the
//! decoder, and this parser finds each binary message's payload there. tungstenite gives every
//! message a buffer of its own, which the reader then had to copy into the batch: about 9 % of
//! the host's CPU at full speed. tungstenite still makes the connection and its HTTP upgrade.
//!
//! Guarantees: a binary message is returned only when complete, as one contiguous range of the
//! buffer, in the order the relay sent it, with the payloads of its fragments moved together. A
//! message above the size limit is skipped as its bytes arrive, without being held. Framing that
//! RFC 6455 forbids a server to send (a mask, reserved bits, an unknown opcode, broken
//! fragmentation, a long control frame) is a `ProtocolError`. Pure: no I/O.

use std::ops::Range;

/// The maximum length of a frame header: 2 bytes, then an 8-byte length. Frames from a server
/// carry no mask.
const MAX_HEADER_BYTES: usize = 10;
/// The largest payload a control frame may have.
const MAX_CONTROL_PAYLOAD: u64 = 125;

const OPCODE_CONTINUATION: u8 = 0x0;
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
const OPCODE_CLOSE: u8 = 0x8;
const OPCODE_PING: u8 = 0x9;
const OPCODE_PONG: u8 = 0xa;

/// An item the parser found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// A complete binary message, whose payload is this range of the buffer.
    Binary(Range<usize>),
    /// A binary message of at least this many bytes, above the size limit. Its bytes are skipped.
    Oversized(u64),
    /// A ping, to be replied to with a pong that carries the same payload.
    Ping(Vec<u8>),
    /// A close frame with its status code, when it has one, and its reason.
    Close(Option<u16>, String),
}

/// Framing that RFC 6455 forbids a server to send.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("frame with reserved bits set (no extension was negotiated)")]
    ReservedBits,
    #[error("masked frame from the server")]
    Masked,
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("fragmented or oversized control frame (opcode {0:#x})")]
    BadControlFrame(u8),
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    #[error("new message before the previous fragmented message ended")]
    UnfinishedMessage,
    #[error("frame length {0} does not fit in 63 bits")]
    BadLength(u64),
}

/// A message sent in fragments, not yet complete.
struct Fragmented {
    /// The offset of the message's payload in the buffer. Its fragments are moved to follow it.
    start: usize,
    /// The payload bytes gathered so far.
    length: u64,
    /// Whether the message is dropped (a text message, or one above the size limit) rather than
    /// gathered.
    dropped: bool,
}

/// The parser's place in the stream of frames. One per connection.
pub struct FrameParser {
    max_message_bytes: u64,
    /// The offset of the first byte not yet parsed.
    position: usize,
    /// The end of the last binary message returned from this buffer.
    kept_end: usize,
    /// The end offset of the frame being parsed, while its payload has not all arrived (0 when
    /// unknown).
    pending_end: usize,
    /// Payload bytes of the current frame still to be dropped.
    skip: u64,
    /// Whether the frame being dropped is the last of its message, which then ends.
    skip_ends_message: bool,
    message: Option<Fragmented>,
}

/// A parsed frame header.
struct Header {
    fin: bool,
    opcode: u8,
    length: u64,
    /// Header bytes.
    size: usize,
}

/// Parses the header at the start of `bytes`, or returns `None` when it is not all there yet.
fn parse_header(bytes: &[u8]) -> Result<Option<Header>, ProtocolError> {
    let [first, second, ..] = *bytes else { return Ok(None) };
    if first & 0x70 != 0 {
        return Err(ProtocolError::ReservedBits);
    }
    if second & 0x80 != 0 {
        return Err(ProtocolError::Masked);
    }
    let (length, size) = match second & 0x7f {
        126 => match bytes.get(2..4) {
            Some(length) => (u64::from(u16::from_be_bytes([length[0], length[1]])), 4),
            None => return Ok(None),
        },
        127 => match bytes.get(2..MAX_HEADER_BYTES) {
            Some(length) => (u64::from_be_bytes(length.try_into().expect("8 bytes")), MAX_HEADER_BYTES),
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if length >> 63 != 0 {
        return Err(ProtocolError::BadLength(length));
    }
    Ok(Some(Header { fin: first & 0x80 != 0, opcode: first & 0x0f, length, size }))
}

impl FrameParser {
    /// Starts a parser that skips binary messages above `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> FrameParser {
        FrameParser {
            max_message_bytes: max_message_bytes as u64,
            position: 0,
            kept_end: 0,
            pending_end: 0,
            skip: 0,
            skip_ends_message: false,
            message: None,
        }
    }

    /// Returns the next message or control frame found in `buffer`, or `None` when more bytes
    /// are needed.
    pub fn next(&mut self, buffer: &mut [u8]) -> Result<Option<Found>, ProtocolError> {
        loop {
            if self.skip > 0 {
                let available = (buffer.len() - self.position) as u64;
                let skipped = self.skip.min(available);
                self.position += skipped as usize;
                self.skip -= skipped;
                if self.skip > 0 {
                    return Ok(None);
                }
                if self.skip_ends_message {
                    self.message = None;
                }
            }
            let Some(header) = parse_header(&buffer[self.position..])? else { return Ok(None) };
            let step = match header.opcode {
                OPCODE_CLOSE | OPCODE_PING | OPCODE_PONG => self.control(buffer, &header)?,
                OPCODE_TEXT | OPCODE_BINARY => self.start_message(buffer, &header)?,
                OPCODE_CONTINUATION => self.continue_message(buffer, &header)?,
                opcode => return Err(ProtocolError::UnknownOpcode(opcode)),
            };
            match step {
                Step::Found(found) => return Ok(Some(found)),
                Step::Incomplete => return Ok(None),
                Step::Continue => {}
            }
        }
    }

    /// Returns how many more bytes the buffer needs to hold the frame being parsed, when its
    /// header is known, so that the reader can make room for it at once.
    pub fn needed(&self, buffer: &[u8]) -> usize {
        self.pending_end.saturating_sub(buffer.len())
    }

    /// Drops the bytes at the end of `buffer` that nothing needs any more (skipped payloads,
    /// control frames), once every byte in it was parsed.
    pub fn reclaim(&mut self, buffer: &mut Vec<u8>) {
        if self.position < buffer.len() {
            return;
        }
        let keep = match &self.message {
            Some(message) if !message.dropped => message.start + message.length as usize,
            _ => self.kept_end,
        };
        buffer.truncate(keep);
        self.position = keep;
    }

    /// Moves what `from` still needs (a fragmented message being gathered and the bytes not yet
    /// parsed) to the start of the empty buffer `to`, which the parser goes on with. The binary
    /// messages already returned stay in `from`.
    pub fn carry_over(&mut self, from: &[u8], to: &mut Vec<u8>) {
        to.clear();
        if let Some(message) = self.message.as_mut().filter(|message| !message.dropped) {
            to.extend_from_slice(&from[message.start..message.start + message.length as usize]);
            message.start = 0;
        }
        let shift = self.position - to.len();
        to.extend_from_slice(&from[self.position..]);
        self.position -= shift;
        self.pending_end = self.pending_end.saturating_sub(shift);
        self.kept_end = 0;
    }

    /// Handles a close, ping or pong frame.
    fn control(&mut self, buffer: &[u8], header: &Header) -> Result<Step, ProtocolError> {
        if !header.fin || header.length > MAX_CONTROL_PAYLOAD {
            return Err(ProtocolError::BadControlFrame(header.opcode));
        }
        let Some(range) = self.whole_payload(buffer, header) else { return Ok(Step::Incomplete) };
        let payload = &buffer[range.clone()];
        let found = match header.opcode {
            OPCODE_CLOSE => {
                let code = payload.get(..2).map(|code| u16::from_be_bytes([code[0], code[1]]));
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned();
                Some(Found::Close(code, reason))
            }
            OPCODE_PING => Some(Found::Ping(payload.to_vec())),
            _ => None,
        };
        self.position = range.end;
        Ok(found.map_or(Step::Continue, Step::Found))
    }

    /// Handles the first frame of a text or binary message.
    fn start_message(&mut self, buffer: &mut [u8], header: &Header) -> Result<Step, ProtocolError> {
        if self.message.is_some() {
            return Err(ProtocolError::UnfinishedMessage);
        }
        let oversized = header.length > self.max_message_bytes;
        if header.opcode == OPCODE_TEXT || oversized {
            // Dropped as its bytes arrive: a relay sends only binary messages.
            if !header.fin {
                self.message = Some(Fragmented { start: 0, length: 0, dropped: true });
            }
            self.drop_payload(header);
            return Ok(if oversized && header.opcode == OPCODE_BINARY {
                Step::Found(Found::Oversized(header.length))
            } else {
                Step::Continue
            });
        }
        let Some(payload) = self.whole_payload(buffer, header) else { return Ok(Step::Incomplete) };
        self.position = payload.end;
        if header.fin {
            self.kept_end = payload.end;
            return Ok(Step::Found(Found::Binary(payload)));
        }
        self.message = Some(Fragmented { start: payload.start, length: header.length, dropped: false });
        Ok(Step::Continue)
    }

    /// Handles a continuation frame: moves its payload to follow the message's earlier fragments.
    fn continue_message(&mut self, buffer: &mut [u8], header: &Header) -> Result<Step, ProtocolError> {
        let max_message_bytes = self.max_message_bytes;
        let Some(message) = self.message.as_mut() else { return Err(ProtocolError::UnexpectedContinuation) };
        let length = message.length + header.length;
        if message.dropped || length > max_message_bytes {
            let newly_oversized = !message.dropped;
            message.dropped = true;
            message.length = length;
            self.drop_payload(header);
            return Ok(if newly_oversized { Step::Found(Found::Oversized(length)) } else { Step::Continue });
        }
        let Some(payload) = self.whole_payload(buffer, header) else { return Ok(Step::Incomplete) };
        let message = self.message.as_mut().expect("a message being gathered");
        let end = message.start + message.length as usize;
        buffer.copy_within(payload.clone(), end);
        message.length = length;
        self.position = payload.end;
        if !header.fin {
            return Ok(Step::Continue);
        }
        let range = message.start..message.start + length as usize;
        self.message = None;
        self.kept_end = range.end;
        Ok(Step::Found(Found::Binary(range)))
    }

    /// Returns the range of the frame's payload in `buffer`, or `None` (noting how far the buffer
    /// must reach) while it has not all arrived.
    fn whole_payload(&mut self, buffer: &[u8], header: &Header) -> Option<Range<usize>> {
        let start = self.position + header.size;
        let end = start + header.length as usize;
        if end > buffer.len() {
            self.pending_end = end;
            return None;
        }
        self.pending_end = 0;
        Some(start..end)
    }

    /// Skips the frame's header and drops its payload as it arrives.
    fn drop_payload(&mut self, header: &Header) {
        self.position += header.size;
        self.skip = header.length;
        self.skip_ends_message = header.fin;
        if header.length == 0 && header.fin {
            self.message = None;
        }
    }
}

/// The outcome of parsing one frame.
enum Step {
    Found(Found),
    Incomplete,
    /// The frame was consumed without anything to return; parsing goes on with the next one.
    Continue,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes one unmasked frame as a server sends it.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            length @ 0..=125 => out.push(length as u8),
            length @ 126..=0xffff => {
                out.push(126);
                out.extend_from_slice(&(length as u16).to_be_bytes());
            }
            length => {
                out.push(127);
                out.extend_from_slice(&(length as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    fn binary(payload: &[u8]) -> Vec<u8> {
        frame(true, OPCODE_BINARY, payload)
    }

    /// Parses everything in `bytes` at once and returns what was found, with binary payloads
    /// copied out.
    fn parse_all(parser: &mut FrameParser, bytes: &[u8]) -> Result<Vec<(Found, Vec<u8>)>, ProtocolError> {
        let mut buffer = bytes.to_vec();
        let mut found = Vec::new();
        while let Some(item) = parser.next(&mut buffer)? {
            let payload = match &item {
                Found::Binary(range) => buffer[range.clone()].to_vec(),
                _ => Vec::new(),
            };
            found.push((item, payload));
        }
        Ok(found)
    }

    fn payloads(found: &[(Found, Vec<u8>)]) -> Vec<Vec<u8>> {
        found.iter().filter(|(item, _)| matches!(item, Found::Binary(_))).map(|(_, payload)| payload.clone()).collect()
    }

    #[test]
    fn every_length_encoding_is_read() {
        let messages = [vec![1u8; 5], vec![2u8; 300], vec![3u8; 70_000]];
        let stream: Vec<u8> = messages.iter().flat_map(|payload| binary(payload)).collect();
        let found = parse_all(&mut FrameParser::new(1 << 20), &stream).unwrap();
        assert_eq!(payloads(&found), messages);
        assert_eq!(found[0].0, Found::Binary(2..7));
        assert_eq!(found[1].0, Found::Binary(11..311));
    }

    #[test]
    fn fragments_are_joined_around_a_ping() {
        let mut stream = frame(false, OPCODE_BINARY, b"abc");
        stream.extend(frame(true, OPCODE_PING, b"hi"));
        stream.extend(frame(false, OPCODE_CONTINUATION, b"def"));
        stream.extend(frame(true, OPCODE_CONTINUATION, b"gh"));
        stream.extend(binary(b"next"));
        let found = parse_all(&mut FrameParser::new(1024), &stream).unwrap();
        assert_eq!(found[0].0, Found::Ping(b"hi".to_vec()));
        assert_eq!(payloads(&found), vec![b"abcdefgh".to_vec(), b"next".to_vec()]);
    }

    #[test]
    fn text_and_pong_frames_are_passed_over() {
        let mut stream = frame(true, OPCODE_TEXT, b"{}");
        stream.extend(frame(false, OPCODE_TEXT, b"part"));
        stream.extend(frame(true, OPCODE_CONTINUATION, b"rest"));
        stream.extend(frame(true, OPCODE_PONG, b""));
        stream.extend(binary(b"kept"));
        let found = parse_all(&mut FrameParser::new(1024), &stream).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(payloads(&found), vec![b"kept".to_vec()]);
    }

    #[test]
    fn close_frame_gives_code_and_reason() {
        let mut payload = 1008u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"ConsumerTooSlow");
        let found = parse_all(&mut FrameParser::new(1024), &frame(true, OPCODE_CLOSE, &payload)).unwrap();
        assert_eq!(found[0].0, Found::Close(Some(1008), "ConsumerTooSlow".to_owned()));
        let found = parse_all(&mut FrameParser::new(1024), &frame(true, OPCODE_CLOSE, b"")).unwrap();
        assert_eq!(found[0].0, Found::Close(None, String::new()));
    }

    #[test]
    fn oversized_messages_are_reported_once_and_skipped() {
        let mut stream = binary(&[7u8; 2000]);
        stream.extend(frame(false, OPCODE_BINARY, &[8u8; 600]));
        stream.extend(frame(false, OPCODE_CONTINUATION, &[8u8; 600]));
        stream.extend(frame(true, OPCODE_CONTINUATION, &[8u8; 600]));
        stream.extend(binary(b"small"));
        let found = parse_all(&mut FrameParser::new(1000), &stream).unwrap();
        let items: Vec<&Found> = found.iter().map(|(item, _)| item).collect();
        assert_eq!(items[0], &Found::Oversized(2000));
        assert_eq!(items[1], &Found::Oversized(1200));
        assert_eq!(payloads(&found), vec![b"small".to_vec()]);
        assert_eq!(found.len(), 3);
    }

    #[test]
    fn skipped_bytes_are_not_kept_in_the_buffer() {
        let mut parser = FrameParser::new(100);
        let stream = binary(&[9u8; 50_000]);
        let mut buffer = Vec::new();
        let mut largest = 0;
        for chunk in stream.chunks(1000) {
            buffer.extend_from_slice(chunk);
            largest = largest.max(buffer.len());
            while parser.next(&mut buffer).unwrap().is_some() {}
            parser.reclaim(&mut buffer);
        }
        assert!(largest <= 1000, "the buffer grew to {largest} bytes");
        assert!(buffer.is_empty());
    }

    #[test]
    fn forbidden_framing_is_a_protocol_error() {
        let mut masked = binary(b"x");
        masked[1] |= 0x80;
        let mut reserved = binary(b"x");
        reserved[0] |= 0x40;
        let mut interrupted = frame(false, OPCODE_BINARY, b"a");
        interrupted.extend(binary(b"b"));
        let cases = [
            (masked, ProtocolError::Masked),
            (reserved, ProtocolError::ReservedBits),
            (frame(true, 0x3, b""), ProtocolError::UnknownOpcode(0x3)),
            (frame(true, OPCODE_CONTINUATION, b"x"), ProtocolError::UnexpectedContinuation),
            (interrupted, ProtocolError::UnfinishedMessage),
            (frame(false, OPCODE_PING, b""), ProtocolError::BadControlFrame(OPCODE_PING)),
            (frame(true, OPCODE_PING, &[0u8; 126]), ProtocolError::BadControlFrame(OPCODE_PING)),
        ];
        for (stream, expected) in cases {
            assert_eq!(parse_all(&mut FrameParser::new(1024), &stream).err(), Some(expected.clone()), "{stream:?}");
        }
    }

    /// Random messages in random fragments, with pings and text between them, fed in random
    /// chunks, with the batch buffer handed over at random points as the relay reader does.
    #[test]
    fn random_streams_in_random_chunks_give_every_message() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        const LIMIT: usize = 3000;
        for _ in 0..300 {
            let (mut stream, mut expected, mut oversized) = (Vec::new(), Vec::new(), 0);
            for index in 0..20 {
                let length = next(4000) as usize;
                let payload: Vec<u8> = (0..length).map(|offset| (offset + index) as u8).collect();
                if next(5) == 0 {
                    stream.extend(frame(true, OPCODE_PING, b"p"));
                }
                if next(6) == 0 {
                    stream.extend(frame(true, OPCODE_TEXT, b"text"));
                }
                let mut pieces = payload.chunks(next(2000) as usize + 1).peekable();
                let mut opcode = OPCODE_BINARY;
                if payload.is_empty() {
                    stream.extend(binary(&[]));
                }
                while let Some(piece) = pieces.next() {
                    stream.extend(frame(pieces.peek().is_none(), opcode, piece));
                    opcode = OPCODE_CONTINUATION;
                }
                if length > LIMIT {
                    oversized += 1;
                } else {
                    expected.push(payload);
                }
            }

            let mut parser = FrameParser::new(LIMIT);
            let (mut buffer, mut got, mut oversized_seen) = (Vec::new(), Vec::new(), 0);
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let take = (next(9000) as usize + 1).min(rest.len());
                buffer.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                while let Some(found) = parser.next(&mut buffer).unwrap() {
                    match found {
                        Found::Binary(range) => got.push(buffer[range].to_vec()),
                        Found::Oversized(_) => oversized_seen += 1,
                        Found::Ping(payload) => assert_eq!(payload, b"p"),
                        Found::Close(..) => panic!("no close frame was sent"),
                    }
                }
                parser.reclaim(&mut buffer);
                if next(3) == 0 {
                    let mut fresh = Vec::new();
                    parser.carry_over(&buffer, &mut fresh);
                    buffer = fresh;
                }
            }
            assert_eq!(got, expected);
            assert_eq!(oversized_seen, oversized);
        }
    }
}

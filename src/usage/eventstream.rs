//! AWS event stream framer (`application/vnd.amazon.eventstream`, the binary framing of
//! Bedrock's `ConverseStream` and `InvokeModelWithResponseStream`): turns body chunks split
//! anywhere into whole messages reported as [`Frame`]s, the event's name being its
//! `:event-type` header (`:exception-type` for an exception message, `:error-code` for an
//! error message) and its data the message payload.
//!
//! A message is a 12-byte prelude (total length u32 BE, headers length u32 BE, CRC32 of those
//! 8 bytes), the headers (each: name length u8, name, value type u8, value), the payload, and
//! the CRC32 of everything before it. Source: AWS "Event stream encoding"
//! (<https://docs.aws.amazon.com/transcribe/latest/dg/streaming-setting-up.html#streaming-event-stream>)
//! and awslabs/aws-c-event-stream (`aws_event_stream_message`).
//!
//! Bound: a message whose total length passes `max_event_bytes` is not held: the framer
//! reports [`Frame::Oversized`], skips exactly its remaining bytes and reports
//! [`Frame::Skipped`] at its end (the length is in the prelude, so the framing never loses
//! its place). Memory held is at most one message of `max_event_bytes`.
//!
//! Corruption (a prelude or message CRC that does not match, a length shorter than a message
//! can be, headers that overrun their message) leaves no way to find the next message: the
//! framer is then [`EventStreamFramer::broken`] for good, reports nothing more and holds
//! nothing; the accountant counts the stream malformed and the relay ends it with a native
//! error.

use super::sse::{Boundary, Frame, SseEvent};

/// Prelude bytes: total length, headers length, prelude CRC (4 bytes each).
const PRELUDE_BYTES: usize = 12;
/// Smallest message: a prelude and the message CRC, no headers, no payload.
const MIN_MESSAGE_BYTES: usize = PRELUDE_BYTES + 4;

/// Incremental event stream parser state: the message in progress (held only while it is
/// split across chunks), at most `max_event_bytes`.
#[derive(Debug)]
pub(crate) struct EventStreamFramer {
    max_event_bytes: usize,
    /// Bytes of the message in progress that arrived in earlier chunks.
    buf: Vec<u8>,
    /// While skipping an oversized message: its bytes still to come.
    skip: usize,
    broken: bool,
}

/// What a message's headers say about it.
#[derive(Debug, Default)]
struct Kind<'a> {
    message_type: &'a [u8],
    event_type: &'a [u8],
    exception_type: &'a [u8],
    error_code: &'a [u8],
}

impl EventStreamFramer {
    /// A framer holding messages of at most `max_event_bytes` bytes (see the module doc).
    pub(crate) fn new(max_event_bytes: usize) -> Self {
        EventStreamFramer {
            max_event_bytes,
            buf: Vec::new(),
            skip: 0,
            broken: false,
        }
    }

    /// Bytes of stream content held now (the message in progress).
    pub(crate) fn held_bytes(&self) -> usize {
        self.buf.len()
    }

    /// True once a CRC or a length did not check: nothing after it is framed.
    pub(crate) fn broken(&self) -> bool {
        self.broken
    }

    /// Feeds one chunk, calling `emit` for each frame found inside it.
    pub(crate) fn feed<F: FnMut(Frame<'_>)>(&mut self, chunk: &[u8], mut emit: F) {
        let mut i = 0;
        while i < chunk.len() && !self.broken {
            if self.skip > 0 {
                let n = self.skip.min(chunk.len() - i);
                self.skip -= n;
                i += n;
                if self.skip == 0 {
                    let at = Boundary {
                        end: i,
                        cr_pending: false,
                    };
                    emit(Frame::Skipped { name: b"", at });
                }
                continue;
            }
            if self.buf.is_empty() {
                // Whole messages inside the chunk are read in place (no copy).
                match self.total_length(&chunk[i..]) {
                    Some(Ok(total)) if total > self.max_event_bytes => {
                        emit(Frame::Oversized);
                        self.skip = total;
                        continue;
                    }
                    Some(Ok(total)) if chunk.len() - i >= total => {
                        let end = i + total;
                        self.dispatch_slice(&chunk[i..end], end, &mut emit);
                        i = end;
                        continue;
                    }
                    Some(Err(())) => {
                        self.broken = true;
                        break;
                    }
                    _ => {}
                }
            }
            // Held across chunks: first the prelude, then the rest of the message.
            let want = match self.total_length(&self.buf) {
                Some(Ok(total)) => total,
                Some(Err(())) => {
                    self.broken = true;
                    break;
                }
                None => PRELUDE_BYTES,
            };
            let n = (want - self.buf.len()).min(chunk.len() - i);
            self.buf.extend_from_slice(&chunk[i..i + n]);
            i += n;
            match self.total_length(&self.buf) {
                Some(Ok(total)) if total > self.max_event_bytes => {
                    emit(Frame::Oversized);
                    self.skip = total - self.buf.len();
                    self.clear();
                    if self.skip == 0 {
                        emit(Frame::Skipped {
                            name: b"",
                            at: Boundary {
                                end: i,
                                cr_pending: false,
                            },
                        });
                    }
                }
                Some(Ok(total)) if self.buf.len() == total => {
                    let buf = std::mem::take(&mut self.buf);
                    self.dispatch_slice(&buf, i, &mut emit);
                    self.buf = buf;
                    self.clear();
                }
                Some(Err(())) => self.broken = true,
                _ => {}
            }
        }
        if self.broken {
            self.clear();
        }
    }

    /// End of the body: a message cut short is dropped (it never reaches the client).
    pub(crate) fn finish<F: FnMut(Frame<'_>)>(&mut self, _emit: F) {
        self.clear();
        self.skip = 0;
    }

    /// The total length of the message starting at `bytes` once its prelude is there: `None`
    /// before that, `Err` when the prelude is corrupt or impossible.
    fn total_length(&self, bytes: &[u8]) -> Option<Result<usize, ()>> {
        let prelude = bytes.get(..PRELUDE_BYTES)?;
        let total = u32_at(prelude, 0) as usize;
        let headers = u32_at(prelude, 4) as usize;
        if crc32fast::hash(&prelude[..8]) != u32_at(prelude, 8)
            || total < MIN_MESSAGE_BYTES
            || headers > total - MIN_MESSAGE_BYTES
        {
            return Some(Err(()));
        }
        Some(Ok(total))
    }

    /// Checks and reports one whole message (`msg`, its prelude checked), which ends at
    /// offset `end` of the chunk being fed.
    fn dispatch_slice<F: FnMut(Frame<'_>)>(&mut self, msg: &[u8], end: usize, emit: &mut F) {
        let Some((kind, payload)) = parse_message(msg) else {
            self.broken = true;
            return;
        };
        let name = match kind.message_type {
            b"exception" => kind.exception_type,
            b"error" => kind.error_code,
            _ => kind.event_type,
        };
        let event = SseEvent {
            name,
            data: payload,
            has_data: true,
        };
        emit(Frame::Event(
            event,
            Boundary {
                end,
                cr_pending: false,
            },
        ));
    }

    /// Forgets the message in progress, giving back the memory of a big one.
    fn clear(&mut self) {
        self.buf.clear();
        if self.buf.capacity() > super::sse::KEEP_CAPACITY_BYTES {
            self.buf.shrink_to(super::sse::KEEP_CAPACITY_BYTES);
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        word.copy_from_slice(s);
    }
    u32::from_be_bytes(word)
}

/// The headers sluice reads and the payload of one whole message whose prelude was checked;
/// `None` when its message CRC does not match or a header overruns the headers section.
fn parse_message(msg: &[u8]) -> Option<(Kind<'_>, &[u8])> {
    let crc_at = msg.len().checked_sub(4)?;
    if crc32fast::hash(&msg[..crc_at]) != u32_at(msg, crc_at) {
        return None;
    }
    let headers_len = u32_at(msg, 4) as usize;
    let headers = msg.get(PRELUDE_BYTES..PRELUDE_BYTES + headers_len)?;
    let payload = msg.get(PRELUDE_BYTES + headers_len..crc_at)?;
    let mut kind = Kind::default();
    let mut h = headers;
    while !h.is_empty() {
        let name_len = usize::from(*h.first()?);
        let name = h.get(1..1 + name_len)?;
        let ty = *h.get(1 + name_len)?;
        let rest = h.get(2 + name_len..)?;
        let (value, used) = header_value(ty, rest)?;
        if let Some(value) = value {
            match name {
                b":message-type" => kind.message_type = value,
                b":event-type" => kind.event_type = value,
                b":exception-type" => kind.exception_type = value,
                b":error-code" => kind.error_code = value,
                _ => {}
            }
        }
        h = rest.get(used..)?;
    }
    Some((kind, payload))
}

/// One header value of type `ty` at the start of `rest`: the bytes of a string or byte-array
/// value (`None` for the other types), and how many bytes it took.
fn header_value(ty: u8, rest: &[u8]) -> Option<(Option<&[u8]>, usize)> {
    let fixed = match ty {
        0 | 1 => 0, // bool true / false
        2 => 1,     // byte
        3 => 2,     // short
        4 => 4,     // integer
        5 | 8 => 8, // long, timestamp
        9 => 16,    // uuid
        6 | 7 => {
            // byte array, string: u16 BE length then the bytes
            let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
            return Some((Some(rest.get(2..2 + len)?), 2 + len));
        }
        _ => return None,
    };
    rest.get(..fixed)?;
    Some((None, fixed))
}

/// Encodes one message with string headers (value type 7) and `payload`, prelude and CRCs
/// computed: what sluice writes when it ends a stream with a native exception.
pub fn encode_message(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let headers_len: usize = headers
        .iter()
        .map(|(n, v)| 1 + n.len().min(255) + 1 + 2 + v.len().min(u16::MAX as usize))
        .sum();
    let total = PRELUDE_BYTES + headers_len + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(headers_len as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out[..8]);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    for (name, value) in headers {
        let name = &name.as_bytes()[..name.len().min(255)];
        let value = &value.as_bytes()[..value.len().min(u16::MAX as usize)];
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.push(7);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value);
    }
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, payload: &str) -> Vec<u8> {
        encode_message(
            &[
                (":event-type", name),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.as_bytes(),
        )
    }

    fn frames(f: &mut EventStreamFramer, chunk: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        f.feed(chunk, |frame| match frame {
            Frame::Event(e, at) => out.push(format!(
                "{}={}@{}",
                String::from_utf8_lossy(e.name),
                String::from_utf8_lossy(e.data),
                at.end
            )),
            Frame::Oversized => out.push("oversized".into()),
            Frame::Skipped { at, .. } => out.push(format!("skipped@{}", at.end)),
            Frame::Empty(_) => out.push("empty".into()),
        });
        out
    }

    #[test]
    fn whole_and_split_messages() {
        let a = event("messageStart", r#"{"role":"assistant"}"#);
        let b = event("messageStop", r#"{"stopReason":"end_turn"}"#);
        let mut stream = a.clone();
        stream.extend_from_slice(&b);
        let mut f = EventStreamFramer::new(1 << 20);
        let got = frames(&mut f, &stream);
        assert_eq!(
            got,
            vec![
                format!("messageStart={{\"role\":\"assistant\"}}@{}", a.len()),
                format!(
                    "messageStop={{\"stopReason\":\"end_turn\"}}@{}",
                    stream.len()
                ),
            ]
        );
        for cut in 0..=stream.len() {
            let mut f = EventStreamFramer::new(1 << 20);
            let mut names = frames(&mut f, &stream[..cut]);
            names.extend(frames(&mut f, &stream[cut..]));
            assert_eq!(names.len(), 2, "cut {cut}");
            assert!(names[1].starts_with("messageStop="), "cut {cut}");
            assert_eq!(f.held_bytes(), 0);
        }
    }

    #[test]
    fn exception_messages_are_named_by_their_type() {
        let m = encode_message(
            &[
                (":exception-type", "throttlingException"),
                (":message-type", "exception"),
            ],
            br#"{"message":"slow down"}"#,
        );
        let mut f = EventStreamFramer::new(1 << 20);
        assert_eq!(
            frames(&mut f, &m),
            vec![format!(
                "throttlingException={{\"message\":\"slow down\"}}@{}",
                m.len()
            )]
        );
    }

    #[test]
    fn oversized_messages_are_skipped_exactly() {
        let big = event("contentBlockDelta", &"x".repeat(200));
        let small = event("messageStop", "{}");
        let mut stream = big.clone();
        stream.extend_from_slice(&small);
        for cut in [0, 5, 12, 13, 100, big.len(), big.len() + 3] {
            let mut f = EventStreamFramer::new(100);
            let mut got = frames(&mut f, &stream[..cut]);
            got.extend(frames(&mut f, &stream[cut..]));
            assert_eq!(
                got.first().map(String::as_str),
                Some("oversized"),
                "cut {cut}"
            );
            assert!(got[1].starts_with("skipped@"), "cut {cut}");
            assert!(got[2].starts_with("messageStop={}"), "cut {cut}");
            assert!(f.held_bytes() <= 100);
        }
    }

    #[test]
    fn a_bad_crc_breaks_the_stream() {
        let good = event("messageStart", "{}");
        let mut bad = event("contentBlockDelta", r#"{"delta":{"text":"hi"}}"#);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let mut stream = good.clone();
        stream.extend_from_slice(&bad);
        stream.extend_from_slice(&good);
        let mut f = EventStreamFramer::new(1 << 20);
        let got = frames(&mut f, &stream);
        assert_eq!(got.len(), 1);
        assert!(f.broken());
        assert_eq!(f.held_bytes(), 0);
        let mut prelude = good.clone();
        prelude[8] ^= 0xff;
        let mut f = EventStreamFramer::new(1 << 20);
        assert!(frames(&mut f, &prelude).is_empty());
        assert!(f.broken());
    }
}

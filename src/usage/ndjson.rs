//! Newline-delimited JSON framer (Ollama's `application/x-ndjson` streams): turns body chunks
//! split anywhere into lines, each one event, reported as the same [`Frame`]s the SSE framer
//! gives, holding at most a configured number of bytes per line.
//!
//! A line ends at `\n`; a `\r` just before it is dropped (CRLF tolerated, even split across
//! chunks). Blank lines belong to no event ([`Frame::Empty`]). Payloads are bytes: a UTF-8
//! character split across chunks is reassembled before anyone decodes it.
//!
//! Bound: a line whose raw size (its bytes up to and including the `\n`) passes
//! `max_event_bytes` is not parsed. The framer drops what it held of it, reports
//! [`Frame::Oversized`], skips its remaining bytes without holding them, and resynchronizes
//! at its `\n` ([`Frame::Skipped`]). Memory held is at most `max_event_bytes` (plus `Vec`
//! growth slack) whatever the upstream sends.
//!
//! Sources: the NDJSON spec (<https://github.com/ndjson/ndjson-spec>: one JSON text per
//! line, `\n` separated, `\r\n` tolerated) and Ollama's API docs
//! (<https://github.com/ollama/ollama/blob/main/docs/api.md>: streamed responses are "a
//! stream of JSON objects").

use super::sse::{Boundary, Frame, SseEvent, KEEP_CAPACITY_BYTES};

/// Incremental NDJSON parser state: the bytes of the line in progress, nothing older.
#[derive(Debug)]
pub(crate) struct NdjsonFramer {
    max_event_bytes: usize,
    line: Vec<u8>,
    /// Raw bytes of the line in progress received so far (its `\r` included).
    line_bytes: usize,
    /// Skipping the rest of an oversized line.
    skipping: bool,
}

impl NdjsonFramer {
    /// A framer parsing lines of at most `max_event_bytes` bytes (see the module doc).
    pub(crate) fn new(max_event_bytes: usize) -> Self {
        NdjsonFramer {
            max_event_bytes,
            line: Vec::new(),
            line_bytes: 0,
            skipping: false,
        }
    }

    /// Bytes of stream content held now (the line in progress).
    pub(crate) fn held_bytes(&self) -> usize {
        self.line.len()
    }

    /// Feeds one chunk, calling `emit` for each frame found inside it.
    pub(crate) fn feed<F: FnMut(Frame<'_>)>(&mut self, chunk: &[u8], mut emit: F) {
        let mut i = 0;
        while i < chunk.len() {
            let rest = &chunk[i..];
            let Some(rel) = memchr::memchr(b'\n', rest) else {
                self.take(rest, &mut emit);
                return;
            };
            let at = Boundary {
                end: i + rel + 1,
                cr_pending: false,
            };
            if self.skipping {
                self.end_skip(at, &mut emit);
            } else if self.line_bytes + rel + 1 > self.max_event_bytes {
                emit(Frame::Oversized);
                self.end_skip(at, &mut emit);
            } else {
                self.line.extend_from_slice(&rest[..rel]);
                self.dispatch(at, &mut emit);
            }
            i = at.end;
        }
    }

    /// End of the body: a final line without its `\n` is dispatched (lenient: the upstream
    /// did send it and may have billed for it); an oversized line still open ends as
    /// [`Frame::Skipped`]. `emit` gets a zero `Boundary`.
    pub(crate) fn finish<F: FnMut(Frame<'_>)>(&mut self, mut emit: F) {
        let at = Boundary {
            end: 0,
            cr_pending: false,
        };
        if self.skipping {
            self.end_skip(at, &mut emit);
        } else if self.line_bytes > 0 {
            self.dispatch(at, &mut emit);
        }
    }

    /// Bytes of a line whose `\n` is not in this chunk.
    fn take<F: FnMut(Frame<'_>)>(&mut self, seg: &[u8], emit: &mut F) {
        if self.skipping {
            return;
        }
        if self.line_bytes + seg.len() > self.max_event_bytes {
            self.skipping = true;
            self.line = Vec::new();
            emit(Frame::Oversized);
            return;
        }
        self.line_bytes += seg.len();
        self.line.extend_from_slice(seg);
    }

    fn dispatch<F: FnMut(Frame<'_>)>(&mut self, at: Boundary, emit: &mut F) {
        let data = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        if data.iter().all(u8::is_ascii_whitespace) {
            emit(Frame::Empty(at));
        } else {
            emit(Frame::Event(
                SseEvent {
                    name: b"",
                    data,
                    has_data: true,
                },
                at,
            ));
        }
        self.reset();
    }

    fn end_skip<F: FnMut(Frame<'_>)>(&mut self, at: Boundary, emit: &mut F) {
        self.skipping = false;
        emit(Frame::Skipped { name: b"", at });
        self.reset();
    }

    fn reset(&mut self) {
        self.line.clear();
        self.line_bytes = 0;
        if self.line.capacity() > KEEP_CAPACITY_BYTES {
            self.line.shrink_to(KEEP_CAPACITY_BYTES);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Got {
        Line(String),
        Oversized,
        Skipped,
    }

    fn frame_with(max: usize, pieces: &[&[u8]]) -> Vec<Got> {
        let mut framer = NdjsonFramer::new(max);
        let mut got = Vec::new();
        let mut on = |f: Frame<'_>| match f {
            Frame::Event(ev, _) => got.push(Got::Line(String::from_utf8_lossy(ev.data).into())),
            Frame::Empty(_) => {}
            Frame::Oversized => got.push(Got::Oversized),
            Frame::Skipped { .. } => got.push(Got::Skipped),
        };
        for piece in pieces {
            framer.feed(piece, &mut on);
            assert!(framer.held_bytes() <= max, "held {}", framer.held_bytes());
        }
        framer.finish(&mut on);
        got
    }

    fn line(s: &str) -> Got {
        Got::Line(s.to_owned())
    }

    #[test]
    fn lines_crlf_blank_lines_and_an_unterminated_tail() {
        let stream = b"{\"a\":1}\n\r\n{\"b\":2}\r\n\n{\"c\":3}";
        let want = vec![line("{\"a\":1}"), line("{\"b\":2}"), line("{\"c\":3}")];
        for cut in 0..=stream.len() {
            assert_eq!(
                frame_with(1 << 20, &[&stream[..cut], &stream[cut..]]),
                want,
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(frame_with(1 << 20, &bytes), want);
    }

    #[test]
    fn boundaries_point_past_each_newline() {
        let mut framer = NdjsonFramer::new(1 << 20);
        let mut ends = Vec::new();
        framer.feed(b"{}\n\n{\"x\":1}\r\n{", |f| match f {
            Frame::Event(_, at) => ends.push((at.end, true)),
            Frame::Empty(at) => ends.push((at.end, false)),
            _ => panic!("{f:?}"),
        });
        assert_eq!(ends, vec![(3, true), (4, false), (13, true)]);
        assert_eq!(framer.held_bytes(), 1);
    }

    #[test]
    fn an_oversized_line_is_skipped_and_the_next_one_parsed() {
        // Cap 16: a 41-byte line passes it, split anywhere.
        let stream = [
            &b"{\"ok\":1}\n{\"response\":\""[..],
            &[b'x'; 20][..],
            b"\"}\n{\"n\":2}\n",
        ]
        .concat();
        let want = vec![
            line("{\"ok\":1}"),
            Got::Oversized,
            Got::Skipped,
            line("{\"n\":2}"),
        ];
        for cut in 0..=stream.len() {
            assert_eq!(
                frame_with(16, &[&stream[..cut], &stream[cut..]]),
                want,
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(frame_with(16, &bytes), want);
    }

    #[test]
    fn a_line_of_exactly_the_cap_is_parsed() {
        // 15 bytes + "\n" = 16.
        let data = "y".repeat(15);
        let stream = format!("{data}\n");
        assert_eq!(frame_with(16, &[stream.as_bytes()]), vec![line(&data)]);
        let stream = format!("{data}y\n");
        assert_eq!(
            frame_with(16, &[stream.as_bytes()]),
            vec![Got::Oversized, Got::Skipped]
        );
        let tail = [b'q'; 40];
        assert_eq!(frame_with(16, &[&tail]), vec![Got::Oversized, Got::Skipped]);
    }
}

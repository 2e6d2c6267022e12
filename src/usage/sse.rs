//! Server-sent-events framer: turns body chunks split anywhere into events (`event:` name plus
//! the joined `data:` payload), per the WHATWG event-stream grammar.
//!
//! Handles `\n`, `\r\n` and lone `\r` line ends (a `\r\n` may be split across chunks), comment
//! lines (`:`), multi-line `data:` (joined with `\n`), one optional space after the colon, and a
//! leading UTF-8 BOM. Payloads are bytes: a UTF-8 character split across chunks is reassembled
//! before anyone decodes it. Each event also reports where it ended in the chunk, so hide mode
//! can cut the raw stream on event boundaries.

const BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// One dispatched event, borrowed from the framer until the callback returns.
#[derive(Debug)]
pub(crate) struct SseEvent<'a> {
    /// Value of the last `event:` line, empty when the event had none.
    pub(crate) name: &'a [u8],
    /// The `data:` lines' values joined with `\n` (no trailing newline).
    pub(crate) data: &'a [u8],
    /// False for a block that had an `event:` line but no `data:` line (malformed for every
    /// API sluice accounts; the WHATWG parser would drop it silently).
    pub(crate) has_data: bool,
}

/// Where an event ended in the chunk being fed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Boundary {
    /// Offset just past the blank line's terminator (past `\n`, `\r\n`, or a lone `\r`).
    pub(crate) end: usize,
    /// The blank line ended with `\r` as the chunk's last byte: if the next chunk starts with
    /// `\n`, that byte still belongs to this event's terminator.
    pub(crate) cr_pending: bool,
}

/// Incremental SSE parser state. Memory held: the current partial line and the current event's
/// name and data; nothing older.
#[derive(Debug, Default)]
pub(crate) struct SseFramer {
    line: Vec<u8>,
    after_cr: bool,
    bom_matched: usize,
    started: bool,
    name: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    has_event: bool,
}

impl SseFramer {
    /// Feeds one chunk, calling `emit` for each event completed inside it.
    pub(crate) fn feed<F: FnMut(SseEvent<'_>, Boundary)>(&mut self, chunk: &[u8], mut emit: F) {
        let mut i = 0;
        if !self.started {
            i = self.skip_bom(chunk);
            if !self.started {
                return;
            }
        }
        if self.after_cr && i < chunk.len() {
            self.after_cr = false;
            if chunk[i] == b'\n' {
                i += 1;
            }
        }
        while i < chunk.len() {
            let rest = &chunk[i..];
            let Some(rel) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.line.extend_from_slice(rest);
                break;
            };
            let eol = i + rel;
            let mut next = eol + 1;
            let mut cr_pending = false;
            if chunk[eol] == b'\r' {
                if next == chunk.len() {
                    cr_pending = true;
                } else if chunk[next] == b'\n' {
                    next += 1;
                }
            }
            self.after_cr = cr_pending;
            let at = Boundary {
                end: next,
                cr_pending,
            };
            if self.line.is_empty() {
                self.on_line(&chunk[i..eol], at, &mut emit);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&chunk[i..eol]);
                self.on_line(&line, at, &mut emit);
                line.clear();
                self.line = line;
            }
            i = next;
        }
    }

    /// End of the body: a final line without terminator counts as a line, and an event still
    /// open is dispatched (lenient: the WHATWG parser would drop it, but the upstream did send
    /// it and may have billed for it). `emit` gets a zero `Boundary`.
    pub(crate) fn finish<F: FnMut(SseEvent<'_>, Boundary)>(&mut self, mut emit: F) {
        let at = Boundary {
            end: 0,
            cr_pending: false,
        };
        if !self.started {
            self.line.extend_from_slice(&BOM[..self.bom_matched]);
            self.started = true;
        }
        self.after_cr = false;
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.on_line(&line, at, &mut emit);
        }
        self.dispatch(at, &mut emit);
    }

    /// Consumes a (possibly split) leading BOM; returns how many bytes of `chunk` it took.
    fn skip_bom(&mut self, chunk: &[u8]) -> usize {
        let mut i = 0;
        while i < chunk.len() && self.bom_matched < BOM.len() {
            if chunk[i] != BOM[self.bom_matched] {
                // Not a BOM after all: the bytes matched so far start the first line.
                self.line.extend_from_slice(&BOM[..self.bom_matched]);
                self.started = true;
                return i;
            }
            self.bom_matched += 1;
            i += 1;
        }
        if self.bom_matched == BOM.len() {
            self.started = true;
        }
        i
    }

    fn on_line<F: FnMut(SseEvent<'_>, Boundary)>(
        &mut self,
        line: &[u8],
        at: Boundary,
        emit: &mut F,
    ) {
        if line.is_empty() {
            self.dispatch(at, emit);
            return;
        }
        if line[0] == b':' {
            return; // comment, e.g. ": keep-alive" or ": OPENROUTER PROCESSING"
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &line[line.len()..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.name.clear();
                self.name.extend_from_slice(value);
                self.has_event = true;
            }
            _ => {} // id, retry and unknown fields carry nothing to account
        }
    }

    fn dispatch<F: FnMut(SseEvent<'_>, Boundary)>(&mut self, at: Boundary, emit: &mut F) {
        if self.has_data || self.has_event {
            emit(
                SseEvent {
                    name: &self.name,
                    data: &self.data,
                    has_data: self.has_data,
                },
                at,
            );
        }
        self.name.clear();
        self.data.clear();
        self.has_data = false;
        self.has_event = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Got = Vec<(String, String, bool)>;

    fn frame(pieces: &[&[u8]]) -> Got {
        let mut framer = SseFramer::default();
        let mut got = Vec::new();
        let mut on = |ev: SseEvent<'_>, _: Boundary| {
            got.push((
                String::from_utf8_lossy(ev.name).into_owned(),
                String::from_utf8_lossy(ev.data).into_owned(),
                ev.has_data,
            ))
        };
        for piece in pieces {
            framer.feed(piece, &mut on);
        }
        framer.finish(&mut on);
        got
    }

    fn ev(name: &str, data: &str) -> (String, String, bool) {
        (name.to_owned(), data.to_owned(), true)
    }

    #[test]
    fn line_ends_comments_and_multiline_data() {
        let stream = b": hi\nevent: a\ndata: 1\ndata:2\n\ndata: x\r\n\r\nevent: b\rdata: y\r\r";
        let want = vec![ev("a", "1\n2"), ev("", "x"), ev("b", "y")];
        assert_eq!(frame(&[stream]), want);
        for cut in 0..=stream.len() {
            assert_eq!(
                frame(&[&stream[..cut], &stream[cut..]]),
                want,
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(frame(&bytes), want);
    }

    #[test]
    fn crlf_split_between_chunks_is_one_line_end() {
        // "\r" | "\n\r\n": one blank line after "data: a", not two events.
        let got = frame(&[b"data: a\r", b"\n\r", b"\ndata: b\n\n"]);
        assert_eq!(got, vec![ev("", "a"), ev("", "b")]);
    }

    #[test]
    fn bom_is_skipped_even_when_split() {
        let stream = b"\xEF\xBB\xBFdata: a\n\n";
        for cut in 0..=stream.len() {
            assert_eq!(frame(&[&stream[..cut], &stream[cut..]]), vec![ev("", "a")]);
        }
        // Two bytes of a BOM that is not one: kept as line content (so the field name is not
        // "data" and no event comes out).
        assert_eq!(frame(&[b"\xEF\xBB", b"data: x\n\n"]), vec![]);
    }

    #[test]
    fn event_without_data_is_reported_and_unterminated_tail_is_flushed() {
        let got = frame(&[b"event: ping\n\nid: 7\nretry: 10\n\ndata: tail"]);
        assert_eq!(
            got,
            vec![("ping".to_owned(), String::new(), false), ev("", "tail")]
        );
    }

    #[test]
    fn boundaries_point_past_each_terminator() {
        let mut framer = SseFramer::default();
        let mut ends = Vec::new();
        framer.feed(b"data: a\n\ndata: b\r\n\r\ndata: c\r\r", |_, at| {
            ends.push((at.end, at.cr_pending))
        });
        assert_eq!(ends, vec![(9, false), (20, false), (29, true)]);
    }
}

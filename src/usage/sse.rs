//! Server-sent-events framer: turns body chunks split anywhere into events (`event:` name plus
//! the joined `data:` payload), per the WHATWG event-stream grammar, holding at most a
//! configured number of bytes per event.
//!
//! Handles `\n`, `\r\n` and lone `\r` line ends (a `\r\n` may be split across chunks), comment
//! lines (`:`), multi-line `data:` (joined with `\n`), one optional space after the colon, and a
//! leading UTF-8 BOM. Payloads are bytes: a UTF-8 character split across chunks is reassembled
//! before anyone decodes it. Each event also reports where it ended in the chunk, so hide mode
//! can cut the raw stream on event boundaries.
//!
//! Bound: an event whose size (its raw bytes up to the blank line that ends it) passes
//! `max_event_bytes` is not parsed. The framer drops what it held of it, reports
//! [`Frame::Oversized`], skips its remaining bytes without holding them, and resynchronizes at
//! the blank line that ends it ([`Frame::Skipped`]). Field values are appended to the event as
//! they arrive (no line buffer), so memory held is at most `max_event_bytes` (plus `Vec`
//! growth slack) whatever the upstream sends.
//! Source: <https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation>.

const BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// Capacity a buffer may keep between events (bytes); larger buffers are shrunk back to it
/// once their event is done, so one big event does not pin its memory for the whole stream.
pub(crate) const KEEP_CAPACITY_BYTES: usize = 64 * 1024;

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

/// What the framer reports while it reads a chunk, in stream order.
#[derive(Debug)]
pub(crate) enum Frame<'a> {
    /// A complete event (it had a `data:` or an `event:` line).
    Event(SseEvent<'a>, Boundary),
    /// Bytes up to the boundary that belong to no event: a blank line ending a block with
    /// nothing to dispatch (only comments, `id:`, `retry:` or unknown fields, or no line at
    /// all), or the stream's leading BOM.
    Empty(Boundary),
    /// The event in progress just passed `max_event_bytes`: what the framer held of it is
    /// dropped, and its bytes up to the blank line that ends it are skipped unparsed.
    Oversized,
    /// The end of an oversized event: its blank line (or, from `finish`, the end of the body
    /// with a zero boundary). `name` is its `event:` value when that line came before the cap
    /// was passed, else empty.
    Skipped {
        /// The event's `event:` value, possibly empty.
        name: &'a [u8],
        /// Where it ended.
        at: Boundary,
    },
}

/// Which field the current line is the value of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Data,
    Event,
    /// `id`, `retry`, unknown fields and comments (empty field name): nothing to account.
    Ignored,
}

/// Where the framer is inside the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineState {
    /// No byte of the line seen yet (a line end now is a blank line).
    Start,
    /// Reading the field name, held in `SseFramer::field` until the colon (where an `event:`
    /// value is then held until its line ends).
    Name,
    /// Reading the value of `field`, appended as it arrives; `first`: the optional space
    /// after the colon may still come.
    Value { field: Field, first: bool },
}

/// Incremental SSE parser state. Memory held: the current line's field name and the current
/// event's name and data (values are appended as they arrive, never copied twice), together
/// at most `max_event_bytes`; nothing older.
#[derive(Debug)]
pub(crate) struct SseFramer {
    max_event_bytes: usize,
    line_state: LineState,
    field: Vec<u8>,
    after_cr: bool,
    bom_matched: usize,
    started: bool,
    name: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    has_event: bool,
    /// Bytes of the event in progress received so far, line ends included (a `\r\n` split
    /// across chunks counts its two bytes too, so the count does not depend on the split).
    event_bytes: usize,
    /// Skipping the rest of an oversized event.
    skipping: bool,
    /// While skipping: no byte of the current line seen yet (so a line end now is a blank
    /// line, the end of the event).
    skip_at_line_start: bool,
}

impl SseFramer {
    /// A framer parsing events of at most `max_event_bytes` bytes (see the module doc).
    pub(crate) fn new(max_event_bytes: usize) -> Self {
        SseFramer {
            max_event_bytes,
            line_state: LineState::Start,
            field: Vec::new(),
            after_cr: false,
            bom_matched: 0,
            started: false,
            name: Vec::new(),
            data: Vec::new(),
            has_data: false,
            has_event: false,
            event_bytes: 0,
            skipping: false,
            skip_at_line_start: false,
        }
    }

    /// Bytes of stream content held now (field name of the line, event name and data).
    pub(crate) fn held_bytes(&self) -> usize {
        self.field.len() + self.name.len() + self.data.len()
    }

    /// Bytes of buffer capacity allocated now (what the held bytes cost in memory).
    #[cfg(test)]
    pub(crate) fn capacity_bytes(&self) -> usize {
        self.field.capacity() + self.name.capacity() + self.data.capacity()
    }

    /// Feeds one chunk, calling `emit` for each frame found inside it.
    pub(crate) fn feed<F: FnMut(Frame<'_>)>(&mut self, chunk: &[u8], mut emit: F) {
        let mut i = 0;
        if !self.started {
            i = self.skip_bom(chunk);
            if !self.started {
                return;
            }
            if self.bom_matched == BOM.len() && i > 0 {
                // The BOM belongs to no event (hide mode must keep it if the first is dropped).
                emit(Frame::Empty(Boundary {
                    end: i,
                    cr_pending: false,
                }));
            }
        }
        if self.after_cr && i < chunk.len() {
            self.after_cr = false;
            if chunk[i] == b'\n' {
                i += 1;
                // The rest of a `\r\n` ending a line of the event in progress (after a blank
                // line the event is over and its count is 0): counted as if unsplit.
                if !self.skipping && self.event_bytes > 0 {
                    if self.event_bytes + 1 > self.max_event_bytes {
                        self.overflow(true, &mut emit);
                    } else {
                        self.event_bytes += 1;
                    }
                }
            }
        }
        while i < chunk.len() {
            let rest = &chunk[i..];
            let Some(rel) = memchr::memchr2(b'\n', b'\r', rest) else {
                if self.skipping {
                    self.skip_at_line_start = false;
                } else if self.event_bytes + rest.len() > self.max_event_bytes {
                    self.overflow(false, &mut emit);
                } else {
                    self.event_bytes += rest.len();
                    self.line_bytes(rest);
                }
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
            if self.skipping {
                if self.skip_at_line_start && rel == 0 {
                    self.end_skip(at, &mut emit);
                } else {
                    self.skip_at_line_start = true;
                }
            } else if rel == 0 && self.line_state == LineState::Start {
                self.dispatch(at, &mut emit);
            } else if self.event_bytes + rel + 1 > self.max_event_bytes {
                self.overflow(true, &mut emit);
            } else {
                self.event_bytes += rel + 1;
                self.line_bytes(&chunk[i..eol]);
                self.end_line();
                if next - eol == 2 {
                    // The `\n` of a `\r\n`, counted after the line as when it comes in the
                    // next chunk, so the outcome does not depend on the split.
                    if self.event_bytes + 1 > self.max_event_bytes {
                        self.overflow(true, &mut emit);
                    } else {
                        self.event_bytes += 1;
                    }
                }
            }
            i = next;
        }
    }

    /// End of the body: a final line without terminator counts as a line, and an event still
    /// open is dispatched (lenient: the WHATWG parser would drop it, but the upstream did send
    /// it and may have billed for it); an oversized event still open ends as
    /// [`Frame::Skipped`]. `emit` gets a zero `Boundary`.
    pub(crate) fn finish<F: FnMut(Frame<'_>)>(&mut self, mut emit: F) {
        let at = Boundary {
            end: 0,
            cr_pending: false,
        };
        if !self.started {
            self.not_a_bom();
        }
        self.after_cr = false;
        if self.skipping {
            self.end_skip(at, &mut emit);
            return;
        }
        if self.line_state != LineState::Start {
            self.end_line();
        }
        self.dispatch(at, &mut emit);
    }

    /// Consumes a (possibly split) leading BOM; returns how many bytes of `chunk` it took.
    fn skip_bom(&mut self, chunk: &[u8]) -> usize {
        let mut i = 0;
        while i < chunk.len() && self.bom_matched < BOM.len() {
            if chunk[i] != BOM[self.bom_matched] {
                self.not_a_bom();
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

    /// The bytes matched as a BOM so far were not one: they start the first line.
    fn not_a_bom(&mut self) {
        self.event_bytes = self.bom_matched;
        self.line_bytes(&BOM[..self.bom_matched]);
        self.started = true;
    }

    /// Content bytes of the current line (no line end), appended where they belong.
    fn line_bytes(&mut self, mut seg: &[u8]) {
        while !seg.is_empty() {
            match self.line_state {
                LineState::Start | LineState::Name => {
                    self.line_state = LineState::Name;
                    match memchr::memchr(b':', seg) {
                        Some(colon) => {
                            self.field.extend_from_slice(&seg[..colon]);
                            self.begin_value();
                            seg = &seg[colon + 1..];
                        }
                        None => {
                            self.field.extend_from_slice(seg);
                            return;
                        }
                    }
                }
                LineState::Value { field, first } => {
                    let value = if first {
                        self.line_state = LineState::Value {
                            field,
                            first: false,
                        };
                        seg.strip_prefix(b" ").unwrap_or(seg)
                    } else {
                        seg
                    };
                    match field {
                        Field::Data => self.data.extend_from_slice(value),
                        Field::Event => self.field.extend_from_slice(value),
                        Field::Ignored => {}
                    }
                    return;
                }
            }
        }
    }

    /// The field name is complete (colon or line end): start its value.
    fn begin_value(&mut self) {
        let field = match self.field.as_slice() {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.has_data = true;
                Field::Data
            }
            // The value is collected in `field` and becomes the name when its line ends, so an
            // event cut at the cap keeps the name of its last complete `event:` line.
            b"event" => Field::Event,
            // id, retry, unknown fields, and comments (": keep-alive", an empty field name)
            _ => Field::Ignored,
        };
        self.field.clear();
        self.line_state = LineState::Value { field, first: true };
    }

    /// A non-blank line ended: a line without a colon is a field with an empty value.
    fn end_line(&mut self) {
        if self.line_state == LineState::Name {
            self.begin_value();
        }
        if let LineState::Value {
            field: Field::Event,
            ..
        } = self.line_state
        {
            std::mem::swap(&mut self.name, &mut self.field);
            self.field.clear();
            self.has_event = true;
        }
        self.line_state = LineState::Start;
    }

    fn dispatch<F: FnMut(Frame<'_>)>(&mut self, at: Boundary, emit: &mut F) {
        if self.has_data || self.has_event {
            emit(Frame::Event(
                SseEvent {
                    name: &self.name,
                    data: &self.data,
                    has_data: self.has_data,
                },
                at,
            ));
        } else {
            emit(Frame::Empty(at));
        }
        self.reset_event();
    }

    /// The event in progress passed the cap: drop what is held of it (keeping its name, at
    /// most the cap) and skip the rest. `at_line_start`: the overflowing line is complete.
    fn overflow<F: FnMut(Frame<'_>)>(&mut self, at_line_start: bool, emit: &mut F) {
        self.skipping = true;
        self.skip_at_line_start = at_line_start;
        self.line_state = LineState::Start;
        self.field = Vec::new();
        self.data = Vec::new();
        self.has_data = false;
        emit(Frame::Oversized);
    }

    fn end_skip<F: FnMut(Frame<'_>)>(&mut self, at: Boundary, emit: &mut F) {
        self.skipping = false;
        emit(Frame::Skipped {
            name: &self.name,
            at,
        });
        self.reset_event();
    }

    fn reset_event(&mut self) {
        self.field.clear();
        self.name.clear();
        self.data.clear();
        self.line_state = LineState::Start;
        self.has_data = false;
        self.has_event = false;
        self.event_bytes = 0;
        for buf in [&mut self.field, &mut self.name, &mut self.data] {
            if buf.capacity() > KEEP_CAPACITY_BYTES {
                buf.shrink_to(KEEP_CAPACITY_BYTES);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the framer reported, owned: (name, data, has_data) for events, and markers.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Got {
        Ev(String, String, bool),
        Oversized,
        Skipped(String),
    }

    const BIG: usize = 1 << 20;

    fn frame_with(max: usize, pieces: &[&[u8]]) -> Vec<Got> {
        let mut framer = SseFramer::new(max);
        let mut got = Vec::new();
        let mut on = |f: Frame<'_>| match f {
            Frame::Event(ev, _) => got.push(Got::Ev(
                String::from_utf8_lossy(ev.name).into_owned(),
                String::from_utf8_lossy(ev.data).into_owned(),
                ev.has_data,
            )),
            Frame::Empty(_) => {}
            Frame::Oversized => got.push(Got::Oversized),
            Frame::Skipped { name, .. } => {
                got.push(Got::Skipped(String::from_utf8_lossy(name).into_owned()))
            }
        };
        for piece in pieces {
            framer.feed(piece, &mut on);
            assert!(framer.held_bytes() <= max, "held {}", framer.held_bytes());
        }
        framer.finish(&mut on);
        got
    }

    fn frame(pieces: &[&[u8]]) -> Vec<Got> {
        frame_with(BIG, pieces)
    }

    fn ev(name: &str, data: &str) -> Got {
        Got::Ev(name.to_owned(), data.to_owned(), true)
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
            vec![
                Got::Ev("ping".to_owned(), String::new(), false),
                ev("", "tail")
            ]
        );
    }

    #[test]
    fn boundaries_point_past_each_terminator() {
        let mut framer = SseFramer::new(BIG);
        let mut ends = Vec::new();
        framer.feed(
            b"data: a\n\n: c\n\ndata: b\r\n\r\ndata: c\r\r",
            |f| match f {
                Frame::Event(_, at) => ends.push((at.end, at.cr_pending, true)),
                Frame::Empty(at) => ends.push((at.end, at.cr_pending, false)),
                _ => panic!("{f:?}"),
            },
        );
        assert_eq!(
            ends,
            vec![
                (9, false, true),
                (14, false, false),
                (25, false, true),
                (34, true, true)
            ]
        );
    }

    #[test]
    fn an_oversized_event_is_skipped_and_the_next_one_parsed() {
        // Cap 32: "data: " + 40 bytes passes it mid-line.
        let stream = [
            &b"data: ok\n\nevent: response.completed\ndata: "[..],
            &[b'x'; 40][..],
            b"\n\ndata: next\n\n",
        ]
        .concat();
        let want = vec![
            ev("", "ok"),
            Got::Oversized,
            Got::Skipped("response.completed".to_owned()),
            ev("", "next"),
        ];
        for cut in 0..=stream.len() {
            assert_eq!(
                frame_with(32, &[&stream[..cut], &stream[cut..]]),
                want,
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(frame_with(32, &bytes), want);
    }

    #[test]
    fn many_short_lines_also_count_toward_the_cap() {
        // 10 comment lines of 6 bytes (60 > 32) without a blank line: oversized, then resync.
        let stream = [": abcd\n".repeat(10).as_bytes(), b"\ndata: z\n\n"].concat();
        assert_eq!(
            frame_with(32, &[&stream]),
            vec![Got::Oversized, Got::Skipped(String::new()), ev("", "z")]
        );
    }

    #[test]
    fn an_event_of_exactly_the_cap_is_parsed() {
        // "data: " (6) + 25 + "\n" (1) = 32 bytes before the blank line.
        let data = "y".repeat(25);
        let stream = format!("data: {data}\n\n");
        assert_eq!(frame_with(32, &[stream.as_bytes()]), vec![ev("", &data)]);
        let stream = format!("data: {data}y\n\n");
        assert_eq!(
            frame_with(32, &[stream.as_bytes()]),
            vec![Got::Oversized, Got::Skipped(String::new())]
        );
    }

    #[test]
    fn an_oversized_event_cut_by_the_end_of_the_body_is_closed() {
        let stream = [&b"data: "[..], &[b'q'; 100][..]].concat();
        assert_eq!(
            frame_with(32, &[&stream]),
            vec![Got::Oversized, Got::Skipped(String::new())]
        );
    }

    #[test]
    fn big_events_give_their_memory_back() {
        let mut framer = SseFramer::new(8 << 20);
        let big = [&b"data: "[..], &vec![b'a'; 1 << 20][..], b"\n"].concat();
        framer.feed(&big, |_| {});
        assert!(framer.capacity_bytes() >= 1 << 20);
        framer.feed(b"\n", |_| {});
        assert!(
            framer.capacity_bytes() <= 3 * KEEP_CAPACITY_BYTES,
            "{}",
            framer.capacity_bytes()
        );
    }
}

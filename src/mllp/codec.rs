//! MLLP framing as a `tokio_util` codec: `0x0B <payload> 0x1C 0x0D`.
//!
//! See HL7 v2.5.1 Implementation Guide, Appendix C (MLLP, release 2). The decoder keeps
//! at most `max_len` payload bytes per frame; the rest of an oversize frame is counted
//! and dropped as it arrives, so a sender cannot make us buffer an unbounded message.

use bytes::{Buf, Bytes, BytesMut};
use std::fmt;
use tokio_util::codec::{Decoder, Encoder};

use super::MllpError;

/// Start block (VT).
const SB: u8 = 0x0B;
/// End block (FS), always followed by CR.
const EB: u8 = 0x1C;
const CR: u8 = 0x0D;

/// How much of an oversize frame is kept: enough for MSH, so the caller can still
/// answer with a reject ACK that names the message.
pub const HEAD_LEN: usize = 4096;

/// One decoded frame.
///
/// `Debug` shows lengths only: payloads carry PHI and must not reach the logs.
#[derive(Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete payload, without the framing bytes.
    Message(Bytes),
    /// A payload longer than the codec's `max_len`: its first [`HEAD_LEN`] bytes and
    /// its full length. The rest was discarded.
    TooLarge { head: Bytes, len: usize },
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frame::Message(payload) => write!(f, "Message({} bytes)", payload.len()),
            Frame::TooLarge { head, len } => {
                write!(f, "TooLarge {{ head: {} bytes, len: {len} }}", head.len())
            }
        }
    }
}

/// Decodes and encodes MLLP frames.
///
/// The end of a frame is the pair `0x1C 0x0D`; a `0x1C` followed by any other byte is
/// taken as payload. The spec forbids both bytes inside a payload, but a lone `0x1C`
/// does no harm and closing the frame there would cut the message at the wrong place.
/// A `0x0B` inside a frame is payload too (frames do not nest). Bytes between frames
/// are skipped and counted in [`skipped`](Self::skipped).
#[derive(Debug)]
pub struct MllpCodec {
    max_len: usize,
    state: State,
    skipped: u64,
}

#[derive(Debug)]
enum State {
    /// Between frames: looking for a start block.
    Idle,
    /// Inside a frame, the start block consumed. `buf[..scanned]` is payload already
    /// searched for the end marker (saves rescanning on every partial read).
    Reading { scanned: usize },
    /// Inside a frame longer than `max_len`: `len` payload bytes seen so far, all of
    /// them dropped from the buffer except the first [`HEAD_LEN`], kept in `head`.
    Discarding { head: BytesMut, len: usize },
}

impl MllpCodec {
    /// A codec accepting payloads of up to `max_len` bytes; longer ones decode as
    /// [`Frame::TooLarge`].
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len,
            state: State::Idle,
            skipped: 0,
        }
    }

    /// Whether a frame has started and not yet ended.
    pub fn in_frame(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// Bytes skipped outside frames since the codec was created.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

/// Where the end marker was found in `buf`.
enum End {
    /// `buf[at]` is 0x1C and `buf[at + 1]` is 0x0D.
    Found(usize),
    /// Not in `buf[..searched]`; a 0x1C at `searched` (the last byte) may start it.
    NotYet(usize),
}

/// Finds the end marker in `buf`, starting at `from`.
fn find_end(buf: &[u8], mut from: usize) -> End {
    while let Some(offset) = buf[from..].iter().position(|&b| b == EB) {
        let at = from + offset;
        match buf.get(at + 1) {
            Some(&CR) => return End::Found(at),
            Some(_) => from = at + 1,
            None => return End::NotYet(at),
        }
    }
    End::NotYet(buf.len())
}

/// Moves `buf[..n]` out of the buffer, appending to `head` what it still lacks of
/// [`HEAD_LEN`].
fn keep_head(head: &mut BytesMut, buf: &mut BytesMut, n: usize) {
    let wanted = (HEAD_LEN - head.len()).min(n);
    head.extend_from_slice(&buf[..wanted]);
    buf.advance(n);
}

impl Decoder for MllpCodec {
    type Item = Frame;
    type Error = MllpError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, MllpError> {
        loop {
            match &mut self.state {
                State::Idle => {
                    let Some(start) = buf.iter().position(|&b| b == SB) else {
                        self.skipped += buf.len() as u64;
                        buf.clear();
                        return Ok(None);
                    };
                    self.skipped += start as u64;
                    buf.advance(start + 1);
                    self.state = State::Reading { scanned: 0 };
                }
                State::Reading { scanned } => match find_end(buf, *scanned) {
                    End::Found(at) => {
                        let payload = buf.split_to(at).freeze();
                        buf.advance(2);
                        self.state = State::Idle;
                        if payload.len() > self.max_len {
                            // A copy, so the head does not pin the whole payload.
                            let head = Bytes::copy_from_slice(&payload[..HEAD_LEN.min(at)]);
                            return Ok(Some(Frame::TooLarge {
                                head,
                                len: payload.len(),
                            }));
                        }
                        return Ok(Some(Frame::Message(payload)));
                    }
                    End::NotYet(searched) if searched > self.max_len => {
                        // Too long already: keep the head, drop what was searched and
                        // count the rest as it comes.
                        let mut head = BytesMut::new();
                        keep_head(&mut head, buf, searched);
                        self.state = State::Discarding {
                            head,
                            len: searched,
                        };
                    }
                    End::NotYet(searched) => {
                        *scanned = searched;
                        return Ok(None);
                    }
                },
                State::Discarding { head, len } => match find_end(buf, 0) {
                    End::Found(at) => {
                        keep_head(head, buf, at);
                        buf.advance(2);
                        let frame = Frame::TooLarge {
                            head: head.split().freeze(),
                            len: *len + at,
                        };
                        self.state = State::Idle;
                        return Ok(Some(frame));
                    }
                    End::NotYet(searched) => {
                        keep_head(head, buf, searched);
                        *len += searched;
                        return Ok(None);
                    }
                },
            }
        }
    }

    /// A stream that ends inside a frame is an error (the frame is lost, and the sender,
    /// having no ACK, will send it again).
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, MllpError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if self.in_frame() => Err(MllpError::Truncated),
            None => Ok(None),
        }
    }
}

impl Encoder<&[u8]> for MllpCodec {
    type Error = MllpError;

    /// Refuses a payload holding the end marker: the peer would see the frame end there.
    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), MllpError> {
        if payload.windows(2).any(|w| w == [EB, CR]) {
            return Err(MllpError::EndMarkerInPayload);
        }
        dst.reserve(payload.len() + 3);
        dst.extend_from_slice(&[SB]);
        dst.extend_from_slice(payload);
        dst.extend_from_slice(&[EB, CR]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut MllpCodec, buf: &mut BytesMut) -> Vec<Frame> {
        std::iter::from_fn(|| codec.decode(buf).unwrap()).collect()
    }

    fn message(payload: &[u8]) -> Frame {
        Frame::Message(Bytes::copy_from_slice(payload))
    }

    #[test]
    fn decodes_a_frame_split_at_every_byte_boundary() {
        let wire = b"\x0bMSH|^~\\&|A\rPID|1\x1c\x0d";
        for split in 0..=wire.len() {
            let mut codec = MllpCodec::new(1024);
            let mut buf = BytesMut::from(&wire[..split]);
            let mut frames = decode_all(&mut codec, &mut buf);
            buf.extend_from_slice(&wire[split..]);
            frames.extend(decode_all(&mut codec, &mut buf));
            assert_eq!(frames, [message(b"MSH|^~\\&|A\rPID|1")], "split at {split}");
            assert!(!codec.in_frame());
        }
    }

    #[test]
    fn decodes_a_frame_fed_one_byte_at_a_time() {
        let wire = b"\x0bab\x1cc\x1c\x0d";
        let mut codec = MllpCodec::new(1024);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for &b in wire {
            buf.extend_from_slice(&[b]);
            frames.extend(decode_all(&mut codec, &mut buf));
        }
        assert_eq!(frames, [message(b"ab\x1cc")]);
    }

    #[test]
    fn decodes_several_frames_from_one_read() {
        let mut codec = MllpCodec::new(1024);
        let mut buf = BytesMut::from(&b"\x0bone\x1c\x0d\x0btwo\x1c\x0d\x0bthr"[..]);
        assert_eq!(
            decode_all(&mut codec, &mut buf),
            [message(b"one"), message(b"two")]
        );
        assert!(codec.in_frame());
        buf.extend_from_slice(b"ee\x1c\x0d");
        assert_eq!(decode_all(&mut codec, &mut buf), [message(b"three")]);
        assert_eq!(codec.skipped(), 0);
    }

    #[test]
    fn skips_and_counts_bytes_outside_frames() {
        let mut codec = MllpCodec::new(1024);
        let mut buf = BytesMut::from(&b"\r\ngarbage\x0bone\x1c\x0d\n"[..]);
        assert_eq!(decode_all(&mut codec, &mut buf), [message(b"one")]);
        assert!(buf.is_empty());
        assert_eq!(codec.skipped(), 10);
    }

    #[test]
    fn a_lone_end_block_is_payload() {
        let mut codec = MllpCodec::new(1024);
        let mut buf = BytesMut::from(&b"\x0ba\x1cb\x0bc\x1c\x1c\x0d"[..]);
        assert_eq!(
            decode_all(&mut codec, &mut buf),
            [message(b"a\x1cb\x0bc\x1c")]
        );
    }

    #[test]
    fn an_empty_frame_is_a_message() {
        let mut codec = MllpCodec::new(1024);
        let mut buf = BytesMut::from(&b"\x0b\x1c\x0d"[..]);
        assert_eq!(decode_all(&mut codec, &mut buf), [message(b"")]);
    }

    #[test]
    fn an_oversize_frame_keeps_only_its_head_then_decoding_resumes() {
        let payload: Vec<u8> = (0..20_000u32).map(|i| b'A' + (i % 26) as u8).collect();
        let mut wire = vec![SB];
        wire.extend_from_slice(&payload);
        wire.extend_from_slice(&[EB, CR, SB, b'o', b'k', EB, CR]);

        let mut codec = MllpCodec::new(10_000);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in wire.chunks(1000) {
            buf.extend_from_slice(chunk);
            frames.extend(decode_all(&mut codec, &mut buf));
            // Never more than max_len plus one read is held.
            assert!(buf.len() <= 11_000, "buffered {}", buf.len());
        }
        let head = Bytes::copy_from_slice(&payload[..HEAD_LEN]);
        assert_eq!(
            frames,
            [Frame::TooLarge { head, len: 20_000 }, message(b"ok")]
        );
    }

    #[test]
    fn an_oversize_frame_in_one_read_is_too_large() {
        let mut codec = MllpCodec::new(3);
        let mut buf = BytesMut::from(&b"\x0babcd\x1c\x0d\x0babc\x1c\x0d"[..]);
        let head = Bytes::from_static(b"abcd");
        assert_eq!(
            decode_all(&mut codec, &mut buf),
            [Frame::TooLarge { head, len: 4 }, message(b"abc")]
        );
    }

    #[test]
    fn an_oversize_frame_split_at_its_end_block() {
        let mut codec = MllpCodec::new(3);
        let mut buf = BytesMut::from(&b"\x0babcdef\x1c"[..]);
        assert_eq!(decode_all(&mut codec, &mut buf), []);
        buf.extend_from_slice(b"x\x1c");
        assert_eq!(decode_all(&mut codec, &mut buf), []);
        buf.extend_from_slice(b"\x0d");
        let head = Bytes::from_static(b"abcdef\x1cx");
        assert_eq!(
            decode_all(&mut codec, &mut buf),
            [Frame::TooLarge { head, len: 8 }]
        );
    }

    #[test]
    fn eof_inside_a_frame_is_an_error() {
        let mut codec = MllpCodec::new(1024);
        let mut buf = BytesMut::from(&b"\x0bpartial"[..]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(MllpError::Truncated)
        ));

        let mut codec = MllpCodec::new(1024);
        let mut buf = BytesMut::from(&b"\x0bdone\x1c\x0d\r\n"[..]);
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), Some(message(b"done")));
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    }

    #[test]
    fn encodes_a_frame_and_refuses_the_end_marker_inside() {
        let mut codec = MllpCodec::new(1024);
        let mut dst = BytesMut::new();
        codec.encode(&b"MSH|^~\\&|A\x1cB"[..], &mut dst).unwrap();
        assert_eq!(&dst[..], b"\x0bMSH|^~\\&|A\x1cB\x1c\x0d");
        assert!(matches!(
            codec.encode(&b"a\x1c\x0db"[..], &mut dst),
            Err(MllpError::EndMarkerInPayload)
        ));
    }
}

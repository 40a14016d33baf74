//! MLLP, the transport of HL7 v2 feeds: framing, a listener, a client, TLS.
//!
//! ```text
//! TcpListener ─▶ serve ─▶ one task per connection: [TLS] ─▶ MllpCodec ─▶ Handler ─▶ reply frame
//! ```
//!
//! **Invariant:** only this module knows framing bytes, and it knows nothing of HL7 beyond
//! them: a [`Handler`] gets each payload and returns the reply payload (the ACK). Messages
//! on one connection are handled strictly in order, as MLLP senders expect; connections
//! run concurrently. Payloads are never logged (they carry PHI).

mod client;
mod codec;
mod server;
#[cfg(test)]
mod tests;
mod tls;

pub use client::Client;
pub use codec::{Frame, HEAD_LEN, MllpCodec};
pub use server::{Handler, HandlerFuture, Limits, serve};
pub use tls::{server_config, tls_acceptor};

use bytes::BytesMut;
use std::io;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::codec::{Decoder, Encoder};

/// What can go wrong in this module.
#[derive(Debug, thiserror::Error)]
pub enum MllpError {
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {problem}", path.display())]
    Pem { path: PathBuf, problem: String },
    #[error("certificate {} and key {} are not usable together: {source}", cert.display(), key.display())]
    KeyPair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(#[source] rustls::Error),
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("connection closed inside a frame")]
    Truncated,
    #[error("connection closed before a reply")]
    Closed,
    #[error("connection stalled: no progress for {0:?}")]
    Stalled(Duration),
    #[error("frame not complete within {0:?}")]
    FrameTimeout(Duration),
    #[error("more than {0} bytes outside a frame")]
    OutsideFrames(usize),
    #[error("reply of {0} bytes is larger than allowed")]
    ReplyTooLarge(usize),
    #[error("payload contains the end-of-frame marker 0x1C 0x0D")]
    EndMarkerInPayload,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A byte stream, plain TCP or TLS; boxed so one copy of the connection code serves both.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One MLLP connection: the stream, the codec and its buffers.
struct Conn {
    io: Box<dyn Io>,
    codec: MllpCodec,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// When the frame being read was first seen, for the frame timeout.
    frame_started: Option<Instant>,
    /// Since when we wait for the next frame to start: bytes outside a frame do not
    /// reset this clock (one stray byte every few minutes must not hold a connection).
    waiting_since: Option<Instant>,
    /// `codec.skipped()` when the last frame ended: what lies between frames is bounded.
    skipped_before: u64,
}

/// The bounds of one read: see [`Conn::read_frame`].
#[derive(Debug, Clone, Copy)]
struct ReadLimits {
    idle: Duration,
    frame: Duration,
    gap_bytes: usize,
}

/// Bytes reserved before each read.
const READ_CHUNK: usize = 8 * 1024;

impl Conn {
    fn new(io: Box<dyn Io>, max_len: usize) -> Self {
        Self {
            io,
            codec: MllpCodec::new(max_len),
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::new(),
            frame_started: None,
            waiting_since: None,
            skipped_before: 0,
        }
    }

    /// The next frame, reading as needed; `Ok(None)` at a clean end of stream.
    ///
    /// Fails with [`MllpError::Stalled`] when no frame starts within `limits.idle`
    /// (bytes outside a frame do not count as progress) or no byte of a started frame
    /// arrives for that long, with [`MllpError::FrameTimeout`] when a started frame has
    /// not ended `limits.frame` after it was first seen (a sender trickling bytes must
    /// not hold a connection forever), and with [`MllpError::OutsideFrames`] past
    /// `limits.gap_bytes` between two frames.
    /// Cancel-safe: dropping the future loses no byte read.
    async fn read_frame(&mut self, limits: &ReadLimits) -> Result<Option<Frame>, MllpError> {
        loop {
            if let Some(decoded) = self.codec.decode(&mut self.read_buf)? {
                self.frame_started = None;
                self.waiting_since = None;
                self.skipped_before = self.codec.skipped();
                return Ok(Some(decoded));
            }
            if self.codec.skipped() - self.skipped_before > limits.gap_bytes as u64 {
                return Err(MllpError::OutsideFrames(limits.gap_bytes));
            }
            let now = Instant::now();
            let waiting = *self.waiting_since.get_or_insert(now);
            let (deadline, frame_bound) = if self.codec.in_frame() {
                let started = *self.frame_started.get_or_insert(now);
                let frame_end = started + limits.frame;
                (
                    (now + limits.idle).min(frame_end),
                    frame_end <= now + limits.idle,
                )
            } else {
                (waiting + limits.idle, false)
            };
            self.read_buf.reserve(READ_CHUNK);
            match timeout_at(deadline, self.io.read_buf(&mut self.read_buf)).await {
                Ok(Ok(0)) => return self.codec.decode_eof(&mut self.read_buf),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) if frame_bound => return Err(MllpError::FrameTimeout(limits.frame)),
                Err(_) => return Err(MllpError::Stalled(limits.idle)),
            }
        }
    }

    /// Writes one frame; fails with [`MllpError::Stalled`] if the peer does not take it
    /// within `limit`.
    async fn write_frame(&mut self, payload: &[u8], limit: Duration) -> Result<(), MllpError> {
        self.write_buf.clear();
        self.codec.encode(payload, &mut self.write_buf)?;
        let write = async {
            self.io.write_all(&self.write_buf).await?;
            self.io.flush().await
        };
        timeout(limit, write)
            .await
            .map_err(|_| MllpError::Stalled(limit))??;
        Ok(())
    }
}

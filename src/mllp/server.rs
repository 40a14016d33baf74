//! The MLLP listener: accepts connections, frames, hands each frame to the [`Handler`]
//! and writes its reply; limits and graceful shutdown.

use bytes::Bytes;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{Conn, Frame, Io, MllpError, ReadLimits};

/// What the server will put up with. Timeouts bound what a peer can hold: a socket and
/// at most `max_message_bytes` of buffer per connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest payload buffered; a longer one reaches the handler as [`Frame::TooLarge`].
    pub max_message_bytes: usize,
    /// A connection on which no byte arrives for this long is closed.
    pub idle_timeout: Duration,
    /// A frame not complete this long after it started is dropped with its connection
    /// (defeats slow-loris senders, which reset the idle timer with every byte).
    pub frame_timeout: Duration,
    /// Bytes tolerated between two frames (stray CR/LF some senders write); past this
    /// the connection is closed. They never count as activity for `idle_timeout`.
    pub max_gap_bytes: usize,
    /// Connections beyond this are accepted and closed at once.
    pub max_connections: usize,
    /// Connections one peer address may hold at once, so one peer cannot take every
    /// slot of `max_connections` from the real senders.
    pub max_connections_per_peer: usize,
    /// On shutdown, how long connections get to finish the message in hand.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 * 1024 * 1024,
            idle_timeout: Duration::from_secs(300),
            frame_timeout: Duration::from_secs(60),
            max_gap_bytes: 4096,
            max_connections: 1024,
            max_connections_per_peer: 64,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// The future a [`Handler`] returns.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Option<Vec<Bytes>>> + Send + 'a>>;

/// What the server does with each frame; the domain side of the feed.
pub trait Handler: Send + Sync + 'static {
    /// Handles one frame from `peer` and returns the reply payloads, each framed by the
    /// server (none, one, or an enhanced-mode commit ACK and application ACK), or
    /// `None` to send nothing and close the connection: the sender, without an ACK,
    /// will send the message again later (e.g. while the store is down).
    fn handle(&self, frame: Frame, peer: SocketAddr) -> HandlerFuture<'_>;
}

/// Serves MLLP on `listener` (already bound) until `shutdown` is cancelled.
///
/// Each connection is its own task and handles its frames one at a time: read, await
/// the handler, write the reply, read the next. On shutdown the listener closes, each
/// connection finishes the message it is handling, writes the reply and closes; this
/// returns once all have, or after [`Limits::shutdown_grace`] (the rest are aborted).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    handler: Arc<dyn Handler>,
    shutdown: CancellationToken,
) {
    let limits = Arc::new(limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let peers = Arc::new(PeerSlots::default());
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = connections.join_next() => log_panic(done),
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Typically out of file descriptors: pause rather than spin.
                        tracing::warn!(message = "MLLP accept failed.", error = %e);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::warn!(
                        message = "MLLP connection refused: too many connections.",
                        %peer,
                        max_connections = limits.max_connections
                    );
                    continue;
                };
                let Some(peer_slot) = PeerSlots::take(&peers, peer.ip(), limits.max_connections_per_peer) else {
                    tracing::warn!(
                        message = "MLLP connection refused: too many connections from this peer.",
                        %peer,
                        max_connections_per_peer = limits.max_connections_per_peer
                    );
                    continue;
                };
                connections.spawn(connection(
                    tcp,
                    peer,
                    (slot, peer_slot),
                    tls.clone(),
                    Arc::clone(&limits),
                    Arc::clone(&handler),
                    shutdown.clone(),
                ));
            }
        }
    }
    drop(listener);
    let drain = async {
        while let Some(done) = connections.join_next().await {
            log_panic(done);
        }
    };
    if tokio::time::timeout(limits.shutdown_grace, drain)
        .await
        .is_err()
    {
        tracing::warn!(
            message = "MLLP connections still busy after the shutdown grace period; aborting them.",
            remaining = connections.len()
        );
        connections.shutdown().await;
    }
}

/// Connections held per peer address.
#[derive(Default)]
struct PeerSlots(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One connection's place among its peer's; given back on drop.
struct PeerSlot {
    slots: Arc<PeerSlots>,
    ip: std::net::IpAddr,
}

impl PeerSlots {
    fn take(slots: &Arc<PeerSlots>, ip: std::net::IpAddr, max: usize) -> Option<PeerSlot> {
        let mut held = slots.0.lock().expect("poisoned");
        let n = held.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            slots: Arc::clone(slots),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut held = self.slots.0.lock().expect("poisoned");
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(message = "MLLP connection task failed.", error = %e);
    }
}

/// One connection, from TLS handshake to close. `_slots` are its places under
/// [`Limits::max_connections`] and [`Limits::max_connections_per_peer`], given back on
/// return.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    _slots: (OwnedSemaphorePermit, PeerSlot),
    tls: Option<TlsAcceptor>,
    limits: Arc<Limits>,
    handler: Arc<dyn Handler>,
    shutdown: CancellationToken,
) {
    tracing::debug!(message = "MLLP connection opened.", %peer);
    // Replies are small and awaited by the sender: don't let Nagle hold them back.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(message = "Cannot set TCP_NODELAY.", %peer, error = %e);
    }
    let io: Box<dyn Io> = match tls {
        None => Box::new(tcp),
        Some(acceptor) => {
            match tokio::time::timeout(limits.frame_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => Box::new(stream),
                Ok(Err(e)) => {
                    tracing::warn!(message = "MLLP TLS handshake failed.", %peer, error = %e);
                    return;
                }
                Err(_) => {
                    tracing::warn!(message = "MLLP TLS handshake timed out.", %peer);
                    return;
                }
            }
        }
    };
    let mut conn = Conn::new(io, limits.max_message_bytes);
    let mut messages = 0u64;
    let outcome = exchange(
        &mut conn,
        peer,
        &limits,
        &*handler,
        &shutdown,
        &mut messages,
    )
    .await;
    match outcome {
        Ok(reason) => {
            // Orderly close (TLS close_notify, then FIN), bounded like any write.
            let _ = tokio::time::timeout(limits.idle_timeout, conn.io.shutdown()).await;
            tracing::debug!(message = "MLLP connection closed.", %peer, reason, messages);
        }
        Err(MllpError::Stalled(after)) => {
            tracing::warn!(message = "MLLP connection closed: idle timeout.", %peer, ?after, messages);
        }
        Err(MllpError::FrameTimeout(after)) => {
            tracing::warn!(message = "MLLP connection closed: frame timeout.", %peer, ?after, messages);
        }
        Err(MllpError::OutsideFrames(limit)) => {
            tracing::warn!(message = "MLLP connection closed: too many bytes outside a frame.", %peer, limit, messages);
        }
        Err(MllpError::EndMarkerInPayload) => {
            tracing::error!(message = "MLLP reply not sent: it contains the end-of-frame marker.", %peer, messages);
        }
        Err(e) => {
            tracing::debug!(message = "MLLP connection closed.", %peer, reason = %e, messages);
        }
    }
}

/// Reads frames and answers them until the peer leaves, the handler declines to reply,
/// or shutdown; returns why it stopped.
async fn exchange(
    conn: &mut Conn,
    peer: SocketAddr,
    limits: &Limits,
    handler: &dyn Handler,
    shutdown: &CancellationToken,
    messages: &mut u64,
) -> Result<&'static str, MllpError> {
    let mut warned_skip = false;
    let read_limits = ReadLimits {
        idle: limits.idle_timeout,
        frame: limits.frame_timeout,
        gap_bytes: limits.max_gap_bytes,
    };
    loop {
        let read = tokio::select! {
            // Between messages, shutdown wins; a half-read frame is dropped (unanswered,
            // so the sender sends it again).
            biased;
            _ = shutdown.cancelled() => return Ok("shutdown"),
            read = conn.read_frame(&read_limits) => read,
        };
        if !warned_skip && conn.codec.skipped() > 0 {
            warned_skip = true;
            tracing::warn!(
                message = "MLLP bytes outside a frame skipped (warned once per connection).",
                %peer,
                skipped = conn.codec.skipped()
            );
        }
        let Some(frame) = read? else {
            return Ok("peer closed");
        };
        if let Frame::TooLarge { len, .. } = &frame {
            tracing::warn!(
                message = "MLLP message over the size limit; its head goes to the handler.",
                %peer,
                len,
                max_message_bytes = limits.max_message_bytes
            );
        }
        *messages += 1;
        let Some(replies) = handler.handle(frame, peer).await else {
            return Ok("handler gave no reply");
        };
        for reply in replies {
            conn.write_frame(&reply, limits.idle_timeout).await?;
        }
    }
}

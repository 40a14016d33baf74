//! An MLLP client: one connection, one message at a time (the sender's half of MLLP).

use bytes::Bytes;
use rustls::pki_types::ServerName;
use std::path::Path;
use std::time::Duration;
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::TlsConnector;

use super::{Conn, Frame, Io, MllpError, tls};

/// Bounds connecting and, unless changed with [`Client::with_timeout`], each exchange.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest reply taken (an ACK is small; this only bounds memory).
const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

/// A connection to an MLLP server. After an error, drop it: the connection may still
/// hold a late reply that would be taken for the next message's.
pub struct Client {
    conn: Conn,
    timeout: Duration,
}

impl Client {
    /// Connects over plain TCP (within 30 s).
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Self, MllpError> {
        let tcp = connect_tcp(addr).await?;
        Ok(Self::over(Box::new(tcp)))
    }

    /// Connects over TLS (within 30 s), trusting only the CA certificates in
    /// `root_cert_pem_path`; the server's certificate must name `server_name`.
    pub async fn connect_tls(
        addr: impl ToSocketAddrs,
        server_name: &str,
        root_cert_pem_path: &Path,
    ) -> Result<Self, MllpError> {
        let config = tls::client_config(root_cert_pem_path)?;
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| MllpError::ServerName(server_name.to_owned()))?;
        let tcp = connect_tcp(addr).await?;
        let handshake = TlsConnector::from(config).connect(name, tcp);
        let tls = tokio::time::timeout(DEFAULT_TIMEOUT, handshake)
            .await
            .map_err(|_| MllpError::Stalled(DEFAULT_TIMEOUT))??;
        Ok(Self::over(Box::new(tls)))
    }

    fn over(io: Box<dyn Io>) -> Self {
        Self {
            conn: Conn::new(io, MAX_REPLY_BYTES),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets how long a write may stall, and how long the reply may take to start and
    /// then to arrive whole (default 30 s each).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `payload` as one frame and returns the reply's payload.
    pub async fn send(&mut self, payload: &[u8]) -> Result<Bytes, MllpError> {
        self.send_only(payload).await?;
        self.receive().await
    }

    /// Sends `payload` as one frame without waiting for a reply (an enhanced-mode
    /// message that asks for no ACK).
    pub async fn send_only(&mut self, payload: &[u8]) -> Result<(), MllpError> {
        self.conn.write_frame(payload, self.timeout).await
    }

    /// Reads the next reply (after a commit ACK, the application ACK).
    pub async fn receive(&mut self) -> Result<Bytes, MllpError> {
        match self
            .conn
            .read_frame(&super::ReadLimits {
                idle: self.timeout,
                frame: self.timeout,
                gap_bytes: usize::MAX,
            })
            .await?
        {
            Some(Frame::Message(reply)) => Ok(reply),
            Some(Frame::TooLarge { len, .. }) => Err(MllpError::ReplyTooLarge(len)),
            None => Err(MllpError::Closed),
        }
    }
}

async fn connect_tcp(addr: impl ToSocketAddrs) -> Result<TcpStream, MllpError> {
    let tcp = tokio::time::timeout(DEFAULT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| MllpError::Stalled(DEFAULT_TIMEOUT))??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

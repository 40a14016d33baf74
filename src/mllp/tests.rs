//! The server and client over real sockets on 127.0.0.1, with short limits.

use bytes::Bytes;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::*;

/// Replies `ACK|<payload>` after `delay`; `AR|<len>|<head length>|<head's first 16
/// bytes>` to an oversize frame; nothing (close) to `CLOSE`.
struct Echo {
    delay: Duration,
}

impl Handler for Echo {
    fn handle(&self, frame: Frame, _peer: SocketAddr) -> HandlerFuture<'_> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            match frame {
                Frame::Message(payload) if &payload[..] == b"CLOSE" => None,
                Frame::Message(payload) => Some(vec![[&b"ACK|"[..], &payload].concat().into()]),
                Frame::TooLarge { head, len } => {
                    let mut reply = format!("AR|{len}|{}|", head.len()).into_bytes();
                    reply.extend_from_slice(&head[..16]);
                    Some(vec![reply.into()])
                }
            }
        })
    }
}

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

async fn start(limits: Limits, delay: Duration, tls: Option<TlsAcceptor>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(
        listener,
        tls,
        limits,
        Arc::new(Echo { delay }),
        shutdown.clone(),
    ));
    Server {
        addr,
        shutdown,
        task,
    }
}

fn short_limits() -> Limits {
    Limits {
        idle_timeout: Duration::from_secs(2),
        frame_timeout: Duration::from_secs(2),
        shutdown_grace: Duration::from_secs(2),
        ..Limits::default()
    }
}

/// Reads until the server closes; returns what it sent and how long that took.
/// A reset counts as a close (the server drops unread bytes when it gives up).
async fn read_until_closed(stream: &mut (impl AsyncReadExt + Unpin)) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "server did not close the connection");
    (got, started.elapsed())
}

#[tokio::test]
async fn replies_in_order_on_one_connection() {
    let server = start(short_limits(), Duration::ZERO, None).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // Three frames in one write, with noise between them; then half-close.
    stream
        .write_all(b"\x0bone\x1c\x0d\r\n\x0btwo\x1c\x0dnoise\x0bthree\x1c\x0d")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let (got, _) = read_until_closed(&mut stream).await;
    assert_eq!(
        got,
        b"\x0bACK|one\x1c\x0d\x0bACK|two\x1c\x0d\x0bACK|three\x1c\x0d"
    );

    let mut client = Client::connect(server.addr).await.unwrap();
    for i in 0..20 {
        let reply = client.send(format!("MSH|{i}").as_bytes()).await.unwrap();
        assert_eq!(reply, format!("ACK|MSH|{i}").as_bytes());
    }
}

#[tokio::test]
async fn serves_connections_concurrently() {
    let delay = Duration::from_millis(100);
    let server = start(short_limits(), delay, None).await;
    let started = Instant::now();
    let clients: Vec<_> = (0..20)
        .map(|c| {
            tokio::spawn(async move {
                let mut client = Client::connect(server.addr).await.unwrap();
                for m in 0..3 {
                    let reply = client.send(format!("{c}-{m}").as_bytes()).await.unwrap();
                    assert_eq!(reply, format!("ACK|{c}-{m}").as_bytes());
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    // One after another this would take 20 × 3 × 100 ms = 6 s.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_oversize_message_reaches_the_handler_as_its_head() {
    let limits = Limits {
        max_message_bytes: 1000,
        ..short_limits()
    };
    let server = start(limits, Duration::ZERO, None).await;
    let mut client = Client::connect(server.addr).await.unwrap();
    let mut big = b"MSH|^~\\&|BIG|".to_vec();
    big.resize(100_000, b'x');
    let reply = client.send(&big).await.unwrap();
    assert_eq!(reply, &b"AR|100000|4096|MSH|^~\\&|BIG|xxx"[..]);
    // The connection is still in step.
    assert_eq!(client.send(b"next").await.unwrap(), &b"ACK|next"[..]);
}

#[tokio::test]
async fn no_reply_closes_the_connection() {
    let server = start(short_limits(), Duration::ZERO, None).await;
    let mut client = Client::connect(server.addr).await.unwrap();
    assert!(matches!(
        client.send(b"CLOSE").await,
        Err(MllpError::Closed)
    ));
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(200),
        ..short_limits()
    };
    let server = start(limits, Duration::ZERO, None).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"\x0bhello\x1c\x0d").await.unwrap();
    let (got, elapsed) = read_until_closed(&mut stream).await;
    assert_eq!(got, b"\x0bACK|hello\x1c\x0d");
    assert!(
        elapsed >= Duration::from_millis(200),
        "closed after {elapsed:?}"
    );
}

#[tokio::test]
async fn a_slow_loris_is_closed_after_the_frame_timeout() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(500),
        frame_timeout: Duration::from_millis(400),
        ..short_limits()
    };
    let server = start(limits, Duration::ZERO, None).await;
    let (mut read, mut write) = TcpStream::connect(server.addr).await.unwrap().into_split();
    // One byte every 100 ms keeps the idle timer from ever firing.
    let trickle = tokio::spawn(async move {
        write.write_all(b"\x0b").await?;
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            write.write_all(b"M").await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let started = Instant::now();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), read.read_to_end(&mut got)).await;
    assert!(closed.is_ok(), "a trickling frame held the connection open");
    assert!(got.is_empty());
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400),
        "closed after {elapsed:?}"
    );
    trickle.abort();
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let limits = Limits {
        max_connections: 2,
        ..short_limits()
    };
    let server = start(limits, Duration::ZERO, None).await;
    let mut first = Client::connect(server.addr).await.unwrap();
    let mut second = Client::connect(server.addr).await.unwrap();
    assert_eq!(first.send(b"1").await.unwrap(), &b"ACK|1"[..]);
    assert_eq!(second.send(b"2").await.unwrap(), &b"ACK|2"[..]);

    let mut third = TcpStream::connect(server.addr).await.unwrap();
    let (got, elapsed) = read_until_closed(&mut third).await;
    assert!(got.is_empty());
    assert!(elapsed < Duration::from_secs(1), "closed after {elapsed:?}");

    drop(first);
    // The freed slot is usable again (the server notices the close after a moment).
    let mut reply = None;
    for _ in 0..50 {
        let mut client = Client::connect(server.addr).await.unwrap();
        if let Ok(got) = client.send(b"again").await {
            reply = Some(got);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reply.as_deref(), Some(&b"ACK|again"[..]));
}

#[tokio::test]
async fn shutdown_finishes_the_message_in_hand() {
    let server = start(short_limits(), Duration::from_millis(200), None).await;
    let mut busy = Client::connect(server.addr).await.unwrap();
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    let in_flight = tokio::spawn(async move {
        let reply = busy.send(b"in flight").await;
        (reply, busy)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    server.shutdown.cancel();

    let (reply, mut busy) = in_flight.await.unwrap();
    assert_eq!(reply.unwrap(), &b"ACK|in flight"[..]);
    assert!(busy.send(b"after").await.is_err());
    let (got, _) = read_until_closed(&mut idle).await;
    assert!(got.is_empty());
    tokio::time::timeout(Duration::from_secs(1), server.task)
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "still accepting"
    );
}

/// A directory of its own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("crossway-mllp-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn write(&self, file: &str, contents: &str) -> PathBuf {
        let path = self.0.join(file);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn tls_round_trip() {
    let dir = TempDir::new("tls");
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.write("cert.pem", &generated.cert.pem());
    let key = dir.write("key.pem", &generated.signing_key.serialize_pem());

    let acceptor = tls_acceptor(&cert, &key).unwrap();
    let server = start(short_limits(), Duration::ZERO, Some(acceptor)).await;
    let mut client = Client::connect_tls(server.addr, "localhost", &cert)
        .await
        .unwrap();
    for i in 0..3 {
        let reply = client.send(format!("MSH|{i}").as_bytes()).await.unwrap();
        assert_eq!(reply, format!("ACK|MSH|{i}").as_bytes());
    }

    // A plain-TCP sender is refused, and the server goes on.
    let mut plain = Client::connect(server.addr).await.unwrap();
    assert!(plain.send(b"plain").await.is_err());
    let mut again = Client::connect_tls(server.addr, "localhost", &cert)
        .await
        .unwrap();
    assert_eq!(again.send(b"ok").await.unwrap(), &b"ACK|ok"[..]);

    // The certificate must name the host.
    let wrong = Client::connect_tls(server.addr, "elsewhere.example", &cert).await;
    assert!(matches!(wrong, Err(MllpError::Io(_))));
}

#[tokio::test]
async fn with_a_client_ca_a_sender_without_a_certificate_is_refused() {
    let dir = TempDir::new("tls-client-ca");
    let server_cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.write("cert.pem", &server_cert.cert.pem());
    let key = dir.write("key.pem", &server_cert.signing_key.serialize_pem());
    let ca = rcgen::generate_simple_self_signed(vec!["senders".to_owned()]).unwrap();
    let client_ca = dir.write("client-ca.pem", &ca.cert.pem());

    let config = super::server_config(&cert, &key, &client_ca).unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let server = start(short_limits(), Duration::ZERO, Some(acceptor)).await;
    // The handshake (or the first read after it, in TLS 1.3) fails: no certificate.
    let refused = match Client::connect_tls(server.addr, "localhost", &cert).await {
        Ok(mut client) => client.send(b"MSH|1").await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a sender without a client certificate was served");
    // Without a client CA the same sender is served.
    let open = start(
        short_limits(),
        Duration::ZERO,
        Some(tls_acceptor(&cert, &key).unwrap()),
    )
    .await;
    let mut client = Client::connect_tls(open.addr, "localhost", &cert)
        .await
        .unwrap();
    assert_eq!(client.send(b"MSH|1").await.unwrap(), &b"ACK|MSH|1"[..]);
}

#[test]
fn tls_errors_name_the_file() {
    let dir = TempDir::new("tls-errors");
    let missing = dir.0.join("missing.pem");
    let not_pem = dir.write("not.pem", "hello\n");
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.write("cert.pem", &generated.cert.pem());
    let other_key = rcgen::KeyPair::generate().unwrap();
    let other_key = dir.write("other-key.pem", &other_key.serialize_pem());

    let message = |cert: &Path, key: &Path| tls_acceptor(cert, key).err().unwrap().to_string();
    let shown = |path: &Path| path.display().to_string();
    assert!(message(&missing, &other_key).starts_with(&format!("cannot read {}", shown(&missing))));
    assert_eq!(
        message(&not_pem, &other_key),
        format!("{}: no CERTIFICATE block", shown(&not_pem))
    );
    assert!(
        message(&cert, &not_pem)
            .starts_with(&format!("{}: no usable private key", shown(&not_pem)))
    );
    let mismatch = message(&cert, &other_key);
    assert!(
        mismatch.contains(&shown(&cert)) && mismatch.contains(&shown(&other_key)),
        "{mismatch}"
    );
}

#[test]
fn frame_debug_hides_the_payload() {
    let frame = Frame::Message(Bytes::from_static(b"PID|||123456^^^MRN||DOE^JANE"));
    assert_eq!(format!("{frame:?}"), "Message(28 bytes)");
}

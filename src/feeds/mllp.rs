//! The MLLP listener's handler: a frame in, the feed's ACKs out, each exchange audited.

use std::net::SocketAddr;

use super::Feed;
use crate::audit::{Access, AuditLog};
use crate::mllp;

/// The MLLP face: frames in, the feed's ACK out.
pub struct FeedHandler {
    pub feed: Feed,
    pub audit: AuditLog,
    /// The largest frame the listener reads, for the AR that refuses a larger one.
    pub limit: usize,
}

impl mllp::Handler for FeedHandler {
    fn handle(&self, frame: mllp::Frame, peer: SocketAddr) -> mllp::HandlerFuture<'_> {
        Box::pin(async move {
            let (outcome, acks, entity) = match frame {
                mllp::Frame::Message(bytes) => {
                    let entity = crate::hie::adt::describe(&bytes);
                    let (outcome, acks) = self.feed.hl7v2(&bytes).await;
                    (outcome, acks?, entity)
                }
                mllp::Frame::TooLarge { head, len } => (
                    Some(crate::hl7v2::AckCode::Reject),
                    vec![self.feed.too_large(&head, len, self.limit)],
                    format!("oversize message ({len} bytes)"),
                ),
            };
            let codes: Vec<&str> = acks.iter().map(|a| crate::hie::adt::ack_code(a)).collect();
            let client = format!("mllp:{}", peer.ip());
            self.audit.record(Access {
                client_id: &client,
                organization: None,
                face: "mllp",
                action: "C",
                entity,
                detail: if codes.is_empty() {
                    "no ACK asked for".into()
                } else {
                    format!("ACK {}", codes.join(" "))
                },
                outcome: match outcome {
                    Some(crate::hl7v2::AckCode::Accept) => 200,
                    Some(crate::hl7v2::AckCode::Error) | None => 422,
                    _ => 400,
                },
                trace_id: "",
            });
            Some(acks.into_iter().map(|a| a.into_bytes().into()).collect())
        })
    }
}

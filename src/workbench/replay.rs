//! `crossway mappings replay --since T --dir CANDIDATE`: stored inbound messages (HL7 v2
//! and Da Vinci notifications, as received) go through the current mappings and through
//! a candidate directory; what the candidate would change is reported, message by
//! message, before it goes live. Nothing is written.

use serde_json::Value;

use super::samples::{diff, notice_json, pretty};
use crate::hie::stored_notice;
use crate::mapping::Mappings;
use crate::store::InboundMessage;

/// One stored message the candidate maps differently.
#[derive(Debug)]
pub struct Change {
    pub message: InboundMessage,
    /// Current `-`, candidate `+`.
    pub diff: String,
}

/// The messages whose mapping output differs between `current` and `candidate`.
pub fn changes(
    messages: Vec<InboundMessage>,
    current: &Mappings,
    candidate: &Mappings,
) -> Vec<Change> {
    messages
        .into_iter()
        .filter_map(|message| {
            let before = output(&message, current);
            let after = output(&message, candidate);
            (before != after).then(|| Change {
                diff: diff(&pretty(&before), &pretty(&after)),
                message,
            })
        })
        .collect()
}

fn output(message: &InboundMessage, mappings: &Mappings) -> Value {
    notice_json(stored_notice(message, &mappings.feeds, &mappings.identity))
}

//! The referral: one lifecycle shared by the FHIR face (Task.status, the IG's state
//! diagram) and the CBO face (`CboStatus`, derived from the whole Task: a `failed`
//! Task is `closed`, or `expired` when the gateway's sweep failed it), the CBO actions
//! that move it (`action`; `action::route` finds the fewest actions from one CBO status
//! to another, for connectors), the CBO's view of it (`projection`), what an EHR's
//! codes and addresses mean (`routing`), and the organisations referrals go to
//! (`tenants`, the one part that reads the store).
//!
//! Invariant: every status change on either face goes through [`TaskStatus::can_move_to`],
//! so the two faces can never disagree about what is allowed.

pub mod action;
pub mod projection;
pub mod routing;
pub mod tenants;

pub use action::{Action, ActionError, CloseOutcome, DeclineReason, Edit};
pub use projection::{Projection, Related};

use serde_json::Value;

/// Task.status values of the SDOHCC Task for Referral Management.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Draft,
    Requested,
    Accepted,
    Rejected,
    Cancelled,
    InProgress,
    OnHold,
    Completed,
    Failed,
    EnteredInError,
}

impl TaskStatus {
    /// Parses a Task.status. `received` is outside the IG's value set but the reference
    /// EHR sends it; it means `requested`.
    pub fn parse(s: &str) -> Option<TaskStatus> {
        Some(match s {
            "draft" => TaskStatus::Draft,
            "requested" | "received" => TaskStatus::Requested,
            "accepted" => TaskStatus::Accepted,
            "rejected" => TaskStatus::Rejected,
            "cancelled" => TaskStatus::Cancelled,
            "in-progress" => TaskStatus::InProgress,
            "on-hold" => TaskStatus::OnHold,
            "completed" => TaskStatus::Completed,
            "failed" => TaskStatus::Failed,
            "entered-in-error" => TaskStatus::EnteredInError,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Draft => "draft",
            TaskStatus::Requested => "requested",
            TaskStatus::Accepted => "accepted",
            TaskStatus::Rejected => "rejected",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::InProgress => "in-progress",
            TaskStatus::OnHold => "on-hold",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::EnteredInError => "entered-in-error",
        }
    }

    /// The IG's state diagram. Staying in the same status is always allowed (an update
    /// that changes other elements).
    pub fn can_move_to(self, to: TaskStatus) -> bool {
        use TaskStatus::*;
        if self == to || to == EnteredInError {
            return true;
        }
        match self {
            Draft => to == Requested,
            Requested => matches!(to, Accepted | Rejected | Cancelled),
            Accepted => matches!(to, InProgress | OnHold | Cancelled | Completed | Failed),
            InProgress => matches!(to, Completed | Failed | OnHold | Cancelled),
            OnHold => matches!(to, InProgress | Cancelled | Completed | Failed),
            Rejected | Cancelled | Completed | Failed | EnteredInError => false,
        }
    }

    /// Statuses reachable from this one, for error messages.
    pub fn next_statuses(self) -> Vec<&'static str> {
        ALL.iter()
            .filter(|&&s| s != self && self.can_move_to(s))
            .map(|s| s.as_str())
            .collect()
    }

    /// Statuses that need a `statusReason` with text (IG: SHOULD).
    pub fn expects_reason(self) -> bool {
        matches!(
            self,
            TaskStatus::Rejected | TaskStatus::Cancelled | TaskStatus::OnHold | TaskStatus::Failed
        )
    }
}

/// The status a CBO sees (cbo-api.md lifecycle). Several Task statuses carry more than
/// one CBO status (a `failed` Task is a closed or an expired referral), so the CBO
/// status is derived from the whole Task, not from `Task.status` alone.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CboStatus {
    Pending,
    Accepted,
    InProgress,
    OnHold,
    Declined,
    Closed,
    Cancelled,
    Expired,
}

impl CboStatus {
    pub const ALL: [CboStatus; 8] = [
        CboStatus::Pending,
        CboStatus::Accepted,
        CboStatus::InProgress,
        CboStatus::OnHold,
        CboStatus::Declined,
        CboStatus::Closed,
        CboStatus::Cancelled,
        CboStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CboStatus::Pending => "pending",
            CboStatus::Accepted => "accepted",
            CboStatus::InProgress => "in_progress",
            CboStatus::OnHold => "on_hold",
            CboStatus::Declined => "declined",
            CboStatus::Closed => "closed",
            CboStatus::Cancelled => "cancelled",
            CboStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<CboStatus> {
        CboStatus::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The CBO status of a Task, or `None` when its status is not a Task status.
    pub fn of_task(task: &Value) -> Option<CboStatus> {
        let status = TaskStatus::parse(task.get("status")?.as_str()?)?;
        Some(match status {
            TaskStatus::Draft | TaskStatus::Requested => CboStatus::Pending,
            TaskStatus::Accepted => CboStatus::Accepted,
            TaskStatus::InProgress => CboStatus::InProgress,
            TaskStatus::OnHold => CboStatus::OnHold,
            TaskStatus::Rejected => CboStatus::Declined,
            TaskStatus::Completed => CboStatus::Closed,
            TaskStatus::Cancelled | TaskStatus::EnteredInError => CboStatus::Cancelled,
            TaskStatus::Failed if action::is_expiry(task) => CboStatus::Expired,
            TaskStatus::Failed => CboStatus::Closed,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            CboStatus::Declined | CboStatus::Closed | CboStatus::Cancelled | CboStatus::Expired
        )
    }
}

const ALL: [TaskStatus; 10] = [
    TaskStatus::Draft,
    TaskStatus::Requested,
    TaskStatus::Accepted,
    TaskStatus::Rejected,
    TaskStatus::Cancelled,
    TaskStatus::InProgress,
    TaskStatus::OnHold,
    TaskStatus::Completed,
    TaskStatus::Failed,
    TaskStatus::EnteredInError,
];

/// The events a CBO hears of (webhooks, connectors): what an endpoint may subscribe to.
pub const EVENT_TYPES: &[&str] = &[
    "referral.created",
    "referral.updated",
    "referral.status_changed",
    "referral.note_added",
    "referral.cancelled",
    "referral.expired",
    "client.admitted",
    "client.discharged",
    "client.admission_cancelled",
    "client.discharge_cancelled",
    "webhook.endpoint_disabled",
];

#[cfg(test)]
mod tests {
    use super::TaskStatus::*;
    use super::*;

    #[test]
    fn follows_the_ig_state_diagram() {
        assert!(Requested.can_move_to(Accepted));
        assert!(Accepted.can_move_to(InProgress));
        assert!(OnHold.can_move_to(InProgress));
        assert!(!Requested.can_move_to(Completed));
        assert!(!Completed.can_move_to(InProgress));
        assert!(!Rejected.can_move_to(Accepted));
        assert!(Completed.can_move_to(EnteredInError));
        assert_eq!(
            Requested.next_statuses(),
            ["accepted", "rejected", "cancelled", "entered-in-error"]
        );
    }

    #[test]
    fn a_failed_task_is_closed_unless_the_gateway_expired_it() {
        let failed = serde_json::json!({"status": "failed"});
        assert_eq!(CboStatus::of_task(&failed), Some(CboStatus::Closed));
        let expired = serde_json::json!({"status": "failed", "statusReason": {
            "coding": [{"system": action::STATUS_REASON_SYSTEM, "code": "expired"}]}});
        assert_eq!(CboStatus::of_task(&expired), Some(CboStatus::Expired));
        let received = serde_json::json!({"status": "received"});
        assert_eq!(CboStatus::of_task(&received), Some(CboStatus::Pending));
    }

    #[test]
    fn received_means_requested() {
        assert_eq!(TaskStatus::parse("received"), Some(Requested));
        assert_eq!(TaskStatus::parse("ready"), None);
    }
}

//! The referral: one lifecycle shared by the FHIR face (Task.status) and the CBO face.
//!
//! Invariant: every status change on either face goes through [`TaskStatus::can_move_to`],
//! so the two faces can never disagree about what is allowed.

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

    /// The referral status a CBO sees (cbo-api.md lifecycle).
    pub fn cbo_status(self) -> &'static str {
        match self {
            TaskStatus::Draft | TaskStatus::Requested => "pending",
            TaskStatus::Accepted => "accepted",
            TaskStatus::Rejected => "declined",
            TaskStatus::InProgress => "in_progress",
            TaskStatus::OnHold => "on_hold",
            TaskStatus::Completed => "closed",
            TaskStatus::Cancelled | TaskStatus::EnteredInError => "cancelled",
            TaskStatus::Failed => "expired",
        }
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
    fn received_means_requested() {
        assert_eq!(TaskStatus::parse("received"), Some(Requested));
        assert_eq!(TaskStatus::parse("ready"), None);
    }
}

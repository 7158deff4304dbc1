//! Task and project states (docs/architecture.md, "State").

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($name::$variant),)+
                    other => Err(format!(concat!("unknown ", stringify!($name), " {:?}"), other)),
                }
            }
        }
    };
}

string_enum!(
    /// `pending` → `ready` → `running` → `merging` → `done`; `running` →
    /// `failed` only when no attempt is left (otherwise back to `ready`);
    /// `blocked` when a dependency failed for good; `cancelled`. With
    /// `review = "tasks"` a committed attempt waits in `review` (between
    /// `running` and `merging`) until a person approves (→ `merging`) or
    /// rejects it (→ `ready`, a new attempt with the comment).
    TaskState {
        Pending => "pending",
        Ready => "ready",
        Running => "running",
        Review => "review",
        Merging => "merging",
        Done => "done",
        Failed => "failed",
        Blocked => "blocked",
        Cancelled => "cancelled",
    }
);

impl TaskState {
    /// No further transition happens from this state in this run.
    pub fn is_terminal(self) -> bool {
        match self {
            TaskState::Done | TaskState::Failed | TaskState::Blocked | TaskState::Cancelled => true,
            TaskState::Pending
            | TaskState::Ready
            | TaskState::Running
            | TaskState::Review
            | TaskState::Merging => false,
        }
    }
}

string_enum!(
    /// A project's lifecycle. `interrupted` means the supervisor stopped
    /// (Ctrl-C) and `agentswarm resume` can carry it on.
    ProjectState {
        Queued => "queued",
        Planning => "planning",
        Running => "running",
        Done => "done",
        Failed => "failed",
        Interrupted => "interrupted",
        Cancelled => "cancelled",
        /// The budget (`max_cost_usd`, `max_tokens`) is spent; `resume`
        /// with a higher one carries on.
        BudgetExhausted => "budget_exhausted",
        /// A provider refused the API key (or none is set); `resume` once it is fixed.
        Paused => "paused",
    }
);

impl ProjectState {
    /// Stopped until an operator acts (raises the budget, fixes the key)
    /// and runs `agentswarm resume`; `serve` does not pick it up by itself.
    pub fn awaits_operator(self) -> bool {
        matches!(self, ProjectState::BudgetExhausted | ProjectState::Paused)
    }

    /// `agentswarm resume` (or `POST …/resume`) can carry it on: it
    /// failed, was interrupted, ran out of budget or was paused. Done and
    /// cancelled projects never run again; live ones are running already.
    pub fn is_resumable(self) -> bool {
        match self {
            ProjectState::Failed
            | ProjectState::Interrupted
            | ProjectState::BudgetExhausted
            | ProjectState::Paused => true,
            ProjectState::Queued
            | ProjectState::Planning
            | ProjectState::Running
            | ProjectState::Done
            | ProjectState::Cancelled => false,
        }
    }

    pub fn is_terminal(self) -> bool {
        match self {
            ProjectState::Done | ProjectState::Failed | ProjectState::Cancelled => true,
            ProjectState::Queued
            | ProjectState::Planning
            | ProjectState::Running
            | ProjectState::Interrupted
            | ProjectState::BudgetExhausted
            | ProjectState::Paused => false,
        }
    }
}

string_enum!(
    /// How one attempt of a task ended.
    AttemptOutcome {
        Running => "running",
        Merged => "merged",
        /// The agent gave up, ran out of turns, or a tool/model error ended it.
        Failed => "failed",
        /// The merge into `main` conflicted; the task runs again on the new `main`.
        Conflict => "conflict",
        /// The worker process died (exit code or signal in the reason).
        Crashed => "crashed",
        Timeout => "timeout",
        MemoryLimit => "memory_limit",
        /// The supervisor stopped; not counted against `max_attempts`.
        Interrupted => "interrupted",
        /// The agent was caught in a loop (the same call and result over and
        /// over, alternating actions, replies without tools, …) and went on
        /// after being told; counted like `failed`.
        Stuck => "stuck",
        /// A person rejected its commit in review (`review = "tasks"`); the
        /// next attempt's prompt carries the comment. Not counted against
        /// `max_attempts`: the person decides when to stop.
        Rejected => "rejected",
        /// Its commit waits for a person's review (`review = "tasks"`); it
        /// becomes `merged` or `rejected` when they decide.
        Review => "review",
    }
);

string_enum!(
    /// Whether a person reviews the work before it lands (`[run] review`,
    /// `--review`, the API's `review` option; docs/existing-repos.md).
    ReviewMode {
        /// No review: tasks merge and the delivery is written at once.
        Off => "off",
        /// Each code task's commit waits in `review` until approved.
        Tasks => "tasks",
        /// Tasks merge as usual; the delivery branch (and its push) waits
        /// until the whole change is approved.
        Delivery => "delivery",
    }
);

// By hand: `string_enum!` derives a fixed set of traits, Default not among them.
#[allow(clippy::derivable_impls)]
impl Default for ReviewMode {
    fn default() -> Self {
        ReviewMode::Off
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_strings() {
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>().unwrap(), *s);
            assert_eq!(
                serde_json::to_string(s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        for s in ProjectState::ALL {
            assert_eq!(s.as_str().parse::<ProjectState>().unwrap(), *s);
        }
        for s in ReviewMode::ALL {
            assert_eq!(s.as_str().parse::<ReviewMode>().unwrap(), *s);
        }
        for s in AttemptOutcome::ALL {
            assert_eq!(s.as_str().parse::<AttemptOutcome>().unwrap(), *s);
        }
        assert!("bogus".parse::<TaskState>().is_err());
    }
}

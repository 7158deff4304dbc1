//! Serde types only: ids, the plan document, task and project states, the
//! worker ⇄ supervisor messages, the HTTP API's payloads and the
//! OpenAI-compatible chat wire format.
//!
//! This crate depends on nothing of ours; every other crate may depend on it.

pub mod agent;
pub mod api;
pub mod chat;
pub mod ids;
pub mod node;
pub mod plan;
pub mod sandbox;
pub mod source;
pub mod state;
pub mod text;
pub mod worker;

pub use ids::{ProjectId, TaskId};
pub use plan::{Plan, PlanTask, TaskKind};
pub use state::{AttemptOutcome, ProjectState, ReviewMode, TaskState};

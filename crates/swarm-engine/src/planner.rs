//! Asking the model for a plan (and for fix tasks), with re-asks when the
//! plan breaks rules.

use crate::gateway::{Caller, Gateway};
use crate::plan::{extract_plan, validate_fix_tasks, validate_plan};
use crate::prompts;
use std::collections::HashSet;
use swarm_config::ModelRole;
use swarm_protocol::chat::ChatMessage;
use swarm_protocol::{Plan, ProjectId, TaskId};

/// How many times a broken plan goes back to the planner.
pub const MAX_REASKS: u32 = 2;

#[derive(Debug)]
pub enum PlanError {
    /// The plan still broke rules after the re-asks.
    Invalid(Vec<String>),
    /// The model call itself failed.
    Model(String),
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::Invalid(p) => write!(
                f,
                "the planner's plan was still invalid after {MAX_REASKS} re-asks:\n  - {}",
                p.join("\n  - ")
            ),
            PlanError::Model(e) => write!(f, "the planner model call failed: {e}"),
        }
    }
}

pub struct PlanOutcome {
    pub result: Result<Plan, PlanError>,
    /// Model calls made (1 + re-asks).
    pub calls: u32,
}

enum Kind<'a> {
    /// With the repository's checks, given to a verify task without commands.
    Initial(Option<&'a crate::checks::Checks>),
    Fix {
        existing: &'a HashSet<TaskId>,
    },
}

async fn ask(
    gateway: &Gateway,
    caller: Caller<'_>,
    system: &str,
    first: String,
    kind: Kind<'_>,
    max_tasks: u32,
) -> PlanOutcome {
    let mut messages = vec![ChatMessage::system(system), ChatMessage::user(first)];
    let mut calls = 0;
    loop {
        calls += 1;
        let caller = Caller {
            turn: calls,
            ..caller
        };
        let reply = match gateway.complete(caller, messages.clone(), Vec::new()).await {
            Ok(c) => c.reply.message,
            Err(e) => {
                return PlanOutcome {
                    result: Err(PlanError::Model(e.to_string())),
                    calls,
                }
            }
        };
        let content = reply.content.clone().unwrap_or_default();
        let problems = match extract_plan(&content) {
            Ok(mut plan) => {
                let problems = match kind {
                    Kind::Initial(checks) => {
                        crate::checks::fill_verify(&mut plan, checks);
                        validate_plan(&plan, max_tasks)
                    }
                    Kind::Fix { existing } => validate_fix_tasks(&plan, existing, max_tasks),
                };
                if problems.is_empty() {
                    return PlanOutcome {
                        result: Ok(plan),
                        calls,
                    };
                }
                problems
            }
            Err(problems) => problems,
        };
        tracing::warn!(attempt = calls, problems = ?problems, "planner returned an unusable plan");
        if calls > MAX_REASKS {
            return PlanOutcome {
                result: Err(PlanError::Invalid(problems)),
                calls,
            };
        }
        messages.push(ChatMessage::assistant(content));
        messages.push(ChatMessage::user(prompts::planner_reask(&problems)));
    }
}

/// Asks for the project's plan; `request` is the first user message
/// ([`prompts::planner_request`], or for an existing repository
/// [`prompts::planner_request_on_repo`]).
pub async fn plan_with(
    gateway: &Gateway,
    project: &ProjectId,
    request: String,
    max_tasks: u32,
    checks: Option<&crate::checks::Checks>,
) -> PlanOutcome {
    let caller = Caller {
        project,
        task: None,
        attempt: None,
        role: ModelRole::Planner,
        turn: 1,
    };
    ask(
        gateway,
        caller,
        prompts::PLANNER_SYSTEM,
        request,
        Kind::Initial(checks),
        max_tasks,
    )
    .await
}

pub async fn fix_plan(
    gateway: &Gateway,
    project: &ProjectId,
    request: String,
    existing: &HashSet<TaskId>,
    max_tasks: u32,
) -> PlanOutcome {
    let caller = Caller {
        project,
        task: None,
        attempt: None,
        role: ModelRole::Fixer,
        turn: 1,
    };
    ask(
        gateway,
        caller,
        prompts::FIXER_SYSTEM,
        request,
        Kind::Fix { existing },
        max_tasks,
    )
    .await
}

/// Asks for the tasks of a follow-up goal on a project's `main`
/// (`run --continue`): code tasks only, validated as fix tasks are;
/// `request` begins with `Goal: ` ([`prompts::continue_request`]).
pub async fn continue_plan(
    gateway: &Gateway,
    project: &ProjectId,
    request: String,
    existing: &HashSet<TaskId>,
    max_tasks: u32,
) -> PlanOutcome {
    let caller = Caller {
        project,
        task: None,
        attempt: None,
        role: ModelRole::Planner,
        turn: 1,
    };
    ask(
        gateway,
        caller,
        prompts::CONTINUE_SYSTEM,
        request,
        Kind::Fix { existing },
        max_tasks,
    )
    .await
}

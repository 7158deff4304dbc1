//! The lines a run writes for people: progress lines, task errors and the
//! failure summary of a project. Tests and the docs quote some of them
//! (`blocked: dependency …`, `no attempts left of …`, `merge conflict in …`).

use crate::prompts::CommandResult;
use std::collections::BTreeMap;
use std::time::SystemTime;
use swarm_protocol::{ProjectId, TaskId, TaskState};
use swarm_store::TaskRecord;

/// `s` cut to `n` characters, with `…` when something was cut.
pub(crate) fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// `[3/7] task api: running -> merging`, with the attempt when it starts
/// and the error when it goes back, fails or is blocked. `task` is the
/// record after the change; `done` counts it when it is done.
pub(crate) fn transition(
    task: &TaskRecord,
    from: TaskState,
    to: TaskState,
    done: usize,
    total: usize,
) -> String {
    let mut msg = format!("[{done}/{total}] task {}: {from} -> {to}", task.id);
    if to == TaskState::Running {
        msg.push_str(&format!(" (attempt {})", task.attempt));
    }
    let explained = matches!(
        to,
        TaskState::Ready | TaskState::Failed | TaskState::Blocked
    ) && from != TaskState::Pending;
    if let (Some(err), true) = (&task.last_error, explained) {
        msg.push_str(&format!(": {}", truncate(err, 300)));
    }
    msg
}

pub(crate) fn waiting_for_nodes() -> String {
    "waiting: every node that can run the ready tasks is busy, down or refused (`agentswarm status` shows the nodes)".into()
}

/// A task's commit waits for a person: what to run.
pub(crate) fn review_waiting(project: &ProjectId, task: &TaskId) -> String {
    format!(
        "{task}: waits for review: `agentswarm review {project} {task}` shows the diff; \
         add --approve to merge it, or --reject \"what to change\" for a new attempt"
    )
}

pub(crate) fn waiting_for_slots(max_concurrent_workers: u32) -> String {
    format!(
        "waiting: all {max_concurrent_workers} worker slots (MAX_CONCURRENT_WORKERS) are in use by other projects"
    )
}

/// Work that needs `provider` waits for its quota reset at `until`.
/// `provider` is a provider's name, or `agent NAME` for an outside agent
/// on its own credentials.
pub(crate) fn waiting_for_quota(provider: &str, until: SystemTime, reason: &str) -> String {
    let who = match provider.strip_prefix("agent ") {
        Some(agent) => format!("agent {agent} is out of its usage limit"),
        None => format!("provider {provider} is out of quota"),
    };
    format!(
        "waiting: {who} until {}; work that needs it resumes by itself then ({})",
        humantime::format_rfc3339_seconds(until),
        truncate(reason.lines().next().unwrap_or_default(), 160)
    )
}

pub(crate) fn no_attempts_left(reason: &str, attempt: u32, max_attempts: u32) -> String {
    format!("{reason} (attempt {attempt}; no attempts left of {max_attempts})")
}

pub(crate) fn merge_conflict(paths: &[String]) -> String {
    format!(
        "merge conflict in {}; re-running on the new main",
        paths.join(", ")
    )
}

pub(crate) fn verify_starts(commands: usize) -> String {
    format!("verify: running {commands} command(s) on a clean checkout of main")
}

/// ``verify: `cargo test` → ok (1200 ms)``
pub(crate) fn verify_result(r: &CommandResult) -> String {
    format!(
        "verify: `{}` → {} ({} ms)",
        r.command,
        if r.passed {
            "ok".to_owned()
        } else {
            r.exit.clone()
        },
        r.duration_ms
    )
}

/// ``verify failed: `cargo test` (exit status: 101), …``
pub(crate) fn verify_failed(results: &[CommandResult]) -> String {
    format!(
        "verify failed: {}",
        results
            .iter()
            .filter(|r| !r.passed)
            .map(|r| format!("`{}` ({})", r.command, r.exit))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Why a run ended without a passing verify: each failed or unfinished
/// task with its reason, then the tasks they blocked.
pub(crate) fn failure_summary(order: &[TaskId], tasks: &BTreeMap<TaskId, TaskRecord>) -> String {
    let mut parts = Vec::new();
    let mut blocked: Vec<&str> = Vec::new();
    for id in order {
        let Some(t) = tasks.get(id) else { continue };
        match t.state {
            TaskState::Failed => parts.push(format!(
                "task {} failed: {}",
                id,
                t.last_error.as_deref().unwrap_or("unknown reason")
            )),
            TaskState::Pending | TaskState::Ready | TaskState::Running | TaskState::Merging => {
                parts.push(format!("task {id} did not finish ({})", t.state))
            }
            TaskState::Review => parts.push(format!("task {id} still waits for review")),
            TaskState::Blocked => blocked.push(id.as_str()),
            TaskState::Done | TaskState::Cancelled => {}
        }
    }
    if !blocked.is_empty() {
        parts.push(format!("blocked by those: {}", blocked.join(", ")));
    }
    if parts.is_empty() {
        "the run ended without a passing verify".into()
    } else {
        parts.join("; ")
    }
}

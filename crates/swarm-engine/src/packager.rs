//! Per-task archives (as each task merges) and the delivery (at the end),
//! with manifest.json built from the store.

use crate::prompts::CommandResult;
use std::path::{Path, PathBuf};
use swarm_protocol::{ProjectId, TaskState};
use swarm_store::{ProjectRecord, Store, TaskRecord};

/// `OUTPUTS_DIR/<project>`.
pub fn project_outputs(outputs_dir: &Path, project: &ProjectId) -> PathBuf {
    outputs_dir.join(project.as_str())
}

/// Writes `OUTPUTS_DIR/<project>/tasks/<task>.tar.gz` from the task's worktree.
pub fn task_archive(
    outputs: &Path,
    project: &ProjectId,
    task: &TaskRecord,
    worktree: &Path,
    files: &[String],
) -> Result<PathBuf, String> {
    let path = outputs.join("tasks").join(format!("{}.tar.gz", task.id));
    let manifest = serde_json::json!({
        "project": project,
        "task": task.id,
        "title": task.title,
        "attempt": task.attempt,
        "commit": task.commit,
        "summary": task.summary,
    });
    swarm_package::write_archive(&path, task.id.as_str(), worktree, files, manifest)
        .map_err(|e| e.to_string())?;
    Ok(path)
}

/// The manifest.json the engine writes (swarm-package adds the file lists).
pub fn manifest_json(
    project: &ProjectRecord,
    tasks: &[TaskRecord],
    status: &str,
    final_commit: Option<&str>,
    verify: Option<&[CommandResult]>,
    store: &dyn Store,
) -> serde_json::Value {
    let usage = store.usage(&project.id).unwrap_or_default();
    let (calls, input, output) = usage.iter().fold((0, 0, 0), |a, u| {
        (a.0 + u.calls, a.1 + u.input_tokens, a.2 + u.output_tokens)
    });
    let tasks_json: Vec<serde_json::Value> = tasks
        .iter()
        .map(|t| {
            serde_json::json!({
                "id": t.id,
                "title": t.title,
                "kind": t.kind.as_str(),
                "state": t.state.as_str(),
                "attempts": t.attempt,
                "commit": t.commit,
                "merge_commit": t.merge_commit,
                "files": t.changed_files,
                "summary": t.summary,
                "last_error": if t.state == TaskState::Done { None } else { t.last_error.clone() },
                "fix_round": t.fix_round,
            })
        })
        .collect();
    serde_json::json!({
        "agentswarm_version": env!("CARGO_PKG_VERSION"),
        "project": project.id,
        "name": project.name,
        "goal": project.goal,
        "summary": project.plan.as_ref().map(|p| p.summary.clone()),
        "status": status,
        "final_commit": final_commit,
        "created": humantime::format_rfc3339_seconds(ms_to_time(project.created_ms)).to_string(),
        "finished": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "tasks_total": tasks.len(),
        "tasks_done": tasks.iter().filter(|t| t.state == TaskState::Done).count(),
        "tasks": tasks_json,
        "verify": {
            "passed": verify.map(|v| !v.is_empty() && v.iter().all(|r| r.passed)),
            "fix_rounds": project.fix_round,
            "results": verify.map(|v| v.iter().map(|r| serde_json::json!({
                "command": r.command, "exit": r.exit, "passed": r.passed,
                "duration_ms": r.duration_ms, "output_tail": tail(&r.output, 2000),
            })).collect::<Vec<_>>()),
        },
        "model": {
            "calls": calls,
            "input_tokens": input,
            "output_tokens": output,
            "planner_calls": project.planner_calls,
            "by_role": usage,
        },
        "plan": project.plan,
    })
}

fn ms_to_time(ms: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64)
}

fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut start = s.len() - n;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

//! Per-task archives (as each task merges) and the delivery (at the end),
//! with manifest.json built from the store. Both withhold the files that hold
//! a secret: a key shape (`sk-…`, `AKIA…`, a PEM private key…) or one of the
//! configured key values.
//!
//! swarm-package takes the scan as a function rather than depending on
//! swarm-llm: packaging stays pure file work, with no model client (reqwest,
//! tokio) under it, and the engine, which holds the configured keys, decides
//! what counts as a secret.

use crate::prompts::CommandResult;
use std::path::{Path, PathBuf};
use swarm_llm::redact::{key_shapes, Redactor};
use swarm_package::{Delivery, Packed, Withheld};
use swarm_protocol::{ProjectId, TaskId, TaskState};
use swarm_store::{ProjectRecord, Store, TaskRecord};

/// `OUTPUTS_DIR/<project>`.
pub fn project_outputs(outputs_dir: &Path, project: &ProjectId) -> PathBuf {
    outputs_dir.join(project.as_str())
}

/// What secret `text` holds, for a file of an archive: every key shape in
/// it, or else a configured key value; `None` if neither. Names the kind of
/// secret, never the secret: e.g. `an OpenAI-style key (sk-…)`.
pub fn secret_in(redactor: &Redactor, text: &str) -> Option<String> {
    let shapes = key_shapes(text);
    if !shapes.is_empty() {
        let kinds: Vec<String> = shapes.iter().map(|s| with_article(s)).collect();
        return Some(join_and(&kinds));
    }
    redactor
        .holds_configured(text)
        .then(|| "a configured API key".to_owned())
}

/// `an OpenAI-style key (sk-…)`, `a PEM private key (…)`: the key-shape
/// names start with a capital, and "an" goes before a vowel (`AWS`,
/// `Anthropic`, `OpenAI`).
fn with_article(name: &str) -> String {
    let article = if name.starts_with(['A', 'E', 'I', 'O', 'U']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {name}")
}

fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// The line the run prints when `what` (`delivery`, `task t3`) withheld
/// files, e.g. `delivery: withheld 1 file holding a secret: config/settings.py
/// (an OpenAI-style key (sk-…))`; `None` if it withheld nothing.
pub fn withheld_message(what: &str, withheld: &[Withheld]) -> Option<String> {
    if withheld.is_empty() {
        return None;
    }
    let n = withheld.len();
    let list: Vec<String> = withheld
        .iter()
        .map(|w| format!("{} ({})", w.path, w.holds))
        .collect();
    Some(format!(
        "{what}: withheld {n} {} holding a secret: {}",
        if n == 1 { "file" } else { "files" },
        list.join(", ")
    ))
}

/// `OUTPUTS_DIR/<project>/tasks/<task>.tar.gz`, given the project's outputs.
pub fn task_archive_path(outputs: &Path, task: &TaskId) -> PathBuf {
    outputs.join("tasks").join(format!("{task}.tar.gz"))
}

/// Writes `OUTPUTS_DIR/<project>/tasks/<task>.tar.gz` from the task's
/// worktree, withholding the files that hold a secret (logged as a warning;
/// the delivery reports them to the user).
pub fn task_archive(
    outputs: &Path,
    project: &ProjectId,
    task: &TaskRecord,
    worktree: &Path,
    files: &[String],
    redactor: &Redactor,
) -> Result<Packed, String> {
    let path = task_archive_path(outputs, &task.id);
    let mut manifest = serde_json::json!({
        "project": project,
        "task": task.id,
        "title": task.title,
        "attempt": task.attempt,
        "commit": task.commit,
        "summary": task.summary,
    });
    redactor.redact_json(&mut manifest);
    let scan = |text: &str| secret_in(redactor, text);
    let packed =
        swarm_package::write_archive(&path, task.id.as_str(), worktree, files, manifest, &scan)
            .map_err(|e| e.to_string())?;
    if let Some(line) = withheld_message(&format!("task {}", task.id), &packed.withheld) {
        tracing::warn!("{line}");
    }
    Ok(packed)
}

/// Writes the delivery (swarm_package::write_delivery), withholding the files
/// that hold a secret; `manifest` is redacted first, as a last guard for
/// text that reached it from outside the store (verify output).
pub fn write_delivery(
    outputs: &Path,
    name: &str,
    root: &Path,
    tracked: &[String],
    mut manifest: serde_json::Value,
    redactor: &Redactor,
) -> swarm_package::Result<Delivery> {
    redactor.redact_json(&mut manifest);
    let scan = |text: &str| secret_in(redactor, text);
    swarm_package::write_delivery(outputs, name, root, tracked, manifest, &scan)
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
    let (calls, input, output, cost) = usage.iter().fold((0, 0, 0, 0.0), |a, u| {
        (
            a.0 + u.calls,
            a.1 + u.input_tokens,
            a.2 + u.output_tokens,
            a.3 + u.cost_usd,
        )
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
            "cost_usd": cost,
            "unpriced_calls": usage.iter().map(|u| u.unpriced_calls).sum::<u64>(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_named_by_kind_never_quoted() {
        let r = Redactor::new(vec!["local-gateway-token-42".to_owned()]);
        let key = "sk-proj-FAKEFAKEFAKEFAKEFAKEFAKE1234";
        assert_eq!(
            secret_in(&r, &format!("OPENAI_API_KEY = \"{key}\"\n")).as_deref(),
            Some("an OpenAI-style key (sk-…)")
        );
        let pem = "-----BEGIN PRIVATE KEY-----\nMIIEfakefake\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            secret_in(&r, &format!("{pem}aws = AKIAIOSFODNN7EXAMPLE\n")).as_deref(),
            Some("a PEM private key (-----BEGIN … PRIVATE KEY-----) and an AWS access key id (AKIA…)")
        );
        assert_eq!(
            secret_in(&r, "TOKEN=local-gateway-token-42").as_deref(),
            Some("a configured API key")
        );
        assert_eq!(secret_in(&r, "print('a risk-free task-force')\n"), None);
        assert_eq!(
            secret_in(&Redactor::default(), "TOKEN=local-gateway-token-42"),
            None
        );
    }

    #[test]
    fn the_run_line_names_the_files() {
        assert_eq!(withheld_message("delivery", &[]), None);
        let w = |p: &str, h: &str| Withheld {
            path: p.into(),
            holds: h.into(),
        };
        assert_eq!(
            withheld_message("delivery", &[w("config/settings.py", "an OpenAI-style key (sk-…)")]).as_deref(),
            Some("delivery: withheld 1 file holding a secret: config/settings.py (an OpenAI-style key (sk-…))")
        );
        assert_eq!(
            withheld_message("task t3", &[w("a.py", "a configured API key"), w("b.txt", "a Slack token (xox…-)")]).as_deref(),
            Some("task t3: withheld 2 files holding a secret: a.py (a configured API key), b.txt (a Slack token (xox…-))")
        );
    }

    #[test]
    fn the_delivery_withholds_a_configured_key_and_redacts_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("client.py"), "TOKEN = 'local-gateway-token-42'\n").unwrap();
        std::fs::write(root.join("main.py"), "print('hi')\n").unwrap();
        let r = Redactor::new(vec!["local-gateway-token-42".to_owned()]);
        let out = dir.path().join("out");
        let d = write_delivery(
            &out,
            "app",
            &root,
            &["client.py".to_owned(), "main.py".into()],
            serde_json::json!({"verify": {"output_tail": "got local-gateway-token-42"}}),
            &r,
        )
        .unwrap();
        assert_eq!(d.packed.files.len(), 1);
        assert_eq!(d.packed.files[0].path, "main.py");
        let json = String::from_utf8(std::fs::read(&d.manifest_json).unwrap()).unwrap();
        assert!(
            json.contains("\"reason\": \"holds a configured API key\""),
            "{json}"
        );
        assert!(!json.contains("local-gateway-token-42"), "{json}");
        let txt = std::fs::read_to_string(&d.manifest_txt).unwrap();
        assert!(
            txt.contains("# withheld  client.py  holds a configured API key\n"),
            "{txt}"
        );
    }
}

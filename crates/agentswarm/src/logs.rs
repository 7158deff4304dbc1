//! `agentswarm logs PROJECT [TASK] [--follow]`: a project's event log, one
//! readable line per event.
//!
//! Where the events come from is behind [`EventSource`]: a running daemon's
//! HTTP API ([`ApiSource`]) when one is up, else the store
//! ([`StoreSource`]); the formatting ([`describe`], [`format_line`]) and the
//! loop ([`follow`]) are the same for both.

use anyhow::{bail, Result};
use serde_json::Value;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use swarm_protocol::{ProjectId, ProjectState, TaskId};
use swarm_store::{EventRecord, Store};

use crate::cli::{Cli, LimitArgs};
use crate::commands::{load_config, open_store};
use crate::output::one_line;
use std::process::ExitCode;

/// How often `--follow` asks for new events.
pub const POLL_INTERVAL: Duration = Duration::from_millis(300);

/// Events asked for at once.
const PAGE: usize = 500;

/// `agentswarm logs PROJECT [TASK] [--follow] [--json]`.
pub async fn logs(
    cli: &Cli,
    project: &str,
    task: Option<&str>,
    follow_on: bool,
    json: bool,
) -> Result<ExitCode> {
    let config = load_config(cli, &LimitArgs::default(), None, None)?;
    let mut source: Box<dyn EventSource> = match crate::client::Client::discover(&config).await? {
        Some(client) => Box::new(ApiSource::open(client, ProjectId::new(project)).await?),
        None => {
            if !config.store_path().exists() {
                bail!(
                    "project {project} not found: there are no projects yet in {}; `agentswarm status` lists the projects",
                    config.data_dir.display()
                );
            }
            let store = open_store(&config)?;
            Box::new(StoreSource::open(
                store,
                config.clone(),
                ProjectId::new(project),
            )?)
        }
    };
    let opts = LogOptions {
        task: task.map(TaskId::new),
        follow: follow_on,
        json,
    };
    match follow(source.as_mut(), &opts, &mut std::io::stdout()).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // `agentswarm logs P | head`: the reader has what it wanted.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e),
    }
}

/// Where a project's events come from.
#[async_trait::async_trait]
pub trait EventSource: Send {
    /// The project's events with `id > after`, oldest first, at most `limit`.
    async fn events(&mut self, after: i64, limit: usize) -> Result<Vec<EventRecord>>;
    /// The project's state now.
    async fn state(&mut self) -> Result<ProjectState>;
    /// The ids of the project's tasks (to refuse a task filter that names none).
    async fn task_ids(&mut self) -> Result<Vec<TaskId>>;
}

/// Events read straight from the store (SQLite is fine to read while
/// another process writes it).
pub struct StoreSource {
    store: Arc<dyn Store>,
    config: swarm_config::Config,
    project: ProjectId,
}

impl StoreSource {
    /// Fails with the store's "not found" error (which names
    /// `agentswarm status`) when there is no such project.
    pub fn open(
        store: Arc<dyn Store>,
        config: swarm_config::Config,
        project: ProjectId,
    ) -> Result<Self> {
        store.project(&project)?;
        Ok(Self {
            store,
            config,
            project,
        })
    }
}

#[async_trait::async_trait]
impl EventSource for StoreSource {
    async fn events(&mut self, after: i64, limit: usize) -> Result<Vec<EventRecord>> {
        Ok(self.store.events(&self.project, after, limit)?)
    }

    /// As `status` shows it: a project whose runner is gone is `interrupted`.
    async fn state(&mut self) -> Result<ProjectState> {
        Ok(
            swarm_engine::views::project_summary(self.store.as_ref(), &self.config, &self.project)?
                .state,
        )
    }

    async fn task_ids(&mut self) -> Result<Vec<TaskId>> {
        Ok(self
            .store
            .tasks(&self.project)?
            .into_iter()
            .map(|t| t.id)
            .collect())
    }
}

/// Events from a running daemon's API (JSON pages of
/// `GET /api/v1/projects/{id}/events`).
pub struct ApiSource {
    client: crate::client::Client,
    path: String,
}

impl ApiSource {
    /// Fails with the daemon's "not found" answer when there is no such project.
    pub async fn open(client: crate::client::Client, project: ProjectId) -> Result<Self> {
        let path = crate::client::project_path(project.as_str())?;
        let _: swarm_protocol::api::ProjectSummary = client
            .get::<swarm_protocol::api::ProjectDetail>(&path)
            .await?
            .project;
        Ok(Self { client, path })
    }

    async fn detail(&self) -> Result<swarm_protocol::api::ProjectDetail> {
        self.client.get(&self.path).await
    }
}

#[async_trait::async_trait]
impl EventSource for ApiSource {
    async fn events(&mut self, after: i64, limit: usize) -> Result<Vec<EventRecord>> {
        let page: swarm_protocol::api::EventPage = self
            .client
            .get(&format!("{}/events?after={after}&limit={limit}", self.path))
            .await?;
        Ok(page
            .events
            .into_iter()
            .map(|e| EventRecord {
                id: e.id,
                project_id: ProjectId::new(e.project_id),
                task_id: e.task_id.map(TaskId::new),
                ts_ms: e.ts_ms,
                kind: e.kind,
                data: e.data,
            })
            .collect())
    }

    async fn state(&mut self) -> Result<ProjectState> {
        Ok(self.detail().await?.project.state)
    }

    async fn task_ids(&mut self) -> Result<Vec<TaskId>> {
        Ok(self
            .detail()
            .await?
            .tasks
            .into_iter()
            .map(|t| TaskId::new(t.id))
            .collect())
    }
}

/// What `logs` prints and how long it goes on.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Only this task's events.
    pub task: Option<TaskId>,
    /// Keep polling until the project's run ends.
    pub follow: bool,
    /// The raw events, one JSON object a line.
    pub json: bool,
}

/// Prints the project's events to `out`; with `follow`, keeps polling every
/// [`POLL_INTERVAL`] until the project's run ends. A project that is
/// already done, failed or cancelled ends the follow at once; one that is
/// stopped (interrupted, paused, out of budget) is followed until a run of
/// it ends again.
pub async fn follow(
    source: &mut dyn EventSource,
    opts: &LogOptions,
    out: &mut dyn Write,
) -> Result<()> {
    if let Some(task) = &opts.task {
        let ids = source.task_ids().await?;
        if !ids.contains(task) {
            bail!(
                "the project has no task {task}; `agentswarm status PROJECT` lists its tasks ({})",
                ids.iter()
                    .map(TaskId::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let mut after = 0;
    let mut state = source.state().await?;
    if opts.follow && is_stopped(state) {
        // Nothing runs it (a killed run shows as interrupted): following
        // would wait for ever. Print what there is and say how to go on.
        print_new(source, opts, after, out).await?;
        eprintln!(
            "agentswarm logs: the project is {state}: nothing runs it now; \
             `agentswarm resume PROJECT` carries it on (then follow again)"
        );
        return Ok(());
    }
    loop {
        // The state is read before the events, so that the events of a run
        // that has ended are all printed before the loop stops.
        let ended = state.is_terminal();
        after = print_new(source, opts, after, out).await?;
        if !opts.follow || ended {
            return Ok(());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
        let now = source.state().await?;
        if now != state && is_stopped(now) {
            // The run we were following stopped: print what it wrote and end.
            print_new(source, opts, after, out).await?;
            return Ok(());
        }
        state = now;
    }
}

/// A state a run ends in that a later `resume` (or the daemon) carries on from.
fn is_stopped(state: ProjectState) -> bool {
    state.is_resumable() && !state.is_terminal()
}

/// Prints every event after `after`; returns the last id seen.
async fn print_new(
    source: &mut dyn EventSource,
    opts: &LogOptions,
    mut after: i64,
    out: &mut dyn Write,
) -> Result<i64> {
    loop {
        let page = source.events(after, PAGE).await?;
        let n = page.len();
        for e in &page {
            after = after.max(e.id);
            if opts
                .task
                .as_ref()
                .is_some_and(|t| e.task_id.as_ref() != Some(t))
            {
                continue;
            }
            if opts.json {
                writeln!(out, "{}", serde_json::to_string(e)?)?;
            } else {
                writeln!(out, "{}", format_line(e))?;
            }
        }
        out.flush()?;
        if n < PAGE {
            return Ok(after);
        }
    }
}

/// One line: local time (with the date when it is not today), the task id
/// if any, and [`describe`]. Control characters are escaped: a model-made
/// name or message can neither add a line nor send the terminal a sequence.
pub fn format_line(e: &EventRecord) -> String {
    let when = local_time(e.ts_ms);
    let line = match &e.task_id {
        Some(t) => format!("{when}  {t}  {}", describe(e)),
        None => format!("{when}  {}", describe(e)),
    };
    swarm_protocol::text::escape_control(&line).into_owned()
}

/// A human sentence for one event, by kind; `kind {json}` for a kind it does
/// not know.
pub fn describe(e: &EventRecord) -> String {
    let d = &e.data;
    let known = match e.kind.as_str() {
        "task_state" => task_state(d),
        "tool" => tool(d),
        "plan" => plan(d),
        "verify" => verify(d),
        "project_state" => project_state(d),
        "sandbox" => sandbox(d),
        "limits" => limits(d),
        "halt" => halt(d),
        "waiting" => d.get("message").and_then(Value::as_str).map(str::to_owned),
        "note" => d
            .get("message")
            .and_then(Value::as_str)
            .map(|m| format!("note: {m}")),
        "placed" => match (
            d.get("attempt").and_then(Value::as_u64),
            d.get("node").and_then(Value::as_str),
        ) {
            (Some(a), Some(n)) => Some(match d.get("sandbox").and_then(Value::as_str) {
                Some(s) => format!(
                    "attempt {a} runs on node {n} (sandbox {s}, memory limiter {})",
                    d.get("memory_limiter")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                ),
                None => format!("attempt {a} runs on node {n}"),
            }),
            _ => None,
        },
        "run_stats" => d
            .get("spawned")
            .and_then(Value::as_u64)
            .map(|n| format!("run stats: {n} process(es) spawned")),
        "review_waiting" | "review_approved" | "review_rejected" => review(e),
        _ => None,
    };
    known.unwrap_or_else(|| format!("{} {}", e.kind, d))
}

/// A review event (docs/existing-repos.md, "Review before merge").
fn review(e: &EventRecord) -> Option<String> {
    let d = &e.data;
    let p = &e.project_id;
    let delivery = d.get("delivery").and_then(Value::as_bool) == Some(true);
    let attempt = d.get("attempt").and_then(Value::as_u64);
    Some(match (e.kind.as_str(), delivery, &e.task_id) {
        ("review_waiting", true, _) => {
            format!("the delivery waits for review: `agentswarm review {p}`")
        }
        ("review_waiting", false, Some(t)) => format!(
            "waits for review (attempt {}): `agentswarm review {p} {t}`",
            attempt?
        ),
        ("review_approved", true, _) => match (str_of(d, "branch"), str_of(d, "branch_error")) {
            (Some(b), None) => format!("the delivery was approved: branch {b} written"),
            (_, Some(err)) => format!("the delivery was approved: {err}"),
            (None, None) => "the delivery was approved".to_owned(),
        },
        ("review_approved", false, _) => format!("approved in review (attempt {})", attempt?),
        ("review_rejected", true, _) => format!(
            "the delivery was rejected: {} (a follow-up round plans it)",
            str_of(d, "comment")?
        ),
        ("review_rejected", false, _) => format!(
            "rejected in review (attempt {}): {}",
            attempt?,
            str_of(d, "comment")?
        ),
        _ => return None,
    })
}

fn str_of<'a>(d: &'a Value, key: &str) -> Option<&'a str> {
    d.get(key).and_then(Value::as_str)
}

fn task_state(d: &Value) -> Option<String> {
    let to = str_of(d, "to")?;
    let mut s = match str_of(d, "from") {
        Some(from) => format!("{from} → {to}"),
        None => to.to_owned(),
    };
    if let Some(round) = d.get("fix_round").and_then(Value::as_u64) {
        s.push_str(&format!(" (fix round {round})"));
    } else if let Some(a) = d.get("attempt").and_then(Value::as_u64).filter(|a| *a > 0) {
        s.push_str(&format!(" (attempt {a})"));
    }
    if let Some(err) = str_of(d, "error").filter(|e| !e.is_empty()) {
        s.push_str(&format!(": {}", one_line(err, 200)));
    }
    Some(s)
}

fn tool(d: &Value) -> Option<String> {
    let name = str_of(d, "tool")?;
    let detail = str_of(d, "detail").unwrap_or("");
    let turn = d.get("turn").and_then(Value::as_u64).unwrap_or(0);
    let mut s = format!("turn {turn}: {name}");
    if !detail.is_empty() {
        s.push(' ');
        s.push_str(&one_line(detail, 160));
    }
    if let Some(a) = d.get("attempt").and_then(Value::as_u64).filter(|a| *a > 1) {
        s.push_str(&format!(" (attempt {a})"));
    }
    Some(s)
}

fn plan(d: &Value) -> Option<String> {
    let tasks = d.get("tasks").and_then(Value::as_u64)?;
    Some(match str_of(d, "source") {
        Some("user") => format!("plan: {tasks} tasks, given with --plan"),
        Some("planner") => {
            let calls = d.get("calls").and_then(Value::as_u64).unwrap_or(0);
            format!("plan: {tasks} tasks from the planner ({calls} call(s))")
        }
        Some(other) => format!("plan: {tasks} tasks ({other})"),
        None => format!("plan: {tasks} tasks"),
    })
}

fn verify(d: &Value) -> Option<String> {
    let passed = d.get("passed").and_then(Value::as_bool)?;
    let results = d.get("results").and_then(Value::as_array)?;
    let parts: Vec<String> = results
        .iter()
        .map(|r| {
            let command = one_line(str_of(r, "command").unwrap_or("?"), 120);
            let secs = r.get("duration_ms").and_then(Value::as_u64).unwrap_or(0) as f64 / 1000.0;
            let ok = r.get("passed").and_then(Value::as_bool).unwrap_or(false);
            match (passed, ok) {
                (true, _) => format!("{command} ({secs:.1} s)"),
                (false, true) => format!("{command} ok ({secs:.1} s)"),
                (false, false) => format!(
                    "{command} → {} ({secs:.1} s)",
                    str_of(r, "exit").unwrap_or("failed")
                ),
            }
        })
        .collect();
    let attempt = d
        .get("attempt")
        .and_then(Value::as_u64)
        .filter(|a| *a > 1)
        .map(|a| format!(" (attempt {a})"))
        .unwrap_or_default();
    let verdict = if passed { "passed" } else { "failed" };
    Some(if parts.is_empty() {
        format!("{verdict}{attempt}: no commands")
    } else {
        format!("{verdict}{attempt}: {}", parts.join("; "))
    })
}

fn project_state(d: &Value) -> Option<String> {
    let to = str_of(d, "to")?;
    let mut s = match str_of(d, "from") {
        Some(from) => format!("project {from} → {to}"),
        None => format!("project {to}"),
    };
    if let Some(err) = str_of(d, "error").filter(|e| !e.is_empty()) {
        s.push_str(&format!(": {}", one_line(err, 300)));
    }
    Some(s)
}

fn sandbox(d: &Value) -> Option<String> {
    let summary = str_of(d, "summary")?;
    let mut s = format!("sandbox: {summary}");
    let gaps: Vec<&str> = d
        .get("gaps")
        .and_then(Value::as_array)
        .map(|g| g.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !gaps.is_empty() {
        s.push_str(&format!("; not confined here: {}", gaps.join("; ")));
    }
    Some(s)
}

fn limits(d: &Value) -> Option<String> {
    let obj = d.as_object()?;
    let set: Vec<String> = obj
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    Some(format!("limits now: {}", set.join(", ")))
}

fn halt(d: &Value) -> Option<String> {
    let state = str_of(d, "state")?;
    let message = str_of(d, "message").unwrap_or("");
    Some(format!("halted ({state}): {}", one_line(message, 300)))
}

/// `HH:MM:SS` in the local time zone, `YYYY-MM-DD HH:MM:SS` when not today.
pub fn local_time(ts_ms: i64) -> String {
    let now = swarm_store::now_ms();
    match (local(ts_ms), local(now)) {
        (Some(t), Some(today)) if (t.0, t.1, t.2) == (today.0, today.1, today.2) => {
            format!("{:02}:{:02}:{:02}", t.3, t.4, t.5)
        }
        (Some(t), _) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            t.0, t.1, t.2, t.3, t.4, t.5
        ),
        (None, _) => format!("@{}", ts_ms / 1000),
    }
}

/// (year, month, day, hour, minute, second) in the local time zone.
fn local(ts_ms: i64) -> Option<(i32, u32, u32, u32, u32, u32)> {
    // `time_t` is 32 bits on some targets.
    #[allow(clippy::useless_conversion)]
    let secs: libc::time_t = ts_ms.div_euclid(1000).try_into().ok()?;
    // SAFETY: `localtime_r` only reads `secs` and writes the `tm` it is
    // given; both live on this stack frame for the whole call.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&secs, &mut tm).is_null() {
            return None;
        }
        tm
    };
    Some((
        tm.tm_year + 1900,
        u32::try_from(tm.tm_mon + 1).ok()?,
        u32::try_from(tm.tm_mday).ok()?,
        u32::try_from(tm.tm_hour).ok()?,
        u32::try_from(tm.tm_min).ok()?,
        u32::try_from(tm.tm_sec).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn ev(kind: &str, task: Option<&str>, data: Value) -> EventRecord {
        EventRecord {
            id: 1,
            project_id: ProjectId::new("p"),
            task_id: task.map(TaskId::new),
            ts_ms: swarm_store::now_ms(),
            kind: kind.into(),
            data,
        }
    }

    #[test]
    fn describes_each_kind() {
        let cases = [
            (
                ev(
                    "task_state",
                    Some("t3"),
                    json!({"from": "running", "to": "done", "attempt": 1, "error": null}),
                ),
                "running → done (attempt 1)",
            ),
            (
                ev(
                    "task_state",
                    Some("t3"),
                    json!({"from": "running", "to": "ready", "attempt": 1, "error": "exit code 3"}),
                ),
                "running → ready (attempt 1): exit code 3",
            ),
            (
                ev(
                    "task_state",
                    Some("t3"),
                    json!({"from": "pending", "to": "ready", "attempt": 0, "error": null}),
                ),
                "pending → ready",
            ),
            (
                ev(
                    "tool",
                    Some("t2"),
                    json!({"attempt": 1, "turn": 3, "tool": "run_command", "detail": "pytest -q"}),
                ),
                "turn 3: run_command pytest -q",
            ),
            (
                ev(
                    "verify",
                    Some("verify"),
                    json!({"attempt": 1, "passed": true, "results": [{"command": "python3 -m unittest", "exit": "exit code 0", "passed": true, "duration_ms": 1200}]}),
                ),
                "passed: python3 -m unittest (1.2 s)",
            ),
            (
                ev(
                    "verify",
                    Some("verify"),
                    json!({"attempt": 2, "passed": false, "results": [
                    {"command": "a", "exit": "exit code 0", "passed": true, "duration_ms": 100},
                    {"command": "b", "exit": "exit code 1", "passed": false, "duration_ms": 300}]}),
                ),
                "failed (attempt 2): a ok (0.1 s); b → exit code 1 (0.3 s)",
            ),
            (
                ev(
                    "project_state",
                    None,
                    json!({"from": "running", "to": "done", "error": null}),
                ),
                "project running → done",
            ),
            (
                ev("project_state", None, json!({"from": null, "to": "queued"})),
                "project queued",
            ),
            (
                ev(
                    "plan",
                    None,
                    json!({"source": "planner", "tasks": 5, "calls": 1}),
                ),
                "plan: 5 tasks from the planner (1 call(s))",
            ),
            (
                ev("run_stats", None, json!({"spawned": 12})),
                "run stats: 12 process(es) spawned",
            ),
            (
                ev(
                    "halt",
                    None,
                    json!({"state": "budget_exhausted", "message": "spent $5"}),
                ),
                "halted (budget_exhausted): spent $5",
            ),
            (
                ev(
                    "review_waiting",
                    Some("t1"),
                    json!({"attempt": 2, "commit": "abc"}),
                ),
                "waits for review (attempt 2): `agentswarm review p t1`",
            ),
            (
                ev(
                    "review_rejected",
                    Some("t1"),
                    json!({"attempt": 1, "comment": "use tabs"}),
                ),
                "rejected in review (attempt 1): use tabs",
            ),
            (
                ev("review_approved", Some("t1"), json!({"attempt": 2})),
                "approved in review (attempt 2)",
            ),
            (
                ev(
                    "review_waiting",
                    None,
                    json!({"delivery": true, "commit": "abc"}),
                ),
                "the delivery waits for review: `agentswarm review p`",
            ),
            (
                ev(
                    "review_approved",
                    None,
                    json!({"delivery": true, "branch": "agentswarm/p", "pushed": false, "branch_error": null}),
                ),
                "the delivery was approved: branch agentswarm/p written",
            ),
            (ev("mystery", None, json!({"a": 1})), "mystery {\"a\":1}"),
            // A known kind with unexpected data falls back too.
            (ev("tool", None, json!({"x": 1})), "tool {\"x\":1}"),
        ];
        for (e, want) in cases {
            assert_eq!(describe(&e), want);
        }
    }

    #[test]
    fn a_line_has_the_time_and_the_task() {
        let e = ev(
            "task_state",
            Some("t3"),
            json!({"from": "running", "to": "done", "attempt": 1}),
        );
        let line = format_line(&e);
        let (time, rest) = line.split_once("  ").unwrap();
        assert_eq!(time.len(), 8, "{line}");
        assert_eq!(time.matches(':').count(), 2, "{line}");
        assert_eq!(rest, "t3  running → done (attempt 1)");
        let old = EventRecord {
            ts_ms: 86_400_000 * 3,
            ..e
        };
        assert!(
            format_line(&old).starts_with("1970-01-0"),
            "{}",
            format_line(&old)
        );
    }

    struct Scripted {
        states: Vec<ProjectState>,
        events: Vec<EventRecord>,
        /// How many events are visible after each state read.
        visible: Vec<usize>,
        reads: usize,
    }

    #[async_trait::async_trait]
    impl EventSource for Scripted {
        async fn events(&mut self, after: i64, limit: usize) -> Result<Vec<EventRecord>> {
            let n = self.visible[(self.reads.max(1) - 1).min(self.visible.len() - 1)];
            Ok(self.events[..n]
                .iter()
                .filter(|e| e.id > after)
                .take(limit)
                .cloned()
                .collect())
        }
        async fn state(&mut self) -> Result<ProjectState> {
            let s = self.states[self.reads.min(self.states.len() - 1)];
            self.reads += 1;
            Ok(s)
        }
        async fn task_ids(&mut self) -> Result<Vec<TaskId>> {
            Ok(vec![TaskId::new("a"), TaskId::new("b")])
        }
    }

    fn numbered(n: usize) -> Vec<EventRecord> {
        (1..=n)
            .map(|i| EventRecord {
                id: i as i64,
                ..ev(
                    "task_state",
                    Some(if i % 2 == 0 { "a" } else { "b" }),
                    json!({"from": "ready", "to": "running", "attempt": i}),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn follow_prints_each_event_once_and_stops_at_the_end() {
        let mut src = Scripted {
            states: vec![
                ProjectState::Running,
                ProjectState::Running,
                ProjectState::Done,
            ],
            events: numbered(5),
            visible: vec![2, 4, 5],
            reads: 0,
        };
        let mut out = Vec::new();
        let opts = LogOptions {
            follow: true,
            ..Default::default()
        };
        follow(&mut src, &opts, &mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 5, "{text}");
        for a in 1..=5 {
            assert_eq!(text.matches(&format!("(attempt {a})")).count(), 1, "{text}");
        }
    }

    #[tokio::test]
    async fn follow_stops_when_the_run_is_interrupted_and_filters_tasks() {
        let mut src = Scripted {
            states: vec![ProjectState::Running, ProjectState::Interrupted],
            events: numbered(4),
            visible: vec![1, 4],
            reads: 0,
        };
        let mut out = Vec::new();
        let opts = LogOptions {
            follow: true,
            task: Some(TaskId::new("a")),
            json: true,
        };
        follow(&mut src, &opts, &mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let ids: Vec<i64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["id"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ids, vec![2, 4]);

        let opts = LogOptions {
            task: Some(TaskId::new("zzz")),
            ..Default::default()
        };
        let err = follow(&mut src, &opts, &mut Vec::new()).await.unwrap_err();
        assert!(err.to_string().contains("no task zzz"), "{err}");
    }
}

//! The worker: the agent loop that runs inside `agentswarm worker`.
//!
//! It reads a `Start` message on stdin, then loops: ask the supervisor for
//! the next assistant message (a `ModelRequest`; the supervisor holds the API
//! keys), run the tool calls in order in the worktree, send the results back
//! in the next request. `finish` ends the loop: everything in the worktree is
//! committed on the task branch with the `Swarm-*` trailers and the worker
//! reports `Finished`. After `max_turns` model turns without `finish` the
//! attempt fails. The protocol is in `swarm_protocol::worker`.
//!
//! Synchronous on purpose: one conversation, one tool at a time, and no
//! async runtime keeps the worker process small.

pub mod context;
pub mod external;
pub mod paths;
mod prepare;
pub mod stuck;
pub mod tools;

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::Duration;
use stuck::{StuckDetector, Verdict};
use swarm_git::WorktreeHelper;
use swarm_protocol::chat::{ChatMessage, Role, ToolSpec};
use swarm_protocol::worker::{
    FromWorker, ModelResult, ToWorker, WorkerStart, WorktreeSetup, SETUP_FAILED,
};
pub use tools::{tool_specs, ToolResult, Tools};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the supervisor closed the connection")]
    Closed,
    #[error("invalid message from the supervisor: {0}")]
    Protocol(String),
    #[error("cannot talk to the supervisor: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Sent when the model answers without calling a tool.
pub const NUDGE: &str =
    "Use the tools to do your task. When it is done and checked, call finish with a short summary.";

struct Channel<R, W> {
    input: R,
    output: W,
}

impl<R: BufRead, W: Write> Channel<R, W> {
    fn send(&mut self, msg: &FromWorker) -> Result<()> {
        let mut line = serde_json::to_vec(msg).map_err(|e| Error::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.output.write_all(&line)?;
        self.output.flush()?;
        Ok(())
    }

    fn recv(&mut self) -> Result<ToWorker> {
        let mut line = String::new();
        if self.input.read_line(&mut line)? == 0 {
            return Err(Error::Closed);
        }
        serde_json::from_str(&line).map_err(|e| Error::Protocol(e.to_string()))
    }
}

/// Runs one attempt: returns once `Finished` or `Failed` has been sent.
pub fn run_worker(input: impl BufRead, output: impl Write) -> Result<()> {
    // Orphans of the commands this worker runs (a double-forked `setsid`
    // daemon) stay below it, where the supervisor's watchdog finds and kills
    // them. Under a cgroup this only adds to what the cgroup already does.
    if let Err(e) = swarm_exec::tree::become_subreaper() {
        eprintln!("agentswarm worker: cannot become a child subreaper: {e}");
    }
    let mut ch = Channel { input, output };
    let start = match ch.recv()? {
        ToWorker::Start(s) => s,
        other => return Err(Error::Protocol(format!("expected start, got {other:?}"))),
    };
    // Git on the worktree runs in a confined helper forked now, while this
    // process has one thread.
    let git = git_helper(&start);
    // The worktree is prepared while the first model call is in flight.
    let mut setup = Some(start_setup(&start, git.clone()));
    let result = match &start.external {
        Some(spec) => external::run(&mut ch, &start, spec, &mut setup, git.as_deref()),
        None => agent_loop(&mut ch, &start, &mut setup, git.as_deref()),
    };
    if let Some(handle) = setup.take() {
        // Never leave a git process running behind the attempt.
        let _ = handle.join();
    }
    ch.send(&result?)
}

type Setup = std::thread::JoinHandle<std::result::Result<(), String>>;

fn agent_loop<R: BufRead, W: Write>(
    ch: &mut Channel<R, W>,
    start: &WorkerStart,
    setup: &mut Option<Setup>,
    git: Option<&WorktreeHelper>,
) -> Result<FromWorker> {
    let tools = Tools::new(
        &start.worktree,
        Duration::from_secs(start.command_timeout_secs),
        start.output_cap_bytes,
    )
    .with_sandbox(start.sandbox.clone())
    .with_settings(start.agent.clone());
    let specs = tool_specs();
    // A root service's commands run as this uid and must own the worktree.
    let dropped_uid = swarm_exec::sandbox::dropped_uid(&start.sandbox);
    // `None` until the first command; then whether the worktree is still all
    // the sandbox uid's.
    let mut handed_over: Option<bool> = None;
    let mut messages = vec![
        ChatMessage::system(&start.system_prompt),
        ChatMessage::user(&start.prompt),
    ];
    let mut seq = 0u64;
    let mut stuck = StuckDetector::new();
    for turn in 1..=start.max_turns {
        if let Some(note) = condense(
            ch,
            &mut seq,
            turn,
            &mut messages,
            &specs,
            start.agent.context_window_tokens,
        )? {
            ch.send(&FromWorker::Progress {
                turn,
                tool: "condense".into(),
                detail: note,
            })?;
        }
        let reply = ask(ch, &mut seq, turn, messages.clone(), specs.clone())?;
        let message = match reply {
            ModelResult::Ok { message, .. } => message,
            ModelResult::Error { error } if is_context_error(&error) => {
                // Too long for the model: shorten and ask again, unless
                // that keeps happening.
                stuck.context_error();
                match stuck.verdict() {
                    Verdict::Stuck(reason) => {
                        return Ok(FromWorker::Stuck {
                            reason,
                            turns: turn,
                        })
                    }
                    Verdict::Nudge(_) | Verdict::Fine => {}
                }
                shorten_tool_outputs(&mut messages);
                continue;
            }
            ModelResult::Error { error } => {
                return Ok(FromWorker::Failed {
                    reason: format!("model call failed: {error}"),
                    turns: turn,
                });
            }
        };
        let mut message = message;
        message.role = Role::Assistant;
        let calls = message.tool_calls.clone();
        messages.push(message);
        if calls.is_empty() {
            stuck.talk();
            match stuck.verdict() {
                Verdict::Fine => messages.push(ChatMessage::user(NUDGE)),
                Verdict::Nudge(m) => messages.push(ChatMessage::user(m)),
                Verdict::Stuck(reason) => {
                    return Ok(FromWorker::Stuck {
                        reason,
                        turns: turn,
                    })
                }
            }
            continue;
        }
        if let Some(handle) = setup.take() {
            let result = handle
                .join()
                .unwrap_or_else(|_| Err("the setup thread panicked".into()));
            if let Err(e) = result {
                return Ok(FromWorker::Failed {
                    reason: format!("{SETUP_FAILED}: {e}"),
                    turns: turn,
                });
            }
        }
        let mut finished: Option<FromWorker> = None;
        for call in &calls {
            let name = call.function.name.as_str();
            let text = if finished.is_some() {
                "error: finish was already called in this reply; this call was not run".to_owned()
            } else {
                ch.send(&FromWorker::Progress {
                    turn,
                    tool: name.to_owned(),
                    detail: Tools::describe(name, &call.function.arguments),
                })?;
                if name == "run_command" && handed_over.is_some_and(|done| !done) {
                    // What the file tools wrote (as root) since the last
                    // command goes to the sandbox uid, as the rest of the
                    // worktree did when the sandbox was prepared.
                    if let Some(uid) = dropped_uid {
                        if let Err(e) = swarm_exec::sandbox::hand_over(&start.worktree, uid) {
                            eprintln!(
                                "agentswarm worker: cannot give the worktree to uid {uid}: {e}"
                            );
                        }
                    }
                }
                let r: ToolResult = tools.execute(name, &call.function.arguments);
                handed_over = match name {
                    // The first command's sandbox hands the whole worktree over.
                    "run_command" => Some(true),
                    "read_file" | "list_files" | "search" | "finish" => handed_over,
                    _ => handed_over.map(|_| false),
                };
                if name == "run_command" && start.sandbox.sweep_after_command() {
                    kill_leftovers();
                }
                match r.finished {
                    Some(summary) => match commit(start, git, summary, turn) {
                        Ok(outcome) => {
                            finished = Some(outcome);
                            r.text
                        }
                        // The model can fix this one: it is told, and goes on.
                        Err(refused) => refused,
                    },
                    None => r.text,
                }
            };
            if finished.is_none() {
                stuck.tool_call(name, &call.function.arguments, &text);
            }
            messages.push(ChatMessage::tool_result(&call.id, text));
        }
        if let Some(outcome) = finished {
            return Ok(outcome);
        }
        match stuck.verdict() {
            Verdict::Fine => {}
            Verdict::Nudge(m) => messages.push(ChatMessage::user(m)),
            Verdict::Stuck(reason) => {
                return Ok(FromWorker::Stuck {
                    reason,
                    turns: turn,
                })
            }
        }
    }
    Ok(FromWorker::Failed {
        reason: format!("max_turns ({}) reached without finish", start.max_turns),
        turns: start.max_turns,
    })
}

/// Sends one model request and waits for its reply (a reply to an older
/// request is skipped). The built-in loop and a hosted outside agent
/// both ask through it.
pub(crate) fn ask<R: BufRead, W: Write>(
    ch: &mut Channel<R, W>,
    seq: &mut u64,
    turn: u32,
    messages: Vec<ChatMessage>,
    tools: Vec<ToolSpec>,
) -> Result<ModelResult> {
    *seq += 1;
    ch.send(&FromWorker::ModelRequest {
        seq: *seq,
        turn,
        messages,
        tools,
    })?;
    loop {
        match ch.recv()? {
            ToWorker::ModelReply { seq: s, result } if s == *seq => return Ok(result),
            ToWorker::ModelReply { .. } => continue, // a stale reply: not ours
            other => {
                return Err(Error::Protocol(format!(
                    "expected model_reply, got {other:?}"
                )))
            }
        }
    }
}

/// Condenses the conversation when the next request would pass the
/// threshold of the model's window (docs/providers.md#context): old tool
/// outputs first, then a summary of the oldest turns written by the model
/// (or, if that call fails, made from the calls). Returns what was done.
fn condense<R: BufRead, W: Write>(
    ch: &mut Channel<R, W>,
    seq: &mut u64,
    turn: u32,
    messages: &mut Vec<ChatMessage>,
    specs: &[ToolSpec],
    window: u64,
) -> Result<Option<String>> {
    use context::{request_tokens, Budget};
    let budget = Budget::of(window);
    let before = request_tokens(messages, specs);
    if before <= budget.threshold {
        return Ok(None);
    }
    let shortened =
        context::shorten_old_outputs(messages, specs, budget.target, context::KEEP_LAST);
    let mut done = format!("{shortened} old tool outputs shortened");
    if request_tokens(messages, specs) > budget.target {
        if let Some(cut) = context::summary_cut(messages, context::KEEP_LAST) {
            let old = messages[2..cut].to_vec();
            let task = messages[1].content.clone().unwrap_or_default();
            let room = (budget.target * context::BYTES_PER_TOKEN / 2) as usize;
            let prompt = format!(
                "The task:\n{}\n\nThe work so far:\n{}",
                tools::bound(task, 4000),
                context::render(&old, room)
            );
            let request = vec![
                ChatMessage::system(context::SUMMARY_SYSTEM),
                ChatMessage::user(prompt),
            ];
            let summary = match ask(ch, seq, turn, request, Vec::new())? {
                ModelResult::Ok { message, .. }
                    if message.tool_calls.is_empty()
                        && message
                            .content
                            .as_deref()
                            .is_some_and(|c| !c.trim().is_empty()) =>
                {
                    message.content.unwrap_or_default()
                }
                ModelResult::Ok { .. } | ModelResult::Error { .. } => {
                    context::mechanical_summary(&old)
                }
            };
            let message = context::summary_message(&old, &summary);
            messages.splice(2..cut, [message]);
            done.push_str(&format!("; {} earlier messages summarised", cut - 2));
        }
        if request_tokens(messages, specs) > budget.target {
            let more = context::shorten_old_outputs(messages, specs, budget.target, 2);
            if more > 0 {
                done.push_str(&format!("; {more} more tool outputs shortened"));
            }
        }
    }
    let after = request_tokens(messages, specs);
    Ok(Some(format!(
        "context condensed from about {before} to {after} tokens (window {window}): {done}"
    )))
}

/// Whether a failed model call was refused for the length of the
/// conversation (OpenAI's `context_length_exceeded`, Anthropic's `prompt is
/// too long`, and the wording of vLLM, llama.cpp and Ollama).
pub fn is_context_error(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    [
        "context_length",
        "context length",
        "exceed_context_size",
        "context window",
        "maximum context",
        "prompt is too long",
        "too many tokens",
        "exceeds the context",
        "input is too long",
    ]
    .iter()
    .any(|p| e.contains(p))
}

/// Cuts every tool result but the last two to its first lines, after a
/// context-window error.
fn shorten_tool_outputs(messages: &mut [ChatMessage]) {
    let tool_idx: Vec<usize> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role == Role::Tool)
        .map(|(i, _)| i)
        .collect();
    for &i in tool_idx.iter().rev().skip(2) {
        if let Some(text) = messages[i].content.as_mut() {
            if text.len() > 400 {
                let mut head = 300;
                while !text.is_char_boundary(head) {
                    head -= 1;
                }
                *text = format!(
                    "{}\n[… older tool output shortened to fit the context window]",
                    &text[..head]
                );
            }
        }
    }
}

/// Commits the worktree for `finish`: the attempt's outcome, or the error
/// the model gets when the work cannot be committed as it is (paths with
/// control characters).
fn commit(
    start: &WorkerStart,
    git: Option<&WorktreeHelper>,
    summary: String,
    turn: u32,
) -> std::result::Result<FromWorker, String> {
    let trailers = swarm_git::Trailers {
        project: start.project_id.to_string(),
        task: start.task_id.to_string(),
        attempt: start.attempt,
    };
    let committed = match git {
        Some(git) => git.commit(&start.worktree, &start.commit_subject, &summary, &trailers),
        None => open_repo(&start.repo, &start.sandbox).and_then(|repo| {
            swarm_git::commit_all(
                &repo,
                &start.worktree,
                &start.commit_subject,
                &summary,
                &trailers,
            )
        }),
    };
    Ok(match committed {
        Ok(commit) => {
            report_link(&start.worktree, commit.link);
            let mut notes = Vec::new();
            if !commit.nested.is_empty() {
                let note = nested_note(&commit.nested);
                eprintln!("agentswarm worker: {note}");
                notes.push(note);
            }
            FromWorker::Finished {
                summary,
                commit: commit.sha,
                turns: turn,
                notes,
            }
        }
        Err(e @ swarm_git::Error::UnsafeNames { .. }) => {
            return Err(format!(
                "error: the work was not committed: {e}; then call finish again"
            ))
        }
        Err(e) => FromWorker::Failed {
            reason: format!("cannot commit the work: {e}"),
            turns: turn,
        },
    })
}

/// What the operator and the commit are told about nested repositories.
fn nested_note(dirs: &[String]) -> String {
    format!(
        "nested git repositories are not kept: removed the .git of {}; their files are committed as plain content",
        dirs.join(", ")
    )
}

/// Runs the start message's worktree setup on a thread.
/// Kills whatever a command left running: a `setsid` daemon escapes the
/// command's process group, and a process still running next to the
/// worker's own file tools and git could swap a symlink under them. This
/// process is a child subreaper, so every such orphan is its child now.
fn kill_leftovers() {
    // Lists, kills and reaps until nothing is left (within its deadline).
    swarm_exec::reap_orphans();
}

/// Forks the worker's git helper (swarm_git::WorktreeHelper: libgit2 in a
/// process confined as `git` on the worktree would be). Without one — this
/// process already has threads (a test harness), or the fork failed — git
/// runs as `git` processes, confined the same way, and stderr says why.
fn git_helper(start: &WorkerStart) -> Option<Arc<WorktreeHelper>> {
    if start.repo.as_os_str().is_empty() {
        return None;
    }
    // The domain names the worktree, so it must exist; `git worktree add`
    // fills an empty directory.
    if matches!(start.setup, WorktreeSetup::Create { .. }) {
        if let Err(e) = std::fs::create_dir_all(&start.worktree) {
            eprintln!("agentswarm worker: git runs as separate processes: {e}");
            return None;
        }
    }
    match open_repo(&start.repo, &start.sandbox)
        .and_then(|repo| WorktreeHelper::start(&repo, &start.worktree))
    {
        Ok(helper) => Some(Arc::new(helper)),
        Err(e) => {
            eprintln!("agentswarm worker: git runs as separate processes: {e}");
            None
        }
    }
}

fn start_setup(start: &WorkerStart, git: Option<Arc<WorktreeHelper>>) -> Setup {
    let setup = start.setup.clone();
    let worktree = start.worktree.clone();
    let repo = start.repo.clone();
    let policy = start.sandbox.clone();
    let repo_prepare = start.prepare.clone();
    std::thread::spawn(move || {
        match setup {
            WorktreeSetup::Ready => Ok(()),
            WorktreeSetup::Create { repo, branch, base } => open_repo(&repo, &policy)
                .and_then(|r| r.add_worktree_at(&worktree, &branch, &base))
                .map_err(|e| e.to_string()),
            WorktreeSetup::Reset {
                branch,
                base,
                clean,
            } => match &git {
                Some(git) => git.reset(&worktree, &branch, &base, clean),
                None => open_repo(&repo, &policy).and_then(|r| {
                    swarm_git::reset_worktree_at(&r, &worktree, &branch, &base, clean)
                }),
            }
            .map(|link| report_link(&worktree, link))
            .map_err(|e| e.to_string()),
        }?;
        prepare::prepare_worktree(&worktree, &repo_prepare, &policy)
    })
}

/// The project repository named by the start message (`repo`). Unless
/// commands run unconfined, git on the worktree runs in a Landlock domain
/// that reaches the system's trees (as commands may read them), the
/// worktree and the repository only.
fn open_repo(
    repo: &std::path::Path,
    policy: &swarm_exec::sandbox::SandboxPolicy,
) -> swarm_git::Result<swarm_git::Repo> {
    if repo.as_os_str().is_empty() {
        return Err(swarm_git::Error::Io(std::io::Error::other(
            "the start message names no repository (`repo`)",
        )));
    }
    let repo = swarm_git::Repo::open(repo)?;
    if policy.mode == swarm_exec::sandbox::SandboxMode::Off {
        return Ok(repo);
    }
    let read = swarm_exec::sandbox::readable_trees(&policy.read_only, &policy.hidden).trees;
    Ok(repo.confine(read))
}

/// Says on stderr (the supervisor's log of this worker) when the worktree's
/// `.git` had been replaced by the attempt's commands and was restored.
fn report_link(worktree: &std::path::Path, link: swarm_git::GitLink) {
    if let swarm_git::GitLink::Restored(found) = link {
        eprintln!(
            "agentswarm worker: {}/.git was {found}, not the file git wrote; restored it",
            worktree.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use swarm_protocol::chat::{FunctionCall, ToolCall};

    fn call(id: &str, name: &str, args: serde_json::Value) -> ToolCall {
        ToolCall {
            id: id.into(),
            kind: "function".into(),
            function: FunctionCall {
                name: name.into(),
                arguments: args.to_string(),
            },
        }
    }

    fn reply(seq: u64, calls: Vec<ToolCall>) -> String {
        let message = ChatMessage {
            role: Role::Assistant,
            content: None,
            tool_calls: calls,
            tool_call_id: None,
        };
        serde_json::to_string(&ToWorker::ModelReply {
            seq,
            result: ModelResult::Ok {
                message,
                usage: Default::default(),
            },
        })
        .unwrap()
    }

    fn start(worktree: &std::path::Path, max_turns: u32) -> String {
        start_with(worktree, max_turns, WorktreeSetup::Ready)
    }

    fn start_with(worktree: &std::path::Path, max_turns: u32, setup: WorktreeSetup) -> String {
        let repo = match &setup {
            WorktreeSetup::Create { repo, .. } => repo.clone(),
            WorktreeSetup::Ready | WorktreeSetup::Reset { .. } => Default::default(),
        };
        serde_json::to_string(&ToWorker::Start(Box::new(WorkerStart {
            project_id: "p1".into(),
            task_id: "t1".into(),
            attempt: 1,
            worktree: worktree.to_owned(),
            repo,
            system_prompt: "sys".into(),
            prompt: "Task t1: test".into(),
            max_turns,
            command_timeout_secs: 10,
            output_cap_bytes: 4096,
            commit_subject: "t1: test".into(),
            setup,
            sandbox: Default::default(),
            agent: Default::default(),
            prepare: Default::default(),
            external: None,
        })))
        .unwrap()
    }

    fn run(lines: &[String]) -> Vec<FromWorker> {
        let input = lines.join("\n") + "\n";
        let mut out = Vec::new();
        run_worker(Cursor::new(input), &mut out).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn writes_then_finishes_with_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let repo = swarm_git::Repo::init(dir.path().join("repo"), "p1").unwrap();
        let wt = dir.path().join("wt");
        let setup = WorktreeSetup::Create {
            repo: repo.root().to_owned(),
            branch: "task/t1/1".into(),
            base: repo.head().unwrap(),
        };
        let out = run(&[
            start_with(&wt, 5, setup),
            reply(
                1,
                vec![
                    call(
                        "c1",
                        "write_file",
                        serde_json::json!({"path": "a.txt", "content": "hi"}),
                    ),
                    call("c2", "finish", serde_json::json!({"summary": "wrote a"})),
                ],
            ),
        ]);
        let FromWorker::Finished {
            summary,
            commit,
            turns,
            ..
        } = out.last().unwrap()
        else {
            panic!("{out:?}")
        };
        assert_eq!((summary.as_str(), *turns), ("wrote a", 1));
        assert_eq!(repo.task_commits().unwrap().len(), 0, "not merged yet");
        assert_eq!(repo.changed_files(commit).unwrap()[0].path, "a.txt");
        assert!(matches!(
            &out[0],
            FromWorker::ModelRequest {
                seq: 1,
                turn: 1,
                ..
            }
        ));
        assert!(out
            .iter()
            .any(|m| matches!(m, FromWorker::Progress { tool, .. } if tool == "write_file")));
    }

    #[test]
    fn fails_after_max_turns_and_answers_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let out = run(&[
            start(dir.path(), 2),
            reply(1, vec![call("c1", "list_files", serde_json::json!({}))]),
            reply(2, vec![]),
        ]);
        assert!(
            matches!(out.last().unwrap(), FromWorker::Failed { turns: 2, reason } if reason.contains("max_turns (2)"))
        );
        let FromWorker::ModelRequest { messages, .. } = &out[2] else {
            panic!("{out:?}")
        };
        assert_eq!(messages.last().unwrap().tool_call_id.as_deref(), Some("c1"));
    }

    #[test]
    fn a_model_error_fails_the_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let err = serde_json::to_string(&ToWorker::ModelReply {
            seq: 1,
            result: ModelResult::Error {
                error: "http 500".into(),
            },
        })
        .unwrap();
        let out = run(&[start(dir.path(), 3), err]);
        assert!(
            matches!(out.last().unwrap(), FromWorker::Failed { reason, .. } if reason.contains("http 500"))
        );
    }

    fn last_request(out: &[FromWorker]) -> &Vec<ChatMessage> {
        out.iter()
            .rev()
            .find_map(|m| match m {
                FromWorker::ModelRequest { messages, .. } => Some(messages),
                _ => None,
            })
            .unwrap()
    }

    fn user_texts(messages: &[ChatMessage]) -> Vec<String> {
        messages
            .iter()
            .filter(|m| m.role == Role::User)
            .filter_map(|m| m.content.clone())
            .collect()
    }

    /// Runs `replies` (one a turn) and returns what the worker sent.
    fn run_turns(dir: &std::path::Path, replies: Vec<Vec<ToolCall>>) -> Vec<FromWorker> {
        let mut lines = vec![start(dir, 40)];
        for (i, calls) in replies.into_iter().enumerate() {
            lines.push(reply(i as u64 + 1, calls));
        }
        run(&lines)
    }

    #[test]
    fn a_repeated_call_is_nudged_then_ends_stuck() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "same").unwrap();
        let read = || vec![call("c", "read_file", serde_json::json!({"path": "a.txt"}))];
        let out = run_turns(dir.path(), (0..8).map(|_| read()).collect());
        let FromWorker::Stuck { reason, turns } = out.last().unwrap() else {
            panic!("{out:?}")
        };
        assert_eq!(*turns, 8);
        assert!(
            reason.starts_with("stuck: the same `read_file` call"),
            "{reason}"
        );
        // After the fourth, the model was told what was seen.
        let nudges: Vec<String> = user_texts(last_request(&out))
            .into_iter()
            .filter(|t| t.starts_with("You seem to be stuck"))
            .collect();
        assert_eq!(nudges.len(), 1, "{nudges:?}");
        assert!(nudges[0].contains("same result 4 times"));
    }

    #[test]
    fn a_repeated_error_alternation_and_monologue_end_stuck() {
        let dir = tempfile::tempdir().unwrap();
        let missing = || vec![call("c", "read_file", serde_json::json!({"path": "nope"}))];
        let out = run_turns(dir.path(), (0..6).map(|_| missing()).collect());
        assert!(
            matches!(out.last().unwrap(), FromWorker::Stuck { reason, turns: 6 } if reason.contains("failed 3 times") && reason.contains("does not exist")),
            "{:?}",
            out.last()
        );

        let a = || vec![call("a", "list_files", serde_json::json!({}))];
        let b = || {
            vec![call(
                "b",
                "run_command",
                serde_json::json!({"command": "true"}),
            )]
        };
        let out = run_turns(
            dir.path(),
            (0..12)
                .map(|i| if i % 2 == 0 { a() } else { b() })
                .collect(),
        );
        assert!(
            matches!(out.last().unwrap(), FromWorker::Stuck { reason, turns: 12 } if reason.contains("alternating")),
            "{:?}",
            out.last()
        );

        let out = run_turns(dir.path(), (0..6).map(|_| Vec::new()).collect());
        assert!(
            matches!(out.last().unwrap(), FromWorker::Stuck { reason, turns: 6 } if reason.contains("without a tool call")),
            "{:?}",
            out.last()
        );
        let texts = user_texts(last_request(&out));
        assert_eq!(
            texts.iter().filter(|t| t.as_str() == NUDGE).count(),
            4,
            "{texts:?}"
        );
        assert_eq!(
            texts
                .iter()
                .filter(|t| t.starts_with("You seem to be stuck"))
                .count(),
            1
        );
    }

    #[test]
    fn context_errors_shorten_then_end_stuck() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big.txt"), "x".repeat(5000)).unwrap();
        let err = |seq: u64| {
            serde_json::to_string(&ToWorker::ModelReply {
                seq,
                result: ModelResult::Error {
                    error: "http 400: This model's maximum context length is 8192 tokens (context_length_exceeded)".into(),
                },
            })
            .unwrap()
        };
        let read = |i: u32| {
            vec![call(
                &format!("c{i}"),
                "read_file",
                serde_json::json!({"path": "big.txt", "start_line": 1, "end_line": i}),
            )]
        };
        let mut lines = vec![start(dir.path(), 40)];
        for i in 1..=3 {
            lines.push(reply(u64::from(i), read(i)));
        }
        for seq in 4..=12 {
            lines.push(err(seq));
        }
        let out = run(&lines);
        let FromWorker::Stuck { reason, turns } = out.last().unwrap() else {
            panic!("{out:?}")
        };
        assert!(reason.contains("context window"), "{reason}");
        // Nudged once after three, stuck after three more.
        assert_eq!(*turns, 9);
        // The older tool outputs were shortened before the retries.
        let m = last_request(&out);
        let tool: Vec<_> = m.iter().filter(|m| m.role == Role::Tool).collect();
        assert!(tool[0].content.as_ref().unwrap().contains("shortened"));
        assert!(!tool[2].content.as_ref().unwrap().contains("shortened"));
    }

    /// The worker's stdin, fed line by line from a test.
    struct LineReader {
        rx: std::sync::mpsc::Receiver<String>,
        buf: Vec<u8>,
        pos: usize,
    }

    impl std::io::Read for LineReader {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.pos == self.buf.len() {
                match self.rx.recv() {
                    Ok(line) => {
                        self.buf = (line + "\n").into_bytes();
                        self.pos = 0;
                    }
                    Err(_) => return Ok(0),
                }
            }
            let n = out.len().min(self.buf.len() - self.pos);
            out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    /// The worker's stdout, read line by line by a test.
    struct LineWriter {
        tx: std::sync::mpsc::Sender<String>,
        buf: Vec<u8>,
    }

    impl Write for LineWriter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.buf.extend_from_slice(b);
            while let Some(i) = self.buf.iter().position(|&c| c == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let _ = self
                    .tx
                    .send(String::from_utf8_lossy(&line).trim_end().to_owned());
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_300_turn_attempt_stays_inside_a_32k_window() {
        const WINDOW: u64 = 32_768;
        let dir = tempfile::tempdir().unwrap();
        let content: String = (1..=3000)
            .map(|i| format!("line {i:>5}: some code that the agent reads again\n"))
            .collect();
        std::fs::write(dir.path().join("f.txt"), content).unwrap();
        let (to_worker, worker_in) = std::sync::mpsc::channel::<String>();
        let (worker_out, from_worker) = std::sync::mpsc::channel::<String>();
        let worker = std::thread::spawn(move || {
            let input = std::io::BufReader::new(LineReader {
                rx: worker_in,
                buf: Vec::new(),
                pos: 0,
            });
            run_worker(
                input,
                LineWriter {
                    tx: worker_out,
                    buf: Vec::new(),
                },
            )
        });
        let mut first: ToWorker = serde_json::from_str(&start(dir.path(), 300)).unwrap();
        if let ToWorker::Start(s) = &mut first {
            s.agent.context_window_tokens = WINDOW;
            s.prompt = "Task t1: read the file\nAttempt: 1\nDependencies: none".into();
        }
        to_worker
            .send(serde_json::to_string(&first).unwrap())
            .unwrap();
        let (mut summaries, mut condensed, mut max_tokens) = (0, 0, 0);
        let mut last_request: Vec<ChatMessage> = Vec::new();
        let end = loop {
            let line = from_worker.recv().unwrap();
            let msg: FromWorker = serde_json::from_str(&line).unwrap();
            match msg {
                FromWorker::ModelRequest {
                    seq,
                    turn,
                    messages,
                    tools,
                } => {
                    let tokens = context::request_tokens(&messages, &tools);
                    max_tokens = max_tokens.max(tokens);
                    assert!(tokens <= WINDOW * 3 / 4, "turn {turn}: {tokens} tokens");
                    let message = if tools.is_empty() {
                        summaries += 1;
                        ChatMessage::assistant(
                            "Done: read pages of f.txt. Files changed: none. Left: finish.",
                        )
                    } else {
                        // The first message is always kept, whole.
                        assert_eq!(messages[0].content.as_deref(), Some("sys"));
                        assert_eq!(
                            messages[1].content.as_deref(),
                            Some("Task t1: read the file\nAttempt: 1\nDependencies: none")
                        );
                        last_request = messages;
                        let from = (turn as usize * 37) % 2900 + 1;
                        ChatMessage {
                            role: Role::Assistant,
                            content: None,
                            tool_calls: vec![call(
                                &format!("c{turn}"),
                                "read_file",
                                serde_json::json!({"path": "f.txt", "start_line": from, "end_line": from + 60}),
                            )],
                            tool_call_id: None,
                        }
                    };
                    let reply = ToWorker::ModelReply {
                        seq,
                        result: ModelResult::Ok {
                            message,
                            usage: Default::default(),
                        },
                    };
                    to_worker
                        .send(serde_json::to_string(&reply).unwrap())
                        .unwrap();
                }
                FromWorker::Progress { tool, .. } if tool == "condense" => condensed += 1,
                FromWorker::Progress { .. } => {}
                other => break other,
            }
        };
        worker.join().unwrap().unwrap();
        assert!(
            matches!(&end, FromWorker::Failed { turns: 300, reason } if reason.contains("max_turns")),
            "{end:?}"
        );
        assert!(condensed > 0 && summaries > 0, "{condensed} {summaries}");
        assert!(
            max_tokens > WINDOW / 2,
            "{max_tokens}: the window was never nearly full"
        );
        // The latest turns are kept as they were: calls and their results.
        let n = last_request.len();
        for (k, turn) in [(1, 299), (3, 298), (5, 297)] {
            let result = &last_request[n - k];
            assert_eq!(
                result.tool_call_id.as_deref(),
                Some(format!("c{turn}").as_str())
            );
            let text = result.content.as_deref().unwrap();
            assert!(
                !text.contains("shortened") && text.lines().count() >= 60,
                "{text}"
            );
            assert_eq!(last_request[n - k - 1].tool_calls[0].id, format!("c{turn}"));
        }
        // The summary of what came before is there, and says so.
        assert!(last_request
            .iter()
            .any(|m| m.content.as_deref().is_some_and(
                |c| c.starts_with(context::SUMMARY_PREFIX) && c.contains("Files changed")
            )));
    }
}

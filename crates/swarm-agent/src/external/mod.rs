//! An outside agent doing the attempt (docs/agents.md): the worker hosts it
//! as a child, so the worktree, the memory limit, the wall time, the
//! sandbox and the commit stay this process's, as for the built-in agent.
//!
//! - The agent runs confined in the worktree, behind a relay
//!   ([`swarm_exec::relay`]) that gives it a loopback address for its model
//!   endpoint inside its network namespace.
//! - Its model traffic reaches [`endpoint`] on a UNIX socket in the
//!   attempt's private directory, with a per-attempt token; each request
//!   goes to the supervisor's gateway as this worker's `ModelRequest`, so
//!   the real key never leaves the supervisor. `max_turns` bounds the
//!   requests.
//! - ACP agents are driven by [`acp`]; `command` agents by [`command`].
//!   Their tool calls become `Progress` messages (tool events), and their
//!   conversation the attempt's transcript.
//! - When the agent ends its turn, the worker commits the worktree.
//!
//! The IPC channel is used from this thread only: the agent's side runs on
//! a tokio runtime on another thread and asks through [`Pump`].

mod acp;
mod command;
mod endpoint;
pub mod wire;

use crate::{Channel, Result, Setup};
use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use swarm_protocol::agent::{AgentKind, AgentSpec, Credentials};
use swarm_protocol::chat::{ChatMessage, ToolSpec};
use swarm_protocol::worker::{FromWorker, ModelResult, WorkerStart, SETUP_FAILED};

/// The socket of the agent's endpoint, relative to the worktree (short:
/// a socket path has at most 107 bytes).
pub const SOCKET: &str = ".agentswarm/gateway.sock";

/// What the agent's side asks of the IPC thread.
pub(crate) enum Pump {
    Model {
        messages: Vec<ChatMessage>,
        tools: Vec<ToolSpec>,
        reply: tokio::sync::oneshot::Sender<ModelResult>,
    },
    Progress {
        tool: String,
        detail: String,
    },
    Done(AgentEnd),
}

/// How the agent's turn ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AgentEnd {
    /// It ended its turn: the worktree is committed with this summary.
    Finished {
        summary: String,
    },
    Failed {
        reason: String,
    },
}

/// How the agent's protocol ended, before its exit status is known.
pub(crate) enum Ended {
    /// The protocol said how the turn ended.
    Done(AgentEnd),
    /// Its output ended before it said (it exited or crashed).
    Exited,
    /// Its output ended; its exit status says whether it succeeded, and
    /// this is the summary if it did (`command` agents).
    ExitStatus(String),
}

/// One line of at most 300 characters, for tool events and reasons.
pub(crate) fn short(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= 300 {
        return one;
    }
    let mut t: String = one.chars().take(299).collect();
    t.push('…');
    t
}

pub(crate) struct Shared {
    token: String,
    pump: Mutex<mpsc::Sender<Pump>>,
    ids: AtomicU64,
}

impl Shared {
    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn progress(&self, tool: &str, detail: &str) {
        if let Ok(p) = self.pump.lock() {
            let _ = p.send(Pump::Progress {
                tool: tool.to_owned(),
                detail: short(detail),
            });
        }
    }
}

/// What an outside agent is told besides the task: it works in a git
/// worktree that the swarm commits. After the task's own prompt, so that
/// the prompt still begins with `Task <id>: ` (docs/worker-tools.md).
pub const AGENT_NOTE: &str = "You are one worker of AgentSwarm, working in the current directory, a git \
worktree of the project. Do the task above by creating and editing files here; run what you need to \
check it. Do not commit, push or switch branches: when you end your turn, the swarm commits what is in \
the directory and merges it. End with a one-line summary of what you did.";

/// A random token for the agent's endpoint (128 bits from the kernel).
fn new_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(format!(
        "swarm-attempt-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

fn failed(reason: impl Into<String>, turns: u32) -> FromWorker {
    FromWorker::Failed {
        reason: reason.into(),
        turns,
    }
}

/// Runs the attempt with the outside agent `spec`.
pub(crate) fn run<R: BufRead, W: Write>(
    ch: &mut Channel<R, W>,
    start: &WorkerStart,
    spec: &AgentSpec,
    setup: &mut Option<Setup>,
    git: Option<&swarm_git::WorktreeHelper>,
) -> Result<FromWorker> {
    if let Some(h) = setup.take() {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Ok(failed(format!("{SETUP_FAILED}: {e}"), 0)),
            Err(_) => {
                return Ok(failed(
                    format!("{SETUP_FAILED}: the setup thread panicked"),
                    0,
                ))
            }
        }
    }
    let sandbox = match prepare_sandbox(start, spec) {
        Ok(s) => Arc::new(s),
        Err(e) => return Ok(failed(e, 0)),
    };
    let token = new_token()?;
    // The socket's path is relative to the worktree, inside and out.
    std::env::set_current_dir(&start.worktree)?;
    std::fs::create_dir_all(swarm_exec::sandbox::PRIVATE_DIR)?;
    let _ = std::fs::remove_file(SOCKET);
    let listener = std::os::unix::net::UnixListener::bind(SOCKET)?;
    listener.set_nonblocking(true)?;
    // A root service's agent runs as the sandbox uid, which must be able
    // to connect (write) to the socket; nobody else gets that right.
    if let Some(uid) = sandbox.uid() {
        std::os::unix::fs::chown(SOCKET, Some(uid), None)?;
    }

    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        token: token.clone(),
        pump: Mutex::new(tx),
        ids: AtomicU64::new(0),
    });
    let agent_side = {
        let shared = shared.clone();
        let spec = spec.clone();
        let start = start.clone();
        std::thread::spawn(move || {
            let end = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(drive(shared.clone(), spec, start, sandbox, listener, token)),
                Err(e) => AgentEnd::Failed {
                    reason: format!("cannot start the agent's runtime: {e}"),
                },
            };
            if let Ok(p) = shared.pump.lock() {
                let _ = p.send(Pump::Done(end));
            }
        })
    };
    drop(shared);

    let mut seq = 0u64;
    let mut turns = 0u32;
    let mut over_turns = false;
    let end = loop {
        let Ok(msg) = rx.recv() else {
            break AgentEnd::Failed {
                reason: "the agent's side ended without a result".into(),
            };
        };
        match msg {
            Pump::Model {
                messages,
                tools,
                reply,
            } => {
                if turns >= start.max_turns {
                    over_turns = true;
                    let _ = reply.send(ModelResult::Error {
                        error: format!(
                            "max_turns ({}) reached: this attempt may make no more model requests",
                            start.max_turns
                        ),
                    });
                    continue;
                }
                turns += 1;
                let result = crate::ask(ch, &mut seq, turns, messages, tools)?;
                if let ModelResult::Ok { message, .. } = &result {
                    for c in &message.tool_calls {
                        ch.send(&FromWorker::Progress {
                            turn: turns,
                            tool: c.function.name.clone(),
                            detail: short(&c.function.arguments),
                        })?;
                    }
                }
                let _ = reply.send(result);
            }
            Pump::Progress { tool, detail } => {
                ch.send(&FromWorker::Progress {
                    turn: turns,
                    tool,
                    detail,
                })?;
            }
            Pump::Done(end) => break end,
        }
    };
    let _ = agent_side.join();
    crate::kill_leftovers();
    let _ = std::fs::remove_file(SOCKET);
    Ok(match end {
        _ if over_turns => failed(
            format!(
                "max_turns ({}) reached without the agent ending its turn",
                start.max_turns
            ),
            turns,
        ),
        AgentEnd::Finished { summary } => match crate::commit(start, git, summary, turns) {
            Ok(done) => done,
            Err(reason) => failed(reason, turns),
        },
        AgentEnd::Failed { reason } => failed(reason, turns),
    })
}

/// The attempt's sandbox for the agent: the task's policy, plus this
/// program (the relay) and the agent's `read_paths` readable; with its
/// own credentials, the network too.
fn prepare_sandbox(
    start: &WorkerStart,
    spec: &AgentSpec,
) -> std::result::Result<swarm_exec::sandbox::Sandbox, String> {
    let mut policy = start.sandbox.clone();
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    policy.read_only.push(exe);
    policy.read_only.extend(spec.read_paths.iter().cloned());
    if spec.credentials == Credentials::Own {
        policy.allow_network = true;
    }
    let sandbox = swarm_exec::sandbox::Sandbox::prepare(&policy, &start.worktree)
        .map_err(|e| format!("cannot confine the agent: {}", e.0))?;
    if spec.credentials == Credentials::Own {
        copy_home_files(&spec.home_files, &start.worktree)?;
    }
    Ok(sandbox)
}

/// Copies the agent's login into the attempt's private HOME.
fn copy_home_files(
    files: &[swarm_protocol::agent::HomeFile],
    worktree: &Path,
) -> std::result::Result<(), String> {
    let home = worktree.join(swarm_exec::sandbox::PRIVATE_DIR).join("home");
    for f in files {
        copy_tree(&f.from, &home.join(&f.to)).map_err(|e| {
            format!(
                "cannot copy {} into the attempt's HOME: {e}",
                f.from.display()
            )
        })?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.is_dir() {
        std::fs::create_dir_all(to)?;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        }
    } else if meta.is_file() {
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::copy(from, to)?;
    }
    Ok(())
}

/// `{token}` and `{prompt}` filled in; `{gateway}` is the relay's.
fn fill(s: &str, token: &str, prompt: &str) -> String {
    s.replace("{token}", token).replace("{prompt}", prompt)
}

/// The agent's side: serve its endpoint, start it behind the relay, drive
/// it, and end it.
async fn drive(
    shared: Arc<Shared>,
    spec: AgentSpec,
    start: WorkerStart,
    sandbox: Arc<swarm_exec::sandbox::Sandbox>,
    listener: std::os::unix::net::UnixListener,
    token: String,
) -> AgentEnd {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            return AgentEnd::Failed {
                reason: format!("cannot serve the agent's endpoint: {e}"),
            }
        }
    };
    let app = endpoint::router(shared.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let prompt = format!("{}\n\n{AGENT_NOTE}", start.prompt);
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            return AgentEnd::Failed {
                reason: format!("cannot find this program for the relay: {e}"),
            }
        }
    };
    let templated: Vec<&str> = spec
        .env
        .iter()
        .filter(|(_, v)| v.contains(swarm_exec::relay::GATEWAY_PLACEHOLDER))
        .map(|(k, _)| k.as_str())
        .collect();
    let mut args: Vec<OsString> = vec![
        "agent-relay".into(),
        "--socket".into(),
        SOCKET.into(),
        "--templated".into(),
        templated.join(",").into(),
        "--".into(),
    ];
    args.extend(
        spec.command
            .iter()
            .map(|c| OsString::from(fill(c, &token, &prompt))),
    );
    let env: Vec<(OsString, OsString)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.into(), fill(v, &token, "").into()))
        .collect();
    let mut child = match swarm_exec::spawn_confined(
        &exe,
        &args,
        &start.worktree,
        &env,
        swarm_exec::ChildStderr::Piped,
        &sandbox,
    ) {
        Ok(c) => c,
        Err(e) => {
            server.abort();
            return AgentEnd::Failed {
                reason: format!("cannot start agent {}: {e}", spec.name),
            };
        }
    };
    let pid = child.pid();
    let stderr_tail = child.stderr.take().map(|err| {
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(err).lines();
            let mut tail = std::collections::VecDeque::new();
            while let Ok(Some(l)) = lines.next_line().await {
                eprintln!("agent: {l}");
                if tail.len() == 8 {
                    tail.pop_front();
                }
                tail.push_back(l);
            }
            tail.into_iter().collect::<Vec<_>>().join(" | ")
        })
    });
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        server.abort();
        return AgentEnd::Failed {
            reason: "the agent has no stdio pipes".into(),
        };
    };
    let end = match spec.kind {
        AgentKind::Acp => acp::run(stdin, stdout, &prompt, &start.worktree, &shared, &spec).await,
        AgentKind::Command => {
            drop(stdin);
            command::run(stdout, spec.output, &shared, &spec).await
        }
    };
    // ACP agents do not all exit when their stdin closes: the group gets
    // SIGTERM, then SIGKILL.
    let status = match tokio::time::timeout(Duration::from_millis(300), child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            let _ = swarm_exec::signal_group(pid, nix::sys::signal::Signal::SIGTERM);
            match tokio::time::timeout(Duration::from_secs(3), child.wait()).await {
                Ok(s) => s.ok(),
                Err(_) => {
                    let _ = swarm_exec::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                    child.wait().await.ok()
                }
            }
        }
    };
    server.abort();
    let tail = match stderr_tail {
        Some(h) => tokio::time::timeout(Duration::from_millis(500), h)
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default(),
        None => String::new(),
    };
    match end {
        Ended::Done(e) => e,
        Ended::Exited => {
            let how = status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown status".into());
            let mut reason = format!("agent {} exited before ending its turn ({how})", spec.name);
            if !tail.is_empty() {
                reason.push_str(": ");
                reason.push_str(&short(&tail));
            }
            AgentEnd::Failed { reason }
        }
        Ended::ExitStatus(summary) => match status {
            Some(s) if s.success() => AgentEnd::Finished { summary },
            other => {
                let how = other
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "unknown status".into());
                let mut reason = format!("agent {} failed ({how})", spec.name);
                if !tail.is_empty() {
                    reason.push_str(": ");
                    reason.push_str(&short(&tail));
                }
                AgentEnd::Failed { reason }
            }
        },
    }
}

//! The verify step: the plan's commands, run by the engine itself in a
//! clean (detached) checkout of `main`, each with a timeout. It passes when
//! every command exits 0.

use crate::prompts::CommandResult;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use swarm_exec::sandbox::SandboxPolicy;
use swarm_exec::Sandbox;
use tokio_util::sync::CancellationToken;

/// How each verify command runs.
pub struct Limits<'a> {
    pub timeout: Duration,
    /// Bytes of output kept (head and tail).
    pub output_cap: usize,
    /// The same confinement as the workers' commands, on the checkout.
    pub sandbox: &'a SandboxPolicy,
}

/// Runs blocking: call it through `spawn_blocking`. The commands run inside
/// `enclosure` (the same memory limit as a worker), which the engine kills
/// when it stops, and in the project's sandbox; no command starts after
/// `cancel` fired.
pub fn run_verify(
    repo: &swarm_git::Repo,
    checkout: &Path,
    commands: &[String],
    limits: Limits<'_>,
    enclosure: Option<Arc<swarm_exec::Enclosure>>,
    cancel: &CancellationToken,
) -> Result<Vec<CommandResult>, String> {
    let Limits {
        timeout,
        output_cap,
        sandbox,
    } = limits;
    if checkout.exists() {
        let _ = repo.remove_worktree(checkout);
    }
    repo.add_detached_worktree(checkout)
        .map_err(|e| format!("cannot check out main for verify: {e}"))?;
    let sandbox = match Sandbox::prepare(sandbox, checkout) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            let _ = repo.remove_worktree(checkout);
            return Err(format!("the verify commands were not run: {e}"));
        }
    };
    let mut results = Vec::with_capacity(commands.len());
    for command in commands {
        if cancel.is_cancelled() {
            break;
        }
        let opts = swarm_exec::ShellOptions {
            cwd: checkout.to_owned(),
            env: Vec::new(),
            timeout,
            output_cap,
            enclosure: enclosure.clone(),
            sandbox: Some(sandbox.clone()),
        };
        let r = match swarm_exec::run_shell(command, &opts) {
            Ok(out) => CommandResult {
                command: command.clone(),
                exit: if out.timed_out {
                    format!("timed out after {} s", timeout.as_secs())
                } else {
                    out.exit.to_string()
                },
                passed: out.exit.success() && !out.timed_out,
                timed_out: out.timed_out,
                duration_ms: out.duration.as_millis() as u64,
                output: out.output,
            },
            Err(e) => CommandResult {
                command: command.clone(),
                exit: format!("could not run: {e}"),
                passed: false,
                timed_out: false,
                duration_ms: 0,
                output: String::new(),
            },
        };
        results.push(r);
    }
    if let Err(e) = repo.remove_worktree(checkout) {
        tracing::warn!(error = %e, "could not remove the verify checkout");
    }
    Ok(results)
}

//! An existing repository's own preparation of a worktree
//! (`.agentswarm.toml`: `copy` and `setup`; docs/existing-repos.md), done
//! on the setup thread once git has the worktree ready, before any tool
//! runs.
//!
//! Copies go through the same descriptor-based file access as the file
//! tools: no symlink is followed, nothing is written outside the worktree.
//! Commands run like the model's: in the sandbox, with a timeout.

use crate::paths::{self, beneath, Purpose};
use nix::fcntl::OFlag;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use swarm_exec::sandbox::SandboxPolicy;
use swarm_protocol::worker::RepoPrepare;

/// Most bytes of a file to copy.
const MAX_COPY_BYTES: u64 = 16 << 20;

/// Copies, then (when `prepare.run_commands`) runs the set-up commands.
/// The error says which step failed and how.
pub fn prepare_worktree(
    worktree: &Path,
    prepare: &RepoPrepare,
    policy: &SandboxPolicy,
) -> Result<(), String> {
    if prepare.copy.is_empty() && !prepare.run_commands {
        return Ok(());
    }
    let root =
        beneath::open_root(worktree).map_err(|e| format!("cannot open the worktree: {e}"))?;
    for (from, to) in &prepare.copy {
        let src = paths::check(from, Purpose::Read).map_err(|e| format!("copy {from}: {e}"))?;
        let dst = paths::check(to, Purpose::Write).map_err(|e| format!("copy to {to}: {e}"))?;
        let fd = beneath::open_beneath(
            std::os::fd::AsFd::as_fd(&root),
            &src,
            OFlag::O_RDONLY,
            beneath::Resolver::Auto,
        )
        .map_err(|e| {
            format!("copy {from} → {to}: {from} cannot be opened in the worktree ({e}); is it in the repository?")
        })?;
        let mut content = Vec::new();
        std::fs::File::from(fd)
            .take(MAX_COPY_BYTES)
            .read_to_end(&mut content)
            .map_err(|e| format!("copy {from}: {e}"))?;
        beneath::replace_file(std::os::fd::AsFd::as_fd(&root), &dst, &content)
            .map_err(|e| format!("copy {from} → {to}: {e}"))?;
    }
    if !prepare.run_commands {
        return Ok(());
    }
    let sandbox = swarm_exec::Sandbox::prepare(policy, worktree)
        .map_err(|e| format!("the setup commands were not run: {e}"))?;
    let sandbox = Arc::new(sandbox);
    for command in &prepare.commands {
        let opts = swarm_exec::ShellOptions {
            cwd: worktree.to_owned(),
            env: Vec::new(),
            timeout: Duration::from_secs(prepare.timeout_secs.max(1)),
            output_cap: 4096,
            enclosure: None,
            sandbox: Some(sandbox.clone()),
        };
        let out = swarm_exec::run_shell(command, &opts)
            .map_err(|e| format!("setup command `{command}` could not run: {e}"))?;
        if out.timed_out {
            return Err(format!(
                "setup command `{command}` timed out after {} s",
                prepare.timeout_secs
            ));
        }
        if !out.exit.success() {
            let tail: String = out
                .output
                .chars()
                .rev()
                .take(1500)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(format!(
                "setup command `{command}` failed ({}): {}",
                out.exit,
                swarm_protocol::text::escape_control(tail.trim())
            ));
        }
    }
    Ok(())
}

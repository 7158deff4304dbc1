//! Warm workers: spare `agentswarm worker` processes, started and put in
//! its memory enclosure before an attempt needs it, so that a dispatch does
//! not wait for a process to start (a 20 MB binary's `exec` and start-up)
//! or for its cgroup to be made and joined (one join waited 11 ms for an RCU
//! grace period here: docs/benchmarks.md).
//!
//! The same serves a worker node: a spare is an `ssh` session to the node's
//! `agentswarm node worker`, connected and waiting (docs/scale-out.md).
//! Either keeps up to one spare a slot: when the model's latency is steady,
//! attempts end in waves, and a single spare served one attempt of each
//! wave. A node's count is bounded by the sessions its sshd accepts
//! (`max_sessions`), this machine's by four (an idle spare holds about
//! 4.5 MB).
//!
//! Isolation does not change: a worker still serves one attempt and exits.
//! The spare waits for its start message with nothing else: no task, no
//! worktree, no secret (its environment is the allow-list, as every
//! worker's). When one is taken, the next is started in the background.
//! The spare goes (killed with its enclosure) when the runner does, and
//! with the supervisor (the parent-death signal).

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// How a worker process is started.
#[derive(Debug, Clone)]
pub struct WorkerLaunch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The worker's working directory (where worktrees live).
    pub cwd: PathBuf,
    /// Makes each worker's enclosure (its memory limit and kill handle).
    pub limiter: Arc<swarm_exec::MemoryLimiter>,
    /// `WORKER_MEMORY_LIMIT_MB`, in bytes, for a worker's whole tree.
    pub memory_limit: u64,
    /// Added to the allow-listed environment (`SSH_AUTH_SOCK` for `ssh`).
    pub env: Vec<(OsString, OsString)>,
}

/// A started worker in its enclosure.
pub type Started = (swarm_exec::ChildProcess, Arc<swarm_exec::Enclosure>);

impl WorkerLaunch {
    /// Makes the enclosure and starts a worker in it. Must be called inside
    /// a tokio runtime.
    pub fn start(&self) -> Result<Started, String> {
        let enclosure = match self.limiter.enclose(self.memory_limit) {
            Ok(e) => Arc::new(e),
            Err(e) => {
                return Err(format!(
                    "cannot set up the memory limit ({}): {e}",
                    self.limiter.mechanism().as_str()
                ))
            }
        };
        let opts = swarm_exec::SpawnOptions {
            // Not the worktree: a new one does not exist until the worker makes it.
            cwd: Some(self.cwd.clone()),
            env: self.env.clone(),
            stderr: swarm_exec::ChildStderr::Piped,
            enclosure: Some(enclosure.clone()),
        };
        match swarm_exec::spawn_child(&self.program, &self.args, &opts) {
            Ok(child) => Ok((child, enclosure)),
            Err(e) => {
                enclosure.release();
                Err(format!("cannot start the worker process: {e}"))
            }
        }
    }
}

/// The spare workers of one runner (see the module's documentation).
#[derive(Debug)]
pub struct WarmWorkers {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    launch: WorkerLaunch,
    /// How many spares are kept.
    spares: usize,
    /// The spares; `closed` once the runner is gone (a spare started after
    /// that is killed at once).
    slot: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Oldest first (the likeliest to be connected).
    spares: std::collections::VecDeque<Spare>,
    /// Spares being started.
    refilling: usize,
    closed: bool,
}

/// A spare worker; dropped unused, it is killed with its whole enclosure.
#[derive(Debug)]
struct Spare(Option<Started>);

impl Drop for Spare {
    fn drop(&mut self) {
        if let Some((child, enclosure)) = self.0.take() {
            drop(child); // killed on drop
            enclosure.release();
        }
    }
}

impl WarmWorkers {
    /// How its workers are started.
    pub fn launch(&self) -> &WorkerLaunch {
        &self.inner.launch
    }

    /// Keeps `spares` spares (none: every worker is started when taken),
    /// started on the first [`take`](Self::take) or [`fill`](Self::fill).
    pub fn with_spares(launch: WorkerLaunch, spares: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                launch,
                spares,
                slot: Mutex::new(State::default()),
            }),
        }
    }

    /// A started worker: a spare when one is ready and alive, else a new
    /// one; either way the spares are then refilled in the background
    /// ([`fill`](Self::fill)).
    pub async fn take(&self) -> Result<Started, String> {
        let mut ready = None;
        let mut dead = Vec::new();
        {
            let mut slot = self.inner.lock();
            while let Some(mut s) = slot.spares.pop_front() {
                let alive =
                    s.0.as_mut()
                        .is_some_and(|(child, _)| matches!(child.try_wait(), Ok(None)));
                if alive {
                    ready = s.0.take();
                    break;
                }
                // Ended meanwhile (killed from outside, a session refused):
                // not used, dropped outside the lock.
                dead.push(s);
            }
        }
        drop(dead);
        let started = match ready {
            Some(started) => Ok(started),
            None => {
                let inner = self.inner.clone();
                tokio::task::spawn_blocking(move || inner.launch.start())
                    .await
                    .map_err(|e| format!("cannot start the worker process: {e}"))?
            }
        };
        self.fill();
        started
    }

    /// Starts spares in the background until there are as many, ready or
    /// being started, as are kept; none once the runner is gone. At the
    /// start of a run, so that the first attempts find them ready, and after
    /// each one taken.
    pub fn fill(&self) {
        let missing = {
            let mut slot = self.inner.lock();
            if slot.closed {
                return;
            }
            let missing = self
                .inner
                .spares
                .saturating_sub(slot.spares.len() + slot.refilling);
            slot.refilling += missing;
            missing
        };
        for _ in 0..missing {
            self.start_spare();
        }
    }

    fn start_spare(&self) {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let started = inner.launch.start();
            let unused = {
                let mut slot = inner.lock();
                slot.refilling -= 1;
                match started {
                    Ok(started) if !slot.closed => {
                        slot.spares.push_back(Spare(Some(started)));
                        None
                    }
                    Ok(started) => Some(Spare(Some(started))),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start a spare worker");
                        None
                    }
                }
            };
            // Killed and its enclosure released, outside the lock.
            drop(unused);
        });
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while it was held leaves a usable slot.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for WarmWorkers {
    fn drop(&mut self) {
        let spares = {
            let mut slot = self.inner.lock();
            slot.closed = true;
            std::mem::take(&mut slot.spares)
        };
        drop(spares);
    }
}

//! The one place AgentSwarm spawns processes.
//!
//! Every child gets `env_clear()` plus an allow-list ([`allowed_env`]), its
//! own process group, and stdin closed unless it is the IPC pipe. Three entry
//! points:
//!
//! - [`run`]: short helper commands (git). No `pre_exec` hook, so the standard
//!   library can use `posix_spawn`, which is much cheaper than fork+exec in a
//!   large process; an optional timeout kills the group.
//! - [`run_shell`]: model-written or plan-written shell commands. Output
//!   (stdout and stderr merged) is capped, the whole group is killed on
//!   timeout and after the command exits (no stray background jobs), and the
//!   child gets `PR_SET_PDEATHSIG` with a `getppid()` re-check.
//! - [`spawn_child`]: the long-lived `agentswarm worker` processes (tokio,
//!   stdin/stdout pipes for the JSON-lines protocol, `PR_SET_PDEATHSIG`).
//! - [`fork::fork_confined`]: a helper forked without `exec` from a
//!   single-threaded process, in a Landlock domain, serving requests on a
//!   socket (the worker's git in process).
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits.
//! [`spawn_child`] therefore forks on one dedicated thread that lives as long
//! as the process; [`run_shell`] is called from a blocking thread that waits
//! for the command, so the thread outlives the command it started.
//!
//! Every direct child is registered while it runs, so that
//! [`reap_orphans`] can tell the processes a child subreaper adopted (orphans
//! of a dead worker's commands) from its own children, and kill and reap
//! only those. [`tree`] reads process trees; [`limit`] holds the memory
//! limit of a worker's whole tree (cgroup or watchdog); [`sandbox`] confines
//! the commands [`run_shell`] starts.

pub mod fork;
pub mod limit;
pub mod relay;
pub mod sandbox;
pub mod tree;

pub use sandbox::{Jail, Sandbox};

pub use limit::{Enclosure, LimiterChoice, Mechanism, MemoryLimiter};

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program}` failed while running: {source}")]
    Io {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program}` timed out after {secs} s and was killed")]
    Timeout { program: String, secs: u64 },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Environment variables a child may inherit. Nothing else passes: no API
/// keys, tokens or cloud credentials reach a worker or the commands it runs.
pub const ENV_ALLOW_LIST: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ",
    "TMPDIR",
];

static SPAWNED: AtomicU64 = AtomicU64::new(0);

/// Direct children that have not been waited for yet. Held across a spawn,
/// so that [`reap_orphans`] never sees a child before it is registered.
static CHILDREN: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

fn children() -> MutexGuard<'static, Option<HashSet<u32>>> {
    // A panic while the set was held leaves it usable: it is only a set of pids.
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `spawn` with the registry held and registers the child it made, so
/// that [`reap_orphans`] never takes a fresh child for an adopted orphan.
fn spawn_registered<T>(
    spawn: impl FnOnce() -> std::io::Result<T>,
    pid_of: impl Fn(&T) -> u32,
) -> std::io::Result<T> {
    let mut guard = children();
    let child = spawn()?;
    guard
        .get_or_insert_with(HashSet::new)
        .insert(pid_of(&child));
    Ok(child)
}

/// Makes the child join `enclosure`'s cgroup between fork and exec.
fn join_enclosure(cmd: &mut Command, enclosure: Option<&Arc<Enclosure>>) {
    if let Some(fd) = enclosure.and_then(|e| e.join_fd()) {
        // SAFETY: the hook makes one write(2) on an fd opened before the fork.
        unsafe {
            cmd.pre_exec(move || limit::join_cgroup_in_child(fd));
        }
    }
}

fn unregister(pid: u32) {
    if let Some(set) = children().as_mut() {
        set.remove(&pid);
    }
}

/// How long [`reap_orphans`] keeps killing before it gives up.
pub const ORPHAN_DEADLINE: Duration = Duration::from_secs(2);

/// Kills and reaps the processes this process adopted as a child subreaper
/// ([`tree::become_subreaper`]): anything whose parent is this process but
/// that it did not spawn, i.e. what outlived a worker or a verify command,
/// and everything below them. Repeats until none is left or
/// [`ORPHAN_DEADLINE`] has passed (see [`reap_orphans_within`]).
/// Returns how many adopted processes were found.
pub fn reap_orphans() -> usize {
    reap_orphans_within(ORPHAN_DEADLINE)
}

/// [`reap_orphans`] with its deadline. One pass is not enough: a process
/// that forks and `setsid`s in a loop (each generation exits right after its
/// fork) leaves a fresh orphan behind every time one is killed a moment
/// too late. Each killed process's children are adopted by this process in
/// turn, so listing this process's children again and again, killing them
/// and their trees and reaping the dead, ends the chase: a generation is
/// caught before it forks, or its child is caught in the next round.
pub fn reap_orphans_within(deadline: Duration) -> usize {
    let until = Instant::now() + deadline;
    let mut found: HashSet<u32> = HashSet::new();
    loop {
        // Listed with the registry held (no spawn in between), killed after:
        // an adopted pid cannot be reused until this process reaps it.
        let adopted: Vec<u32> = {
            let guard = children();
            tree::own_children()
                .into_iter()
                .filter(|p| !guard.as_ref().is_some_and(|set| set.contains(p)))
                .collect()
        };
        if adopted.is_empty() {
            break;
        }
        for &pid in &adopted {
            found.insert(pid);
            tree::kill_tree_now(pid);
        }
        let mut reaped = 0;
        for &pid in &adopted {
            if let Ok(status) = nix::sys::wait::waitpid(
                Pid::from_raw(pid as i32),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            ) {
                if status != nix::sys::wait::WaitStatus::StillAlive {
                    reaped += 1;
                }
            }
        }
        if Instant::now() >= until {
            tracing::warn!(
                left = adopted.len() - reaped,
                "adopted processes still alive after {} ms of killing",
                deadline.as_millis()
            );
            break;
        }
        if reaped == 0 {
            // Killed but not dead yet (the signal is delivered on the way
            // back from the kernel): give them a moment.
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    found.len()
}

/// Processes this process has spawned through this module (the benchmark
/// reports it: most orchestration cost is process creation).
pub fn spawned_count() -> u64 {
    SPAWNED.load(Ordering::Relaxed)
}

/// The allow-listed variables of this process's environment.
pub fn allowed_env() -> Vec<(OsString, OsString)> {
    ENV_ALLOW_LIST
        .iter()
        .filter_map(|k| std::env::var_os(k).map(|v| (OsString::from(k), v)))
        .collect()
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl From<ExitStatus> for Exit {
    fn from(s: ExitStatus) -> Self {
        Exit {
            code: s.code(),
            signal: s.signal(),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => match Signal::try_from(s) {
                Ok(sig) => write!(f, "killed by signal {s} ({})", sig.as_str()),
                Err(_) => write!(f, "killed by signal {s}"),
            },
            (None, None) => write!(f, "unknown exit status"),
        }
    }
}

fn base_command(program: &OsStr, cwd: Option<&Path>, env: &[(OsString, OsString)]) -> Command {
    command_with_env(program, cwd, &allowed_env(), env)
}

/// A command with exactly `base` plus `env` as its environment.
fn command_with_env(
    program: &OsStr,
    cwd: Option<&Path>,
    base: &[(OsString, OsString)],
    env: &[(OsString, OsString)],
) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .envs(base.iter().map(|(k, v)| (k, v)))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .process_group(0);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd
}

/// Options of [`run`].
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub cwd: Option<PathBuf>,
    /// Added to the allow-listed environment.
    pub env: Vec<(OsString, OsString)>,
    /// Written to the child's stdin, which is closed otherwise.
    pub stdin: Option<Vec<u8>>,
    pub timeout: Option<Duration>,
    /// The program runs in this Landlock domain (no `posix_spawn` then).
    pub jail: Option<Arc<sandbox::Jail>>,
}

/// What [`run`] captured.
#[derive(Debug, Clone)]
pub struct Captured {
    pub exit: Exit,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs a helper program to completion and captures its output.
pub fn run(
    program: impl AsRef<OsStr>,
    args: &[impl AsRef<OsStr>],
    opts: &RunOptions,
) -> Result<Captured> {
    let program = program.as_ref();
    let name = program.to_string_lossy().into_owned();
    let mut cmd = base_command(program, opts.cwd.as_deref(), &opts.env);
    cmd.args(args)
        .stdin(if opts.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(jail) = &opts.jail {
        jail.install(&mut cmd);
    }
    let child = spawn_registered(|| cmd.spawn(), std::process::Child::id).map_err(|source| {
        Error::Spawn {
            program: name.clone(),
            source,
        }
    })?;
    SPAWNED.fetch_add(1, Ordering::Relaxed);
    let pid = child.id();
    let result = wait_captured(child, &name, opts);
    unregister(pid);
    result
}

fn wait_captured(
    mut child: std::process::Child,
    name: &str,
    opts: &RunOptions,
) -> Result<Captured> {
    let name = name.to_owned();
    if let (Some(input), Some(mut stdin)) = (opts.stdin.clone(), child.stdin.take()) {
        // A separate thread: a large input must not deadlock against a full stdout pipe.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let Some(timeout) = opts.timeout else {
        let out = child.wait_with_output().map_err(|source| Error::Io {
            program: name,
            source,
        })?;
        return Ok(Captured {
            exit: out.status.into(),
            stdout: out.stdout,
            stderr: out.stderr,
        });
    };
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => {
            let out = out.map_err(|source| Error::Io {
                program: name,
                source,
            })?;
            Ok(Captured {
                exit: out.status.into(),
                stdout: out.stdout,
                stderr: out.stderr,
            })
        }
        Err(_) => {
            let _ = signal_group(pid, Signal::SIGKILL);
            let _ = rx.recv();
            Err(Error::Timeout {
                program: name,
                secs: timeout.as_secs(),
            })
        }
    }
}

/// Options of [`run_shell`].
#[derive(Debug, Clone)]
pub struct ShellOptions {
    pub cwd: PathBuf,
    /// Added to the allow-listed environment.
    pub env: Vec<(OsString, OsString)>,
    pub timeout: Duration,
    /// Bytes of output kept: the head and the tail, with a marker between.
    pub output_cap: usize,
    /// The command joins this cgroup (or becomes the watchdog's root).
    pub enclosure: Option<Arc<Enclosure>>,
    /// The confinement of the command (see [`sandbox`]); `None`: only the
    /// environment allow-list.
    pub sandbox: Option<Arc<Sandbox>>,
}

/// What [`run_shell`] saw.
#[derive(Debug, Clone)]
pub struct ShellOutput {
    pub exit: Exit,
    /// stdout and stderr interleaved as written, lossily decoded, capped.
    pub output: String,
    pub truncated: bool,
    pub timed_out: bool,
    pub duration: Duration,
}

/// Runs `sh -c command` in its own process group with a timeout and capped,
/// merged output, confined by `opts.sandbox`. On timeout the group gets
/// SIGTERM, then SIGKILL after one second; after the shell exits, whatever
/// it left running in its group is killed.
pub fn run_shell(command: &str, opts: &ShellOptions) -> Result<ShellOutput> {
    let started = Instant::now();
    let (reader, writer) = std::io::pipe().map_err(|source| Error::Spawn {
        program: "sh".into(),
        source,
    })?;
    let writer2 = writer.try_clone().map_err(|source| Error::Spawn {
        program: "sh".into(),
        source,
    })?;
    let sandbox = opts.sandbox.as_deref().filter(|s| !s.is_off());
    let (program, mut args) = match sandbox {
        Some(s) => s.shell(),
        None => (PathBuf::from("/bin/sh"), Vec::new()),
    };
    args.push("-c".into());
    args.push(command.into());
    let mut cmd = match sandbox.and_then(Sandbox::env) {
        Some(base) => command_with_env(program.as_os_str(), Some(&opts.cwd), base, &opts.env),
        None => base_command(program.as_os_str(), Some(&opts.cwd), &opts.env),
    };
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2);
    set_parent_death_signal(&mut cmd);
    join_enclosure(&mut cmd, opts.enclosure.as_ref());
    if let Some(s) = sandbox {
        s.install(&mut cmd);
    }
    let mut child =
        spawn_registered(|| cmd.spawn(), std::process::Child::id).map_err(|source| {
            Error::Spawn {
                program: "sh".into(),
                source,
            }
        })?;
    if let Some(e) = &opts.enclosure {
        e.set_root(child.id());
    }
    SPAWNED.fetch_add(1, Ordering::Relaxed);
    // The parent's copies of the write end must go, or the reader never sees EOF.
    drop(cmd);
    let pid = child.id();

    let cap = opts.output_cap;
    let (out_tx, out_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = out_tx.send(read_capped(reader, cap));
    });
    let (wait_tx, wait_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = wait_tx.send(child.wait());
    });

    let mut timed_out = false;
    let status = match wait_rx.recv_timeout(opts.timeout) {
        Ok(s) => s,
        Err(_) => {
            timed_out = true;
            let _ = signal_group(pid, Signal::SIGTERM);
            match wait_rx.recv_timeout(Duration::from_secs(1)) {
                Ok(s) => s,
                Err(_) => {
                    let _ = signal_group(pid, Signal::SIGKILL);
                    wait_rx
                        .recv()
                        .unwrap_or_else(|_| Err(std::io::Error::other("waiter thread lost")))
                }
            }
        }
    };
    unregister(pid);
    let status = status.map_err(|source| Error::Io {
        program: "sh".into(),
        source,
    })?;
    // Background jobs the command left behind share its group: end them so the
    // pipe closes and nothing outlives the command.
    let _ = signal_group(pid, Signal::SIGKILL);
    let (output, truncated) = out_rx
        .recv_timeout(Duration::from_millis(500))
        .unwrap_or_else(|_| {
            (
                "[output unavailable: a process kept the pipe open]".into(),
                false,
            )
        });
    Ok(ShellOutput {
        exit: status.into(),
        output,
        truncated,
        timed_out,
        duration: started.elapsed(),
    })
}

/// Keeps the first and last `cap / 2` bytes; returns the text and whether
/// anything was cut.
fn read_capped(mut r: impl Read, cap: usize) -> (String, bool) {
    let half = cap / 2;
    let mut head: Vec<u8> = Vec::new();
    let mut tail: std::collections::VecDeque<u8> = std::collections::VecDeque::new();
    let mut omitted: u64 = 0;
    let mut buf = [0u8; 8192];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = &buf[..n];
        if head.len() < half {
            let take = (half - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
        }
        tail.extend(chunk);
        while tail.len() > cap - half {
            tail.pop_front();
            omitted += 1;
        }
    }
    let mut out = String::from_utf8_lossy(&head).into_owned();
    if omitted > 0 {
        out.push_str(&format!("\n[… {omitted} bytes omitted …]\n"));
    }
    out.push_str(&String::from_utf8_lossy(tail.make_contiguous()));
    (out, omitted > 0)
}

/// `PR_SET_PDEATHSIG(SIGKILL)` in the child, then a `getppid()` re-check in
/// case the parent died before the call.
fn set_parent_death_signal(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the hook only calls `arm_parent_death_signal`, which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(move || arm_parent_death_signal(parent));
    }
}

/// Between fork and exec: `PR_SET_PDEATHSIG(SIGKILL)`, then fails with
/// `ESRCH` if `parent` is no longer the parent (it died before the call).
/// System calls only; nothing is allocated, errors included.
pub(crate) fn arm_parent_death_signal(parent: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: prctl and getppid are async-signal-safe system calls.
    unsafe {
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// Where a spawned child's stderr goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ChildStderr {
    /// Into this process's stderr.
    #[default]
    Inherit,
    Piped,
    Null,
}

/// Options of [`spawn_child`].
#[derive(Debug, Clone, Default)]
pub struct SpawnOptions {
    pub cwd: Option<PathBuf>,
    /// Added to the allow-listed environment.
    pub env: Vec<(OsString, OsString)>,
    pub stderr: ChildStderr,
    /// The child joins this cgroup before it executes (see [`limit`]).
    pub enclosure: Option<Arc<Enclosure>>,
}

/// A long-lived child from [`spawn_child`]. Dereferences to the tokio child;
/// dropping it kills the child if it still runs.
#[derive(Debug)]
pub struct ChildProcess {
    child: tokio::process::Child,
    pid: u32,
}

impl ChildProcess {
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl std::ops::Deref for ChildProcess {
    type Target = tokio::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.child
    }
}

impl std::ops::DerefMut for ChildProcess {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.child
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        unregister(self.pid);
    }
}

type SpawnJob = Box<dyn FnOnce() + Send>;

/// The thread every long-lived child is forked from: the parent-death signal
/// follows the forking thread, so that thread must live as long as the process.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        let spawned = std::thread::Builder::new()
            .name("agentswarm-spawner".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the spawner thread");
        }
        Mutex::new(tx)
    })
}

/// Starts `std_cmd` with stdin and stdout piped and stderr as `stderr` says,
/// killed when dropped, forked from the spawner thread (see [`spawner`]).
fn spawn_piped(
    std_cmd: Command,
    handle: tokio::runtime::Handle,
    stderr: ChildStderr,
) -> std::io::Result<ChildProcess> {
    let mut cmd = tokio::process::Command::from(std_cmd);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    cmd.stderr(match stderr {
        ChildStderr::Inherit => Stdio::inherit(),
        ChildStderr::Piped => Stdio::piped(),
        ChildStderr::Null => Stdio::null(),
    });
    let (tx, rx) = mpsc::channel();
    let job: SpawnJob = Box::new(move || {
        let _entered = handle.enter();
        let result = spawn_registered(
            || {
                cmd.spawn().map(|child| ChildProcess {
                    pid: child.id().unwrap_or(0),
                    child,
                })
            },
            ChildProcess::pid,
        );
        let _ = tx.send(result);
    });
    let gone = || std::io::Error::other("the spawner thread is gone");
    spawner()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|_| gone())?;
    let child = rx.recv().map_err(|_| gone())??;
    SPAWNED.fetch_add(1, Ordering::Relaxed);
    Ok(child)
}

/// Spawns a long-lived child with piped stdin and stdout (the IPC channel),
/// in its own process group, with the parent-death signal, forked from the
/// spawner thread. Must be called inside a tokio runtime.
pub fn spawn_child(program: &Path, args: &[OsString], opts: &SpawnOptions) -> Result<ChildProcess> {
    let spawn_err = |source: std::io::Error| Error::Spawn {
        program: program.display().to_string(),
        source,
    };
    let handle =
        tokio::runtime::Handle::try_current().map_err(|e| spawn_err(std::io::Error::other(e)))?;
    let mut std_cmd = base_command(program.as_os_str(), opts.cwd.as_deref(), &opts.env);
    std_cmd.args(args);
    set_parent_death_signal(&mut std_cmd);
    join_enclosure(&mut std_cmd, opts.enclosure.as_ref());
    let child = spawn_piped(std_cmd, handle, opts.stderr).map_err(spawn_err)?;
    if let Some(e) = &opts.enclosure {
        e.set_root(child.pid);
    }
    Ok(child)
}

/// Spawns a long-lived child confined by `sandbox` (an outside agent, or
/// the relay in front of it): `program args` in `cwd` with the sandbox's
/// environment plus `env`, stdin and stdout piped, stderr as `stderr` says,
/// its own process group and the parent-death signal, forked from the
/// spawner thread. Under bubblewrap, `program` runs inside `bwrap`. Must be
/// called inside a tokio runtime.
pub fn spawn_confined(
    program: &Path,
    args: &[OsString],
    cwd: &Path,
    env: &[(OsString, OsString)],
    stderr: ChildStderr,
    sandbox: &Sandbox,
) -> Result<ChildProcess> {
    let spawn_err = |source: std::io::Error| Error::Spawn {
        program: program.display().to_string(),
        source,
    };
    let handle =
        tokio::runtime::Handle::try_current().map_err(|e| spawn_err(std::io::Error::other(e)))?;
    let (exe, mut all_args) = match sandbox.wrapper() {
        Some((bwrap, mut a)) => {
            a.push(program.as_os_str().to_owned());
            (bwrap, a)
        }
        None => (program.to_owned(), Vec::new()),
    };
    all_args.extend(args.iter().cloned());
    let mut std_cmd = match sandbox.env() {
        Some(base) => command_with_env(exe.as_os_str(), Some(cwd), base, env),
        None => base_command(exe.as_os_str(), Some(cwd), env),
    };
    std_cmd.args(&all_args);
    set_parent_death_signal(&mut std_cmd);
    sandbox.install(&mut std_cmd);
    let child = spawn_piped(std_cmd, handle, stderr).map_err(spawn_err)?;
    Ok(child)
}

/// Sends `signal` to the process group led by `pid`. `Ok(false)` when there
/// is no such group (already gone) or `pid` is 0.
pub fn signal_group(pid: u32, signal: Signal) -> std::io::Result<bool> {
    if pid == 0 || pid > i32::MAX as u32 {
        return Ok(false);
    }
    match killpg(Pid::from_raw(pid as i32), signal) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::ESRCH) => Ok(false),
        Err(e) => Err(std::io::Error::from(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(cmd: &str, timeout: Duration, cap: usize) -> ShellOutput {
        let dir = tempfile::tempdir().unwrap();
        run_shell(
            cmd,
            &ShellOptions {
                cwd: dir.path().to_owned(),
                env: vec![],
                timeout,
                output_cap: cap,
                enclosure: None,
                sandbox: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn shell_reports_exit_code_and_merged_output() {
        let out = shell(
            "echo out; echo err >&2; exit 3",
            Duration::from_secs(10),
            4096,
        );
        assert_eq!(out.exit.code, Some(3));
        assert_eq!(out.exit.to_string(), "exit code 3");
        assert!(
            out.output.contains("out") && out.output.contains("err"),
            "{}",
            out.output
        );
        assert!(!out.timed_out && !out.truncated);
    }

    #[test]
    fn shell_timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let cmd = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let out = run_shell(
            &cmd,
            &ShellOptions {
                cwd: dir.path().to_owned(),
                env: vec![],
                timeout: Duration::from_millis(300),
                output_cap: 1024,
                enclosure: None,
                sandbox: None,
            },
        )
        .unwrap();
        assert!(out.timed_out);
        assert!(!out.exit.success());
        assert!(out.duration < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(2500));
        assert!(
            !marker.exists(),
            "a background job of the timed-out command survived"
        );
    }

    #[test]
    fn background_jobs_do_not_outlive_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("late");
        let cmd = format!("(sleep 1; touch {}) & echo started", marker.display());
        let out = run_shell(
            &cmd,
            &ShellOptions {
                cwd: dir.path().to_owned(),
                env: vec![],
                timeout: Duration::from_secs(10),
                output_cap: 1024,
                enclosure: None,
                sandbox: None,
            },
        )
        .unwrap();
        assert!(out.exit.success());
        std::thread::sleep(Duration::from_millis(1500));
        assert!(!marker.exists());
    }

    #[test]
    fn output_is_capped_head_and_tail() {
        let out = shell("seq 1 100000", Duration::from_secs(10), 1000);
        assert!(out.truncated);
        assert!(out.output.starts_with("1\n2\n"), "{}", &out.output[..20]);
        assert!(out.output.trim_end().ends_with("100000"));
        assert!(out.output.contains("bytes omitted"));
        assert!(out.output.len() < 1200);
    }

    #[test]
    fn secrets_are_not_inherited() {
        // The test process may have any environment; the child only sees the allow-list.
        let out = shell("env", Duration::from_secs(10), 1 << 16);
        for line in out.output.lines() {
            let key = line.split('=').next().unwrap_or("");
            assert!(
                ENV_ALLOW_LIST.contains(&key)
                    || key == "PWD"
                    || key == "SHLVL"
                    || key == "_"
                    || key.is_empty(),
                "leaked variable {key}"
            );
        }
    }

    #[test]
    fn run_captures_and_times_out() {
        let out = run(
            "sh",
            &["-c", "cat; echo done >&2"],
            &RunOptions {
                stdin: Some(b"hello".to_vec()),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(out.exit.success());
        assert_eq!(out.stdout, b"hello");
        assert_eq!(out.stderr, b"done\n");
        let err = run(
            "sleep",
            &["10"],
            &RunOptions {
                timeout: Some(Duration::from_millis(100)),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
    }

    #[test]
    fn signal_group_of_nothing_is_false() {
        assert!(!signal_group(0, Signal::SIGTERM).unwrap());
    }
}

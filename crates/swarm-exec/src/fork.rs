//! A helper process forked without `exec`, in a Landlock domain, that serves
//! requests over a socket: the worker's git on its worktree runs in one
//! (libgit2 in the child, `swarm-git`'s `jailed` module), so that what parses
//! the worktree's contents is confined as a `git` process under the same
//! domain was, without starting a program for every step.
//!
//! Forking without `exec` is only sound in a process with one thread: a
//! child forked from several threads inherits the locks the others held
//! (the allocator's, stdio's) and could wait on them forever.
//! [`fork_confined`] therefore refuses when the caller has more than one
//! thread; the worker calls it before it starts any.
//!
//! The child:
//! - dies with its parent (`PR_SET_PDEATHSIG(SIGKILL)` and a `getppid()`
//!   re-check; the parent's main thread forks it and lives as long as the
//!   parent), and stays in its process group and cgroup, so whatever ends
//!   the parent's tree ends it too;
//! - has stdin and stdout on `/dev/null` (the parent's may be its IPC pipes)
//!   and no other descriptor but stderr and its end of the socket;
//! - enters the [`Jail`] before it reads a request, and exits if it cannot.
//!
//! It is registered as the parent's child like every spawned process, so the
//! parent's orphan reaper ([`crate::reap_orphans`]) leaves it alone.

use crate::sandbox::Jail;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;

/// A helper forked by [`fork_confined`]. Dropping it shuts the socket down
/// (the helper's loop ends on end of file) and reaps the helper.
#[derive(Debug)]
pub struct Forked {
    pid: u32,
    sock: UnixStream,
    reaped: bool,
}

impl Forked {
    /// The parent's end of the socket.
    pub fn socket(&mut self) -> &mut UnixStream {
        &mut self.sock
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Ends the helper (its socket shut down) and says how it ended, for an
    /// error message.
    pub fn finish(&mut self) -> String {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if self.reaped {
            return "already ended".into();
        }
        self.reaped = true;
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let status = match nix::sys::wait::waitpid(pid, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, CANNOT_CONFINE)) => {
                "it could not enter its Landlock domain".to_owned()
            }
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => format!("exit status {code}"),
            Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => format!("killed by {sig}"),
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("not found ({e})"),
        };
        crate::unregister(self.pid);
        status
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Exit status of a helper that could not enter its domain.
pub const CANNOT_CONFINE: i32 = 125;

/// Forks a helper that enters `jail` (when given) and then runs `serve` on
/// its end of a socket; `serve`'s return value is its exit status. The
/// caller must have exactly one thread.
pub fn fork_confined(
    jail: Option<&Jail>,
    serve: impl FnOnce(UnixStream) -> i32,
) -> std::io::Result<Forked> {
    // A thread that is ending (one that waited for a `git` process and has
    // just handed over its output) is waited for, briefly.
    let mut threads = thread_count()?;
    for _ in 0..100 {
        if threads == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        threads = thread_count()?;
    }
    if threads != 1 {
        return Err(std::io::Error::other(format!(
            "a helper is forked only from a single-threaded process (this one has {threads} threads)"
        )));
    }
    let (ours, theirs) = UnixStream::pair()?;
    let parent = std::process::id() as libc::pid_t;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let mut guard = crate::children();
    // SAFETY: the process has one thread (checked above; nothing here starts
    // one in between), so the child inherits no lock another thread held.
    match unsafe { nix::unistd::fork() }.map_err(std::io::Error::from)? {
        nix::unistd::ForkResult::Parent { child } => {
            drop(theirs);
            drop(null);
            let pid = child.as_raw() as u32;
            guard.get_or_insert_with(Default::default).insert(pid);
            Ok(Forked {
                pid,
                sock: ours,
                reaped: false,
            })
        }
        nix::unistd::ForkResult::Child => {
            drop(guard);
            drop(ours);
            let code = child_main(parent, jail, null, theirs, serve);
            // SAFETY: ends the child without running the parent's atexit
            // handlers or flushing its buffers a second time.
            unsafe { libc::_exit(code) }
        }
    }
}

/// The child's side of [`fork_confined`].
fn child_main(
    parent: libc::pid_t,
    jail: Option<&Jail>,
    null: std::fs::File,
    sock: UnixStream,
    serve: impl FnOnce(UnixStream) -> i32,
) -> i32 {
    if crate::arm_parent_death_signal(parent).is_err() {
        return 1;
    }
    // The domain first: its ruleset is one of the descriptors closed below.
    if let Some(jail) = jail {
        if let Err(e) = jail.enter() {
            eprintln!("agentswarm: a confined helper cannot enter its Landlock domain: {e}");
            return CANNOT_CONFINE;
        }
    }
    // SAFETY: dup2 and close_range on descriptors this process owns; the
    // socket is moved to fd 3 first, so closing everything above it leaves
    // stdin/stdout (now /dev/null), stderr and the socket.
    let sock = unsafe {
        if libc::dup2(null.as_raw_fd(), 0) < 0 || libc::dup2(null.as_raw_fd(), 1) < 0 {
            return 1;
        }
        drop(null);
        let fd = sock.as_raw_fd();
        if fd != 3 {
            if libc::dup2(fd, 3) < 0 {
                return 1;
            }
            drop(sock);
        } else {
            std::mem::forget(sock);
        }
        if libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) != 0 {
            return 1;
        }
        UnixStream::from_raw_fd(3)
    };
    // A panic ends the helper with 101, as it would end a program.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(sock))).unwrap_or(101)
}

/// Threads of this process, from `/proc/self/status`.
fn thread_count() -> std::io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("/proc/self/status has no Threads line"))
}

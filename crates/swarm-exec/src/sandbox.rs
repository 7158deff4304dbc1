//! Confinement of model-run and verify commands (docs/security.md).
//!
//! A [`Sandbox`] is prepared once for a directory (a task's worktree or the
//! verify checkout) from a [`SandboxPolicy`]; [`crate::run_shell`] applies it
//! to every command it starts there. A confined command:
//!
//! - writes only inside that directory, which holds its private `HOME` and
//!   `TMPDIR` (`.agentswarm/`, excluded from git);
//! - reads and executes the policy's read-only trees (the system), minus its
//!   hidden paths (data directory, secrets, config, the service's home);
//! - has no network unless the project allows it: an empty network namespace,
//!   or where none can be made, Landlock's TCP rules;
//! - runs with rlimits (open files, processes, file size, no core dumps) and
//!   an environment built from an allow-list.
//!
//! Two mechanisms; `auto` takes bubblewrap when it is installed (its mount
//! and PID namespaces also stop chmod/chown and end every process with the
//! command), else Landlock:
//!
//! - **Landlock** (Linux 5.13+), through the `landlock` crate, which handles
//!   the ABI versions. The ruleset is built once per sandbox; each command's
//!   child applies it between fork and exec with two raw system calls
//!   (`prctl(PR_SET_NO_NEW_PRIVS)`, `landlock_restrict_self`), the only kind
//!   of code allowed there. Where permitted, the child first enters new user,
//!   network, IPC and UTS namespaces (`unshare(2)` and its uid/gid maps,
//!   written by hand: no crate does this between fork and exec) and brings up
//!   the namespace's own loopback, so that a project's tests can still use
//!   `127.0.0.1` among themselves.
//! - **bubblewrap** (`bwrap`): the same trees are bind-mounted read-only into
//!   an empty, read-only root, with the directory read-write, no capabilities.
//!
//! What this machine offers is probed once, by the supervisor
//! ([`facilities`], [`assess`]); the mechanism it decides travels in the
//! policy (`resolved`), so workers do not probe again.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, BitFlags, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope, ABI,
};
pub use swarm_protocol::sandbox::{
    CommandLimits, Mechanism, SandboxMechanism, SandboxMode, SandboxPolicy, DEFAULT_READ_ONLY,
    DEFAULT_SANDBOX_UID,
};

/// The directory, inside the confined directory, that holds the command's
/// private `home/` and `tmp/`. Listed in every project's git excludes.
pub const PRIVATE_DIR: &str = ".agentswarm";

/// The Landlock ABI whose rights are requested; older kernels get the subset
/// they know (the crate's best-effort mode), newer ones nothing more.
const REQUESTED_ABI: ABI = ABI::V6;

/// What this machine offers for confinement, probed once.
#[derive(Debug, Clone)]
pub struct Facilities {
    /// The kernel's Landlock ABI version, or why there is none.
    pub landlock: Result<i32, String>,
    /// Whether a child can enter new network namespaces (and, for a service
    /// that is not root, the user namespace that needs).
    pub namespaces: Result<(), String>,
    /// For a root service: whether a child can drop to an unprivileged uid
    /// (see [`SandboxPolicy::uid`]). `Err` for any other service.
    pub uid_drop: Result<(), String>,
    /// The `bwrap` binary, when installed and able to run here.
    pub bubblewrap: Result<PathBuf, String>,
}

/// Probes the machine once per process.
pub fn facilities() -> &'static Facilities {
    static FACILITIES: OnceLock<Facilities> = OnceLock::new();
    FACILITIES.get_or_init(|| Facilities {
        landlock: landlock_abi(),
        namespaces: probe_namespaces(),
        uid_drop: probe_uid_drop(),
        bubblewrap: probe_bubblewrap(),
    })
}

fn landlock_abi() -> Result<i32, String> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute, size 0 and the VERSION flag the call only
    // returns the ABI version.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v > 0 {
        return Ok(v as i32);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EOPNOTSUPP) => Err(
            "Landlock is built into this kernel but not enabled: add `landlock` to the `lsm=` kernel boot parameter"
                .into(),
        ),
        _ => Err("this kernel has no Landlock (it needs Linux 5.13 or later with CONFIG_SECURITY_LANDLOCK)".into()),
    }
}

/// Whether this process runs as root (then commands drop to an unprivileged
/// uid under Landlock, and need no user namespace for their network one).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn probe_uid_drop() -> Result<(), String> {
    if !running_as_root() {
        return Err("AgentSwarm does not run as root".into());
    }
    let drop = UidDrop::new(swarm_protocol::sandbox::DEFAULT_SANDBOX_UID);
    let mut cmd = Command::new("/bin/true");
    cmd.env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the hook only makes system calls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || drop.apply());
    }
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!(
            "a test process that dropped to an unprivileged uid ended with {s}"
        )),
        Err(e) => Err(format!("cannot drop a command to an unprivileged uid: {e}")),
    }
}

fn probe_namespaces() -> Result<(), String> {
    let ns = Namespaces::new(true, !running_as_root());
    let mut cmd = Command::new("/bin/true");
    cmd.env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the hook only makes system calls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || ns.enter());
    }
    let why = |e: String| {
        format!(
            "cannot create user and network namespaces ({e}); check `sysctl user.max_user_namespaces` \
             (and kernel.unprivileged_userns_clone or kernel.apparmor_restrict_unprivileged_userns \
             where they exist) and that the service unit allows them (RestrictNamespaces=)"
        )
    };
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(why(format!("a test process ended with {s}"))),
        Err(e) => Err(why(e.to_string())),
    }
}

fn probe_bubblewrap() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let Some(bwrap) = std::env::split_paths(&path)
        .map(|d| d.join("bwrap"))
        .find(|p| p.is_file())
    else {
        return Err("bubblewrap is not installed (Debian: apt install bubblewrap)".into());
    };
    let out = Command::new(&bwrap)
        .args([
            "--unshare-all",
            "--die-with-parent",
            "--ro-bind",
            "/",
            "/",
            "/bin/true",
        ])
        .env_clear()
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(bwrap),
        Ok(o) => Err(format!(
            "{} cannot create its namespaces here: {}",
            bwrap.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run {}: {e}", bwrap.display())),
    }
}

/// What a policy amounts to on this machine: the mechanism, what it leaves
/// unconfined, and whether `sandbox = required` must refuse.
#[derive(Debug, Clone)]
pub struct Assessment {
    pub mode: SandboxMode,
    pub mechanism: Mechanism,
    /// Protections the policy asks for that this machine cannot give.
    pub gaps: Vec<String>,
    /// Why a required sandbox cannot run commands here.
    pub refusal: Option<String>,
}

impl Assessment {
    /// `mechanism`, decided elsewhere (or nothing, for `sandbox = off`).
    fn decided(mode: SandboxMode, mechanism: Mechanism) -> Self {
        Assessment {
            mode,
            mechanism,
            gaps: Vec::new(),
            refusal: None,
        }
    }

    /// One line for the operator: the mechanism and the network.
    pub fn summary(&self, allow_network: bool) -> String {
        let net = if allow_network {
            "network allowed"
        } else {
            "no network"
        };
        match (&self.mode, &self.mechanism) {
            (SandboxMode::Off, _) => "off (commands are not confined)".into(),
            (
                _,
                Mechanism::Landlock {
                    abi,
                    namespaces,
                    uid,
                },
            ) => format!(
                "landlock (ABI {abi}){}{}, {net}",
                match (*namespaces, uid.is_some()) {
                    (true, false) => " with user and network namespaces",
                    (true, true) => " with a network namespace",
                    (false, _) => ", no namespaces",
                },
                match uid {
                    Some(uid) => format!(", as uid {uid}"),
                    None => String::new(),
                }
            ),
            (_, Mechanism::Bubblewrap { path }) => {
                format!("bubblewrap ({}), {net}", path.display())
            }
            (_, Mechanism::None) => "none: commands run unconfined".into(),
        }
    }

    /// The mechanism's short name, as recorded in manifests.
    pub fn mechanism_name(&self) -> &'static str {
        match (&self.mode, &self.mechanism) {
            (SandboxMode::Off, _) | (_, Mechanism::None) => "none",
            (_, Mechanism::Landlock { .. }) => "landlock",
            (_, Mechanism::Bubblewrap { .. }) => "bubblewrap",
        }
    }
}

/// What Landlock leaves open on this machine, and whether what it gives is
/// enough for `sandbox = required`.
fn landlock_gaps(abi: i32, f: &Facilities, allow_network: bool) -> (bool, Vec<String>) {
    let mut gaps = Vec::new();
    let mut essential = true;
    if abi < 3 {
        essential = false;
        gaps.push(format!(
            "Landlock ABI {abi} does not control truncating files outside the worktree (ABI 3, Linux 6.2)"
        ));
    }
    if let Err(why) = &f.namespaces {
        if !allow_network {
            essential = false;
            gaps.push(if abi < 4 {
                format!("the network is open: {why}, and Landlock ABI {abi} has no TCP rules (ABI 4, Linux 6.7)")
            } else {
                format!("only TCP is closed: {why}, and Landlock has no rules for UDP or other protocols")
            });
        } else {
            gaps.push(why.clone());
        }
    }
    if abi < 5 {
        gaps.push(format!(
            "Landlock ABI {abi} does not control ioctl on devices (ABI 5, Linux 6.10)"
        ));
    }
    if abi < 6 {
        essential = false;
        gaps.push(format!(
            "Landlock ABI {abi} does not stop signals to processes outside the sandbox (ABI 6, Linux 6.12)"
        ));
    }
    // Landlock has no rules for chmod, chown or utime: a command can change
    // the metadata of any file its uid owns. A root service's commands run
    // as an unprivileged uid, which owns nothing outside the worktree.
    if running_as_root() {
        if let Err(why) = &f.uid_drop {
            essential = false;
            gaps.push(format!(
                "AgentSwarm runs as root and its commands cannot drop to an unprivileged uid ({why}): \
                 Landlock does not stop chmod, chown or utime, and the process limit does not bind root"
            ));
        }
    } else {
        gaps.push(
            "Landlock does not stop chmod, chown or utime of files AgentSwarm's user owns (bubblewrap does)"
                .into(),
        );
    }
    (essential, gaps)
}

/// Decides what `policy` gets here; the facilities are passed in. `auto`
/// takes bubblewrap when it is installed: its mount and PID namespaces also
/// stop chmod/chown outside the worktree and end every process with the
/// command, which Landlock alone does not. Landlock with namespaces is next.
pub fn assess(policy: &SandboxPolicy, f: &Facilities) -> Assessment {
    if policy.mode == SandboxMode::Off {
        return Assessment::decided(policy.mode, Mechanism::None);
    }
    let landlock = f.landlock.as_ref().map(|abi| {
        let (essential, gaps) = landlock_gaps(*abi, f, policy.allow_network);
        (
            Mechanism::Landlock {
                abi: *abi,
                namespaces: f.namespaces.is_ok(),
                uid: (running_as_root() && f.uid_drop.is_ok()).then_some(policy.uid),
            },
            essential,
            gaps,
        )
    });
    let bwrap = f
        .bubblewrap
        .as_ref()
        .map(|p| (Mechanism::Bubblewrap { path: p.clone() }, true, Vec::new()));
    let (mechanism, essential, gaps) = match (policy.mechanism, landlock, bwrap) {
        (SandboxMechanism::Landlock, Ok(l), _) => l,
        (SandboxMechanism::Bubblewrap, _, Ok(b)) => b,
        (SandboxMechanism::Auto, Ok(l), Err(_)) => l,
        (SandboxMechanism::Auto, _, Ok(b)) => b,
        (SandboxMechanism::Bubblewrap, Ok(l), Err(no_bwrap)) => {
            let (m, e, mut g) = l;
            g.insert(
                0,
                format!("sandbox_mechanism = bubblewrap, but {no_bwrap}; using Landlock"),
            );
            (m, e, g)
        }
        (SandboxMechanism::Landlock, Err(no_landlock), Ok(b)) => {
            let (m, e, mut g) = b;
            g.insert(
                0,
                format!("sandbox_mechanism = landlock, but {no_landlock}; using bubblewrap"),
            );
            (m, e, g)
        }
        (_, Err(no_landlock), Err(no_bwrap)) => (
            Mechanism::None,
            false,
            vec![format!("{no_landlock}, and {no_bwrap}")],
        ),
    };
    let refusal = (policy.mode == SandboxMode::Required && !essential).then(|| {
        format!(
            "sandbox = required, but this machine cannot confine commands: {}. Install bubblewrap, \
             or set sandbox = \"best-effort\" to run with what is available",
            gaps.join("; ")
        )
    });
    Assessment {
        mode: policy.mode,
        mechanism,
        gaps,
        refusal,
    }
}

/// [`assess`] for commands that will run below `dir` (the project's
/// directory): a root service's commands drop to an unprivileged uid, which
/// must be able to reach `dir` — every directory above it searchable by
/// others. Where one is not (`/root`, a `0700` parent), the drop is not made,
/// and the assessment says so: commands would keep root's power over file
/// metadata, which `required` refuses.
pub fn assess_at(policy: &SandboxPolicy, f: &Facilities, dir: &Path) -> Assessment {
    let mut a = assess(policy, f);
    let Mechanism::Landlock { uid: Some(uid), .. } = &a.mechanism else {
        return a;
    };
    let uid = *uid;
    if let Err(blocker) = reachable_by_others(dir) {
        if let Mechanism::Landlock { uid, .. } = &mut a.mechanism {
            *uid = None;
        }
        a.gaps.push(format!(
            "AgentSwarm runs as root and its commands cannot drop to uid {uid}: {blocker} is not \
             searchable by other users, so {} would be out of their reach; make it so (chmod o+x), \
             put the data directory elsewhere, or install bubblewrap. Until then Landlock does not \
             stop chmod, chown or utime, and the process limit does not bind root",
            dir.display(),
            blocker = blocker.display()
        ));
        if policy.mode == SandboxMode::Required && a.refusal.is_none() {
            a.refusal = Some(format!(
                "sandbox = required, but this machine cannot confine commands: {}",
                a.gaps.last().map(String::as_str).unwrap_or_default()
            ));
        }
    }
    a
}

/// The first directory above (or at) `dir` that other users cannot search.
fn reachable_by_others(dir: &Path) -> Result<(), PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let mut p = Some(dir.as_path());
    while let Some(d) = p {
        if let Ok(m) = std::fs::metadata(d) {
            if m.permissions().mode() & 0o001 == 0 {
                return Err(d.to_owned());
            }
        }
        p = d.parent();
    }
    Ok(())
}

/// The refusal of a command under `sandbox = required`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

#[derive(Debug)]
enum Kind {
    Off,
    Landlock {
        /// `None` when the kernel has no Landlock (best effort).
        ruleset: Option<Arc<OwnedFd>>,
        namespaces: Option<Arc<Namespaces>>,
        /// A root service's commands become this unprivileged uid.
        drop: Option<Arc<UidDrop>>,
    },
    Bubblewrap {
        program: PathBuf,
        args: Vec<OsString>,
    },
}

/// A policy prepared for one directory; cheap to share between commands.
#[derive(Debug)]
pub struct Sandbox {
    kind: Kind,
    env: Vec<(OsString, OsString)>,
    limits: CommandLimits,
    assessment: Assessment,
}

impl Sandbox {
    /// No confinement (`sandbox = off`, or tests).
    pub fn off() -> Self {
        Sandbox {
            kind: Kind::Off,
            env: Vec::new(),
            limits: CommandLimits::default(),
            assessment: Assessment::decided(SandboxMode::Off, Mechanism::None),
        }
    }

    /// Prepares `policy` for commands running in `root`. Creates
    /// `root/.agentswarm/{home,tmp}` afresh. Uses the mechanism the policy
    /// says was resolved, else probes this machine ([`facilities`]) and
    /// decides. Fails when a required sandbox cannot be had, or when `root`
    /// cannot be prepared.
    pub fn prepare(policy: &SandboxPolicy, root: &Path) -> Result<Sandbox, Refused> {
        if policy.mode == SandboxMode::Off {
            return Ok(Sandbox::off());
        }
        let assessment = match &policy.resolved {
            Some(m) => Assessment::decided(policy.mode, m.clone()),
            None => assess(policy, facilities()),
        };
        if let Some(why) = &assessment.refusal {
            return Err(Refused(why.clone()));
        }
        let root = std::fs::canonicalize(root)
            .map_err(|e| Refused(format!("cannot prepare {}: {e}", root.display())))?;
        let private = root.join(PRIVATE_DIR);
        let home = private.join("home");
        let tmp = private.join("tmp");
        let _ = std::fs::remove_dir_all(&private);
        for d in [&home, &tmp] {
            std::fs::create_dir_all(d)
                .map_err(|e| Refused(format!("cannot create {}: {e}", d.display())))?;
        }
        let readable = readable_trees(&policy.read_only, &policy.hidden);
        let mut env = confined_env(&readable.trees, &root, &home, &tmp);
        let kind = match &assessment.mechanism {
            Mechanism::Landlock {
                namespaces, uid, ..
            } => {
                let isolate_net = *namespaces && !policy.allow_network;
                let ruleset = landlock_ruleset(
                    &readable.trees,
                    &root,
                    !policy.allow_network && !isolate_net,
                )
                .map_err(Refused)?;
                // Only with Landlock in force: the uid keeps the right to
                // read and search any directory, which Landlock narrows.
                let drop = match (uid, &ruleset) {
                    (Some(uid), Some(_)) => {
                        hand_over(&root, *uid).map_err(|e| {
                            Refused(format!(
                                "cannot give {} to the sandbox uid {uid}: {e}",
                                root.display()
                            ))
                        })?;
                        env.extend(unowned_checkout_env());
                        Some(Arc::new(UidDrop::new(*uid)))
                    }
                    _ => None,
                };
                Kind::Landlock {
                    ruleset,
                    namespaces: namespaces
                        .then(|| Arc::new(Namespaces::new(isolate_net, drop.is_none()))),
                    drop,
                }
            }
            Mechanism::Bubblewrap { path } => Kind::Bubblewrap {
                program: path.clone(),
                args: bubblewrap_args(&readable, &policy.read_only, &root, policy.allow_network),
            },
            Mechanism::None => Kind::Landlock {
                ruleset: None,
                namespaces: None,
                drop: None,
            },
        };
        let rlimits = match &kind {
            // bwrap makes its own user namespace: a process limit set before it
            // would count every process of the service user.
            Kind::Bubblewrap { .. } => CommandLimits {
                processes: 0,
                ..policy.limits
            },
            Kind::Off | Kind::Landlock { .. } => policy.limits,
        };
        Ok(Sandbox {
            kind,
            env,
            limits: rlimits,
            assessment,
        })
    }

    pub fn assessment(&self) -> &Assessment {
        &self.assessment
    }

    /// The unprivileged uid commands run as (a root service under
    /// Landlock): files written in the directory by anyone else must be
    /// given to it ([`hand_over`]) before the next command.
    pub fn uid(&self) -> Option<u32> {
        match &self.kind {
            Kind::Landlock {
                drop: Some(drop), ..
            } => Some(drop.uid),
            Kind::Off | Kind::Landlock { .. } | Kind::Bubblewrap { .. } => None,
        }
    }

    pub fn is_off(&self) -> bool {
        matches!(self.kind, Kind::Off)
    }

    /// `bwrap` and its arguments, before the confined program, under
    /// bubblewrap; `None` for the mechanisms that apply in the child itself.
    pub(crate) fn wrapper(&self) -> Option<(PathBuf, Vec<OsString>)> {
        match &self.kind {
            Kind::Bubblewrap { program, args } => Some((program.clone(), args.clone())),
            Kind::Off | Kind::Landlock { .. } => None,
        }
    }

    /// The program to start for `sh -c`, and the arguments before `-c`.
    pub(crate) fn shell(&self) -> (PathBuf, Vec<OsString>) {
        match &self.kind {
            Kind::Bubblewrap { program, args } => {
                let mut a = args.clone();
                a.push("/bin/sh".into());
                (program.clone(), a)
            }
            Kind::Off | Kind::Landlock { .. } => (PathBuf::from("/bin/sh"), Vec::new()),
        }
    }

    /// The confined environment (replaces the allow-listed one), or `None`
    /// when off.
    pub(crate) fn env(&self) -> Option<&[(OsString, OsString)]> {
        (!self.is_off()).then_some(self.env.as_slice())
    }

    /// Registers the between-fork-and-exec hook: namespaces, rlimits, then
    /// Landlock. Call it after every other `pre_exec` hook.
    pub(crate) fn install(&self, cmd: &mut Command) {
        let limits = self.limits;
        let (landlock, ruleset, namespaces, drop) = match &self.kind {
            Kind::Off => return,
            Kind::Landlock {
                ruleset,
                namespaces,
                drop,
            } => (true, ruleset.clone(), namespaces.clone(), drop.clone()),
            Kind::Bubblewrap { .. } => (false, None, None, None),
        };
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the hook makes system calls only (close_range, unshare,
        // open, write, close, socket, ioctl, setgroups, setresuid, capset,
        // setrlimit, prctl, getppid, landlock_restrict_self) on data
        // prepared before the fork; it allocates nothing, errors included.
        unsafe {
            cmd.pre_exec(move || {
                // Descriptors the parent leaked without CLOEXEC end at exec:
                // Landlock does not restrict what is already open.
                libc::syscall(
                    libc::SYS_close_range,
                    3u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                if let Some(ns) = &namespaces {
                    ns.enter()?;
                }
                // After the namespaces, which need root's capabilities when
                // there is no user namespace.
                if let Some(d) = &drop {
                    d.apply()?;
                }
                // After the user namespace: its process count starts at zero.
                // After the uid drop: root's processes are never counted.
                set_limits(&limits)?;
                if landlock {
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // Entering a user namespace may clear the parent-death signal.
                    crate::arm_parent_death_signal(parent)?;
                }
                if let Some(fd) = &ruleset {
                    if libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0u32) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
}

fn set_limits(l: &CommandLimits) -> std::io::Result<()> {
    let set = |resource, value: u64| -> std::io::Result<()> {
        let lim = libc::rlimit {
            rlim_cur: value as libc::rlim_t,
            rlim_max: value as libc::rlim_t,
        };
        // SAFETY: setrlimit with a valid pointer to a local struct.
        if unsafe { libc::setrlimit(resource, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    set(libc::RLIMIT_CORE, 0)?;
    // A limit above the current hard one cannot be set without privilege:
    // keep the lower of the two.
    let lower = |resource, value: u64| -> std::io::Result<()> {
        if value == 0 {
            return Ok(());
        }
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit into a local struct.
        if unsafe { libc::getrlimit(resource, &mut cur) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        set(resource, value.min(cur.rlim_max))
    };
    lower(libc::RLIMIT_NOFILE, l.open_files)?;
    lower(libc::RLIMIT_NPROC, l.processes)?;
    lower(
        libc::RLIMIT_FSIZE,
        l.file_size_mb.saturating_mul(1024 * 1024),
    )?;
    Ok(())
}

/// New user, network, IPC and UTS namespaces for a child, entered between
/// fork and exec. Everything the child writes is formatted beforehand.
#[derive(Debug)]
pub(crate) struct Namespaces {
    net: bool,
    /// A new user namespace first (what an unprivileged service needs for
    /// the others); root makes them directly.
    user: bool,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    setgroups_path: CString,
    uid_map_path: CString,
    gid_map_path: CString,
}

impl Namespaces {
    fn new(net: bool, user: bool) -> Self {
        // SAFETY: getuid and getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let c = |s: &str| CString::new(s).unwrap_or_default();
        Namespaces {
            net,
            user,
            uid_map: format!("{uid} {uid} 1\n").into_bytes(),
            gid_map: format!("{gid} {gid} 1\n").into_bytes(),
            setgroups_path: c("/proc/self/setgroups"),
            uid_map_path: c("/proc/self/uid_map"),
            gid_map_path: c("/proc/self/gid_map"),
        }
    }

    /// Runs in the child between fork and exec: system calls only.
    fn enter(&self) -> std::io::Result<()> {
        let mut flags = libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
        if self.user {
            flags |= libc::CLONE_NEWUSER;
        }
        if self.net {
            flags |= libc::CLONE_NEWNET;
        }
        // SAFETY: unshare and the writes below act on this (single-threaded) child only.
        unsafe {
            if libc::unshare(flags) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if self.user {
                write_proc(&self.setgroups_path, b"deny")?;
                write_proc(&self.uid_map_path, &self.uid_map)?;
                write_proc(&self.gid_map_path, &self.gid_map)?;
            }
            if self.net {
                loopback_up();
            }
        }
        Ok(())
    }
}

/// A root service's command becomes an unprivileged uid and group between
/// fork and exec, with no capability at all (the bounding set emptied too).
/// It owns its worktree ([`hand_over`]) and no file outside it, so `chmod`,
/// `chown` and `utime` of those fail; root-only files (`/etc/shadow`, host
/// keys) are unreadable to it even where Landlock lets it read the tree;
/// and `RLIMIT_NPROC` binds it (the kernel never counts root's processes).
/// Its worktree must be reachable by that uid: see [`assess_at`].
///
/// Written by hand: the `caps` crate allocates, which is not allowed between
/// fork and exec.
#[derive(Debug)]
pub(crate) struct UidDrop {
    uid: libc::uid_t,
}

impl UidDrop {
    fn new(uid: u32) -> Self {
        UidDrop { uid }
    }

    /// Runs in the child between fork and exec: system calls only.
    fn apply(&self) -> std::io::Result<()> {
        let fail = || Err(std::io::Error::last_os_error());
        // SAFETY: prctl, setgroups, setresuid and capset act on this
        // (single-threaded) child only, with valid pointers to locals.
        unsafe {
            // The bounding set first (it needs CAP_SETPCAP): nothing regained
            // by any program this command runs.
            for cap in 0..64u32 {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                    // EINVAL: past the last capability this kernel knows.
                    if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                        break;
                    }
                    return fail();
                }
            }
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return fail();
            }
            if libc::setresgid(self.uid, self.uid, self.uid) != 0 {
                return fail();
            }
            // From root to another uid: the kernel clears every capability.
            if libc::setresuid(self.uid, self.uid, self.uid) != 0 {
                return fail();
            }
        }
        Ok(())
    }
}

/// The entries of an open directory but `.` and `..`, with the type the
/// directory reports (`None`: it does not say; `fstatat` tells). The one
/// reader of directories for the walks by descriptor (the worktree's
/// hand-over, the nested-repository scan, the file tools).
pub fn dir_entries(dir: &mut nix::dir::Dir) -> Vec<(std::ffi::CString, Option<nix::dir::Type>)> {
    dir.iter()
        .filter_map(|e| e.ok())
        .map(|e| (e.file_name().to_owned(), e.file_type()))
        .filter(|(n, _)| n.to_bytes() != b"." && n.to_bytes() != b"..")
        .collect()
}

/// Gives the tree at `root` to `uid` (the sandbox uid of a root service's
/// commands): every file and directory this process owns there. The
/// commands then work in it as its owner (write, `chmod +x`), and own
/// nothing outside it. Cheap when nothing changed: a `getdents` per
/// directory and a `stat` per entry.
///
/// The walk goes by directory descriptors, each opened `O_NOFOLLOW` beneath
/// the last, and changes an entry with `fchownat(AT_SYMLINK_NOFOLLOW)`
/// relative to its directory: a command that swaps a directory for a
/// symlink meanwhile makes the walk skip it, never follow it out of the
/// worktree (paths would be resolved again at every step). Entries on
/// another file system are left alone.
pub fn hand_over(root: &Path, uid: u32) -> std::io::Result<()> {
    use nix::dir::{Dir, Type};
    use nix::fcntl::{openat, AtFlags, OFlag};
    use nix::sys::stat::{fstat, fstatat, Mode, SFlag};
    use nix::unistd::{fchownat, Uid};
    use std::os::fd::AsFd;

    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if me == uid {
        return Ok(());
    }
    let to = Some(Uid::from_raw(uid));
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let top = nix::fcntl::open(root, dir_flags, Mode::empty())?;
    let dev = fstat(&top)?.st_dev;
    if fstat(&top)?.st_uid == me {
        nix::unistd::fchown(&top, to, None)?;
    }
    let mut stack = vec![top];
    while let Some(fd) = stack.pop() {
        let mut dir = Dir::from_fd(fd)?;
        let entries = dir_entries(&mut dir);
        let mut subdirs = Vec::new();
        for (name, kind) in entries {
            let name = name.as_c_str();
            let st = match fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Removed meanwhile.
                Err(nix::errno::Errno::ENOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            if st.st_dev != dev {
                continue;
            }
            if st.st_uid == me {
                match fchownat(dir.as_fd(), name, to, None, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let is_dir = match kind {
                Some(t) => t == Type::Directory,
                None => SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR,
            };
            if is_dir {
                subdirs.push(name.to_owned());
            }
        }
        for name in subdirs {
            // ELOOP/ENOTDIR: it became a symlink or a file meanwhile.
            match openat(dir.as_fd(), name.as_c_str(), dir_flags, Mode::empty()) {
                Ok(sub) => stack.push(sub),
                Err(
                    nix::errno::Errno::ELOOP
                    | nix::errno::Errno::ENOTDIR
                    | nix::errno::Errno::ENOENT,
                ) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// The uid a root service's commands drop to under `policy`, as the
/// supervisor decided it (see [`hand_over`]).
pub fn dropped_uid(policy: &SandboxPolicy) -> Option<u32> {
    match (&policy.mode, &policy.resolved) {
        (SandboxMode::Off, _) => None,
        (_, Some(Mechanism::Landlock { uid, .. })) => *uid,
        (_, _) => None,
    }
}

/// Git refuses a repository its uid does not own ("dubious ownership"); a
/// dropped command runs git on the service's checkout. Configuration from
/// the environment counts as the command line's, which git trusts for this.
fn unowned_checkout_env() -> Vec<(OsString, OsString)> {
    vec![
        ("GIT_CONFIG_COUNT".into(), "1".into()),
        ("GIT_CONFIG_KEY_0".into(), "safe.directory".into()),
        ("GIT_CONFIG_VALUE_0".into(), "*".into()),
    ]
}

/// A Landlock domain for the helper programs the worker itself runs on a
/// task's worktree (git): it may read the system's trees and the
/// repository, and change only the worktree and what git writes for a task
/// (objects, task branches, the worktree's administrative files). Nothing
/// in a worktree should make git run a program, but if some configuration
/// did, that program would reach no secret, no other project, no TCP and no
/// process outside the domain.
#[derive(Debug)]
pub struct Jail {
    ruleset: OwnedFd,
}

impl Jail {
    /// `read`: trees that may be read and executed; `write`: trees that may
    /// also be changed. Paths that do not exist are left out. `None` when
    /// this kernel has no Landlock.
    pub fn new(read: &[PathBuf], write: &[PathBuf]) -> Result<Option<Jail>, String> {
        let abi = REQUESTED_ABI;
        let err = |e: landlock::RulesetError| format!("cannot build the Landlock ruleset: {e}");
        let existing = |paths: &[PathBuf]| -> Vec<PathBuf> {
            paths.iter().filter(|p| p.exists()).cloned().collect()
        };
        let created = Ruleset::default()
            .handle_access(AccessFs::from_all(abi))
            .map_err(err)?
            .handle_access(AccessNet::from_all(abi))
            .map_err(err)?
            .scope(Scope::from_all(abi))
            .map_err(err)?
            .create()
            .map_err(err)?
            .add_rules(path_beneath_rules(existing(read), AccessFs::from_read(abi)))
            .map_err(err)?
            .add_rules(path_beneath_rules(existing(write), AccessFs::from_all(abi)))
            .map_err(err)?
            .add_rules(path_beneath_rules(
                ["/dev/null"],
                AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate,
            ))
            .map_err(err)?
            .add_rules(path_beneath_rules(
                ["/dev/zero", "/dev/random", "/dev/urandom"],
                AccessFs::ReadFile,
            ))
            .map_err(err)?;
        let fd: Option<OwnedFd> = created.into();
        Ok(fd.map(|ruleset| Jail { ruleset }))
    }

    /// Registers the between-fork-and-exec hook that enters the domain.
    pub(crate) fn install(self: &Arc<Self>, cmd: &mut Command) {
        let jail = Arc::clone(self);
        // SAFETY: `enter` makes two system calls on an fd opened before the fork.
        unsafe {
            cmd.pre_exec(move || jail.enter());
        }
    }

    /// Puts the calling thread (and every process it starts from now on) in
    /// the domain, with `no_new_privs`. Async-signal-safe: two system calls.
    /// A domain covers one thread: called in a process with other threads,
    /// they stay outside it ([`crate::fork::fork_confined`] calls it in a
    /// child forked from a single-threaded process).
    pub(crate) fn enter(&self) -> std::io::Result<()> {
        // SAFETY: prctl and landlock_restrict_self on an fd this value owns.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::syscall(
                libc::SYS_landlock_restrict_self,
                self.ruleset.as_raw_fd(),
                0u32,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// # Safety
/// Async-signal-safe: open, write, close.
unsafe fn write_proc(path: &CString, data: &[u8]) -> std::io::Result<()> {
    // SAFETY: a valid C string and buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if n != data.len() as isize {
            return Err(err);
        }
    }
    Ok(())
}

/// Brings up `lo` in the child's new network namespace; a failure only
/// leaves the namespace without loopback.
///
/// # Safety
/// Async-signal-safe: socket, ioctl, close.
unsafe fn loopback_up() {
    // SAFETY: a zeroed ifreq is valid; the ioctls read and write only it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return;
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
        }
        libc::close(fd);
    }
}

/// The Landlock ruleset: read and execute `readable`, everything in `root`,
/// the harmless devices; with `deny_tcp`, no TCP bind or connect. `None`
/// when the kernel has no Landlock.
fn landlock_ruleset(
    readable: &[PathBuf],
    root: &Path,
    deny_tcp: bool,
) -> Result<Option<Arc<OwnedFd>>, String> {
    let abi = REQUESTED_ABI;
    let err = |e: landlock::RulesetError| format!("cannot build the Landlock ruleset: {e}");
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .scope(Scope::from_all(abi))
        .map_err(err)?;
    if deny_tcp {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(abi))
            .map_err(err)?;
    }
    let read = AccessFs::from_read(abi);
    let dev_rw: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;
    let created = ruleset
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(readable, read))
        .map_err(err)?
        .add_rules(path_beneath_rules([root], AccessFs::from_all(abi)))
        .map_err(err)?
        .add_rules(path_beneath_rules(["/dev/null", "/dev/full"], dev_rw))
        .map_err(err)?
        .add_rules(path_beneath_rules(
            ["/dev/zero", "/dev/random", "/dev/urandom"],
            AccessFs::ReadFile,
        ))
        .map_err(err)?;
    let fd: Option<OwnedFd> = created.into();
    Ok(fd.map(Arc::new))
}

/// The bwrap arguments before the program: `readable` bound read-only at its
/// own path, symlinked roots (`/bin` -> `usr/bin`) recreated as symlinks.
fn bubblewrap_args(
    readable: &Readable,
    roots: &[PathBuf],
    root: &Path,
    allow_network: bool,
) -> Vec<OsString> {
    // No capabilities inside, even for a root service: with them, a
    // read-only bind could be remounted read-write.
    let mut a: Vec<OsString> = ["--unshare-all", "--die-with-parent", "--cap-drop", "ALL"]
        .iter()
        .map(OsString::from)
        .collect();
    if allow_network {
        a.push("--share-net".into());
    }
    for p in &readable.trees {
        if p.starts_with("/proc") || p.starts_with("/dev") {
            continue;
        }
        a.extend(["--ro-bind".into(), p.clone().into(), p.clone().into()]);
    }
    let links = roots
        .iter()
        .filter_map(|r| std::fs::read_link(r).ok().map(|t| (r.clone(), t)))
        .chain(readable.symlinks.iter().cloned());
    for (link, target) in links {
        a.extend(["--symlink".into(), target.into(), link.into()]);
    }
    a.extend([
        "--proc".into(),
        "/proc".into(),
        "--dev".into(),
        "/dev".into(),
    ]);
    a.extend([
        OsString::from("--bind"),
        root.as_os_str().to_owned(),
        root.as_os_str().to_owned(),
        // The empty root bwrap builds the mount points in stays read-only:
        // nothing outside the worktree is writable, not even a throwaway /tmp.
        "--remount-ro".into(),
        "/".into(),
        "--chdir".into(),
        root.as_os_str().to_owned(),
        "--".into(),
    ]);
    a
}

/// What a confined command may read: whole trees, and the symlinks found in
/// directories that had to be carved (kept as links, never followed).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Readable {
    pub trees: Vec<PathBuf>,
    /// `(link, what it points at)`, for bubblewrap to recreate.
    pub symlinks: Vec<(PathBuf, PathBuf)>,
}

/// The trees of `roots` minus `hidden`. A root that holds a hidden path is
/// replaced by its entries, recursively, leaving the hidden path out; a root
/// inside a hidden path stays readable (it was asked for). Symlinks met while
/// carving are never followed: Landlock checks what they point at on access,
/// and bubblewrap recreates them as links.
pub fn readable_trees(roots: &[PathBuf], hidden: &[PathBuf]) -> Readable {
    // A hidden path that does not exist cannot be read; leaving it out keeps
    // its parent whole (and listable).
    let hidden: Vec<PathBuf> = hidden
        .iter()
        .filter_map(|h| std::fs::canonicalize(h).ok())
        .collect();
    let mut out = Readable::default();
    for root in roots {
        if let Ok(c) = std::fs::canonicalize(root) {
            let inner: Vec<&PathBuf> = hidden
                .iter()
                .filter(|h| h.starts_with(&c) && **h != c)
                .collect();
            carve(&c, &inner, &mut out);
        }
    }
    out.trees.sort();
    out.trees.dedup();
    out.symlinks.sort();
    out.symlinks.dedup();
    out
}

fn carve(dir: &Path, hidden: &[&PathBuf], out: &mut Readable) {
    if hidden.is_empty() {
        out.trees.push(dir.to_owned());
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            if let Ok(target) = std::fs::read_link(&path) {
                out.symlinks.push((path, target));
            }
            continue;
        }
        if hidden.iter().any(|h| path.starts_with(h)) {
            continue;
        }
        let inner: Vec<&PathBuf> = hidden
            .iter()
            .copied()
            .filter(|h| h.starts_with(&path))
            .collect();
        carve(&path, &inner, out);
    }
}

/// The environment of a confined command: `PATH` without the entries it
/// cannot read, a private `HOME` and `TMPDIR`, locale and terminal names.
fn confined_env(
    readable: &[PathBuf],
    root: &Path,
    home: &Path,
    tmp: &Path,
) -> Vec<(OsString, OsString)> {
    let inherited = std::env::var_os("PATH").unwrap_or_default();
    let visible = |p: &Path| {
        std::fs::canonicalize(p)
            .is_ok_and(|c| c.starts_with(root) || readable.iter().any(|r| c.starts_with(r)))
    };
    let kept: Vec<PathBuf> = std::env::split_paths(&inherited)
        .filter(|p| p.is_absolute() && visible(p))
        .collect();
    let path = if kept.is_empty() {
        OsString::from("/usr/local/bin:/usr/bin:/bin")
    } else {
        std::env::join_paths(kept).unwrap_or_default()
    };
    let mut env = vec![
        (OsString::from("PATH"), path),
        ("HOME".into(), home.as_os_str().to_owned()),
        ("TMPDIR".into(), tmp.as_os_str().to_owned()),
        ("SHELL".into(), "/bin/sh".into()),
    ];
    for k in [
        "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "USER", "LOGNAME",
    ] {
        if let Some(v) = std::env::var_os(k) {
            env.push((OsString::from(k), v));
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facilities_with(landlock: Result<i32, String>, ns: bool, bwrap: bool) -> Facilities {
        Facilities {
            landlock,
            namespaces: if ns { Ok(()) } else { Err("no userns".into()) },
            uid_drop: if running_as_root() {
                Ok(())
            } else {
                Err("AgentSwarm does not run as root".into())
            },
            bubblewrap: if bwrap {
                Ok(PathBuf::from("/usr/bin/bwrap"))
            } else {
                Err("bubblewrap is not installed".into())
            },
        }
    }

    fn policy(mode: SandboxMode) -> SandboxPolicy {
        SandboxPolicy {
            mode,
            ..SandboxPolicy::default()
        }
    }

    #[test]
    fn required_refuses_only_what_cannot_be_confined() {
        let req = policy(SandboxMode::Required);
        // Auto takes bubblewrap when it is there.
        let a = assess(&req, &facilities_with(Ok(7), true, true));
        assert!(a.refusal.is_none(), "{:?}", a.gaps);
        assert_eq!(a.mechanism_name(), "bubblewrap");
        // Landlock with namespaces otherwise; enough for an unprivileged service.
        let a = assess(&req, &facilities_with(Ok(7), true, false));
        assert_eq!(a.mechanism_name(), "landlock");
        // A root service's commands drop to the sandbox uid: confined too.
        assert!(a.refusal.is_none(), "{:?}", a.gaps);
        if running_as_root() {
            assert!(
                matches!(
                    a.mechanism,
                    Mechanism::Landlock {
                        uid: Some(65534),
                        ..
                    }
                ),
                "{:?}",
                a.mechanism
            );
            // Without the drop, root keeps its power over file metadata.
            let mut f = facilities_with(Ok(7), true, false);
            f.uid_drop = Err("no CAP_SETUID".into());
            let why = assess(&req, &f).refusal.expect("refused");
            assert!(
                why.contains("chmod") && why.contains("no CAP_SETUID"),
                "{why}"
            );
        } else {
            assert!(a.gaps.iter().any(|g| g.contains("chmod")), "{:?}", a.gaps);
        }
        // Old Landlock without namespaces leaves the network and truncation open.
        let a = assess(&req, &facilities_with(Ok(2), false, false));
        let why = a.refusal.expect("refused");
        assert!(
            why.contains("truncating") && why.contains("network"),
            "{why}"
        );
        // ABI 4's TCP rules do not stand in for a network namespace (UDP stays
        // open), and before ABI 6 signals leave the sandbox.
        let a = assess(&req, &facilities_with(Ok(4), false, false));
        let why = a.refusal.unwrap();
        assert!(why.contains("UDP") && why.contains("signals"), "{why}");
        // An explicit mechanism that is missing falls back to the other.
        let mut ll = req.clone();
        ll.mechanism = SandboxMechanism::Landlock;
        let a = assess(&ll, &facilities_with(Err("no landlock".into()), true, true));
        assert_eq!(a.mechanism_name(), "bubblewrap");
        assert!(a.gaps[0].contains("no landlock"), "{:?}", a.gaps);
        // Nothing at all.
        let a = assess(
            &req,
            &facilities_with(Err("no landlock".into()), false, false),
        );
        assert!(a.refusal.unwrap().contains("Install bubblewrap"));
        // Best effort runs anyway and says what is missing.
        let a = assess(
            &policy(SandboxMode::BestEffort),
            &facilities_with(Err("no landlock".into()), false, false),
        );
        assert!(a.refusal.is_none());
        assert_eq!(a.mechanism_name(), "none");
        assert!(a.gaps[0].contains("no landlock"), "{:?}", a.gaps);
    }

    #[test]
    fn a_root_service_drops_only_where_its_commands_can_reach() {
        use std::os::unix::fs::PermissionsExt;
        if !running_as_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("data/projects/p1");
        std::fs::create_dir_all(&project).unwrap();
        let f = facilities_with(Ok(7), true, false);
        let req = policy(SandboxMode::Required);
        // A 0700 parent: the sandbox uid could not reach the project.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let a = assess_at(&req, &f, &project);
        assert!(
            matches!(a.mechanism, Mechanism::Landlock { uid: None, .. }),
            "{:?}",
            a.mechanism
        );
        let why = a.refusal.expect("refused");
        assert!(
            why.contains("not searchable") && why.contains("chmod o+x"),
            "{why}"
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let a = assess_at(&req, &f, &project);
        assert!(a.refusal.is_none(), "{:?}", a.gaps);
        assert!(matches!(
            a.mechanism,
            Mechanism::Landlock {
                uid: Some(65534),
                ..
            }
        ));
    }

    #[test]
    fn hidden_paths_are_carved_out_of_readable_trees() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        for d in ["sys/lib", "sys/data/store", "sys/other", "private"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        std::fs::write(base.join("sys/file"), "x").unwrap();
        std::os::unix::fs::symlink(base.join("sys/data"), base.join("sys/link")).unwrap();
        std::os::unix::fs::symlink(base.join("private"), base.join("sys/elsewhere")).unwrap();
        let r = readable_trees(
            &[base.join("sys")],
            &[base.join("sys/data/store"), base.join("missing")],
        );
        assert_eq!(
            r.trees,
            vec![
                base.join("sys/file"),
                base.join("sys/lib"),
                base.join("sys/other")
            ],
            "the hidden tree, its parent's other entries; symlinks are not followed"
        );
        assert_eq!(
            r.symlinks,
            vec![
                (base.join("sys/elsewhere"), base.join("private")),
                (base.join("sys/link"), base.join("sys/data")),
            ]
        );
        // A hidden path that does not exist leaves its parent whole.
        let r = readable_trees(&[base.join("sys")], &[base.join("sys/nothing")]);
        assert_eq!(r.trees, vec![base.join("sys")]);
        // A root asked for inside a hidden path stays readable.
        let r = readable_trees(&[base.join("sys/data/store")], &[base.join("sys/data")]);
        assert_eq!(r.trees, vec![base.join("sys/data/store")]);
    }
}

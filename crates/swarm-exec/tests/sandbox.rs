//! The sandbox against real commands, for every mechanism this machine has.
//! Each escape is first shown to work without the sandbox, so that a test
//! cannot pass because the command was wrong.
//!
//! `AGENTSWARM_TEST_SANDBOXES=landlock,bubblewrap` (set by `.ci/run`) makes a
//! missing mechanism a failure instead of a skipped case.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use swarm_exec::sandbox::{
    facilities, CommandLimits, SandboxMechanism, SandboxMode, SandboxPolicy, DEFAULT_READ_ONLY,
};
use swarm_exec::{run_shell, Sandbox, ShellOptions, ShellOutput};

struct Layout {
    _dir: tempfile::TempDir,
    base: PathBuf,
    data: PathBuf,
    root: PathBuf,
    other: PathBuf,
    secrets: PathBuf,
}

/// A data directory with a store and two worktrees, and a secrets file
/// elsewhere, all under a fresh temporary directory.
fn layout() -> Layout {
    let dir = tempfile::tempdir().unwrap();
    // Searchable by others: a root service's commands drop to another uid.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let base = dir.path().canonicalize().unwrap();
    let data = base.join("data");
    let root = data.join("projects/p1/worktrees/w1");
    let other = data.join("projects/p1/worktrees/w2");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(data.join("store.db"), "STORE-CONTENT").unwrap();
    std::fs::write(other.join("notes.txt"), "OTHER-TASK-CONTENT").unwrap();
    std::fs::create_dir_all(base.join("etc")).unwrap();
    let secrets = base.join("etc/secrets.env");
    std::fs::write(&secrets, "OPENAI_API_KEY=sk-test-FAKE-not-a-key\n").unwrap();
    Layout {
        _dir: dir,
        base,
        data,
        root,
        other,
        secrets,
    }
}

#[allow(dead_code)]
fn root_user() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The whole temporary directory is readable, so the hidden data directory
/// and secrets file have to be carved out of it.
fn policy(l: &Layout, mechanism: SandboxMechanism, allow_network: bool) -> SandboxPolicy {
    let mut read_only: Vec<PathBuf> = DEFAULT_READ_ONLY.iter().map(PathBuf::from).collect();
    read_only.push(l.base.clone());
    SandboxPolicy {
        // Both mechanisms are enough for `required`, for a root service too
        // (its commands drop to an unprivileged uid under Landlock).
        mode: SandboxMode::Required,
        mechanism,
        allow_network,
        read_only,
        hidden: vec![l.data.clone(), l.secrets.clone()],
        limits: CommandLimits::default(),
        uid: swarm_exec::sandbox::DEFAULT_SANDBOX_UID,
        resolved: None,
    }
}

fn sh(root: &Path, sandbox: Option<&Arc<Sandbox>>, command: &str) -> ShellOutput {
    run_shell(
        command,
        &ShellOptions {
            cwd: root.to_owned(),
            env: vec![],
            timeout: Duration::from_secs(30),
            output_cap: 1 << 16,
            enclosure: None,
            sandbox: sandbox.cloned(),
        },
    )
    .unwrap()
}

/// The mechanisms to test: those available, and those CI says must be.
fn mechanisms() -> Vec<SandboxMechanism> {
    let required = std::env::var("AGENTSWARM_TEST_SANDBOXES").unwrap_or_default();
    let f = facilities();
    let mut out = Vec::new();
    for (m, available, why) in [
        (
            SandboxMechanism::Landlock,
            f.landlock.is_ok(),
            f.landlock.as_ref().err().cloned(),
        ),
        (
            SandboxMechanism::Bubblewrap,
            f.bubblewrap.is_ok(),
            f.bubblewrap.as_ref().err().cloned(),
        ),
    ] {
        if available {
            out.push(m);
        } else if required.split(',').any(|r| r.trim() == m.as_str()) {
            panic!(
                "AGENTSWARM_TEST_SANDBOXES names {m}, but {}",
                why.unwrap_or_default()
            );
        } else {
            eprintln!("skipping the {m} sandbox: {}", why.unwrap_or_default());
        }
    }
    out
}

fn escapes(
    l: &Layout,
    port: u16,
    udp_port: u16,
    marker: &Path,
    mechanism: SandboxMechanism,
) -> Vec<(&'static str, String)> {
    let mut e = vec![
        ("write /tmp", format!("echo x > {}", marker.display())),
        ("write ../other", "echo x > ../w2/planted".into()),
        ("write the data dir", format!("echo x > {}/planted", l.data.display())),
        ("read the store", format!("cat {}/store.db", l.data.display())),
        ("read another worktree", "cat ../w2/notes.txt".into()),
        ("read the secrets file", format!("cat {}", l.secrets.display())),
        (
            "read the supervisor's environment",
            format!("cat /proc/{}/environ > /dev/null", std::process::id()),
        ),
        (
            "signal the supervisor",
            format!("kill -0 {}", std::process::id()),
        ),
        (
            "send UDP to loopback",
            format!(
                "python3 -c \"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'EXFIL', ('127.0.0.1', {udp_port}))\""
            ),
        ),
        (
            "connect to loopback",
            format!(
                "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5); print('CONNECTED')\""
            ),
        ),
    ];
    // Landlock has no rule for chmod (docs/security.md); bubblewrap's
    // read-only mounts stop it.
    if mechanism == SandboxMechanism::Bubblewrap {
        e.insert(
            0,
            (
                "chmod the store",
                format!("chmod 604 {}/store.db", l.data.display()),
            ),
        );
    }
    e
}

#[test]
fn every_escape_fails_and_legitimate_work_passes() {
    for mechanism in mechanisms() {
        let l = layout();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_nonblocking(true).unwrap();
        let udp_port = udp.local_addr().unwrap().port();
        let marker = std::env::temp_dir().join(format!(
            "agentswarm-sandbox-{}-{}",
            std::process::id(),
            mechanism
        ));
        let _ = std::fs::remove_file(&marker);

        // Unconfined, every escape works: the commands are right.
        for (what, cmd) in escapes(&l, port, udp_port, &marker, mechanism) {
            let out = sh(&l.root, None, &cmd);
            assert!(
                out.exit.success() && !out.output.contains("Permission denied"),
                "{mechanism}: without a sandbox, `{what}` should work: {} {}",
                out.exit,
                out.output
            );
        }
        assert!(marker.exists());
        std::fs::remove_file(&marker).unwrap();
        std::fs::remove_file(l.other.join("planted")).unwrap();
        std::fs::remove_file(l.data.join("planted")).unwrap();
        listener.set_nonblocking(true).unwrap();
        while listener.accept().is_ok() {}
        let mut buf = [0u8; 16];
        assert!(
            udp.recv(&mut buf).is_ok(),
            "the unconfined UDP datagram arrived"
        );
        while udp.recv(&mut buf).is_ok() {}
        let store = l.data.join("store.db");
        std::fs::set_permissions(&store, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();

        let sandbox = Arc::new(Sandbox::prepare(&policy(&l, mechanism, false), &l.root).unwrap());
        assert_eq!(sandbox.assessment().mechanism_name(), mechanism.as_str());
        for (what, cmd) in escapes(&l, port, udp_port, &marker, mechanism) {
            let out = sh(&l.root, Some(&sandbox), &cmd);
            // A datagram sent into an empty network namespace is not an
            // error: whether it arrived is checked below.
            let udp_send = what == "send UDP to loopback";
            assert!(
                (!out.exit.success() || udp_send)
                    && !out.output.contains("CONNECTED")
                    && !out.output.contains("CONTENT")
                    && !out.output.contains("sk-test"),
                "{mechanism}: `{what}` escaped: {} {}",
                out.exit,
                out.output
            );
        }
        assert!(!marker.exists(), "{mechanism}: wrote /tmp");
        assert!(
            !l.other.join("planted").exists(),
            "{mechanism}: wrote ../w2"
        );
        assert!(
            !l.data.join("planted").exists(),
            "{mechanism}: wrote the data dir"
        );
        assert!(
            listener.accept().is_err(),
            "{mechanism}: a connection reached the test's listener"
        );
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            udp.recv(&mut buf).is_err(),
            "{mechanism}: a UDP datagram left the sandbox"
        );
        use std::os::unix::fs::PermissionsExt;
        if mechanism == SandboxMechanism::Bubblewrap {
            assert_eq!(
                std::fs::metadata(&store).unwrap().permissions().mode() & 0o777,
                0o600,
                "{mechanism}: chmod of the store"
            );
        }

        // Legitimate work: files in the worktree, temp files, Python's unittest, sh scripts.
        std::fs::write(
            l.root.join("test_calc.py"),
            "import os, tempfile, unittest\n\
             class T(unittest.TestCase):\n    \
                 def test_add(self):\n        self.assertEqual(1 + 1, 2)\n    \
                 def test_tmp(self):\n        \
                     with tempfile.NamedTemporaryFile() as f:\n            f.write(b'x')\n",
        )
        .unwrap();
        std::fs::write(
            l.root.join("build.sh"),
            "#!/bin/sh\nset -e\nmkdir -p out\necho built > out/result\n",
        )
        .unwrap();
        // What the worker does after its file tools wrote (as root).
        if let Some(uid) = sandbox.uid() {
            swarm_exec::sandbox::hand_over(&l.root, uid).unwrap();
        }
        let out = sh(
            &l.root,
            Some(&sandbox),
            "set -e; echo hi > made.txt; mkdir -p d; mv made.txt d/; cat d/made.txt; \
             sh build.sh; chmod +x build.sh; ./build.sh; cat out/result; \
             python3 -m unittest -q 2>&1; echo tmp=$TMPDIR home=$HOME; \
             echo data > \"$TMPDIR/t\"; cat \"$TMPDIR/t\" > /dev/null; ulimit -c; ulimit -n",
        );
        assert!(out.exit.success(), "{mechanism}: {}", out.output);
        assert!(
            out.output.contains("hi\n") && out.output.contains("built\n"),
            "{}",
            out.output
        );
        assert!(
            out.output.contains("OK"),
            "{mechanism}: unittest: {}",
            out.output
        );
        let private = l.root.join(".agentswarm");
        assert!(
            out.output
                .contains(&format!("tmp={}", private.join("tmp").display()))
                && out
                    .output
                    .contains(&format!("home={}", private.join("home").display())),
            "{}",
            out.output
        );
        let lines: Vec<&str> = out.output.lines().collect();
        assert_eq!(lines[lines.len() - 2], "0", "core dumps: {}", out.output);
        assert!(lines[lines.len() - 1].parse::<u64>().unwrap() <= 4096);
        assert_eq!(
            std::fs::read_to_string(l.root.join("d/made.txt")).unwrap(),
            "hi\n"
        );

        // With the network allowed, loopback is reachable.
        let open = Arc::new(Sandbox::prepare(&policy(&l, mechanism, true), &l.root).unwrap());
        listener.set_nonblocking(false).unwrap();
        let (_, cmd) = escapes(&l, port, udp_port, &marker, mechanism)
            .pop()
            .unwrap();
        let out = sh(&l.root, Some(&open), &cmd);
        assert!(
            out.exit.success() && out.output.contains("CONNECTED"),
            "{mechanism}: allow_network: {} {}",
            out.exit,
            out.output
        );
        // ... while the files stay confined.
        let out = sh(
            &l.root,
            Some(&open),
            &format!("cat {}", l.secrets.display()),
        );
        assert!(
            !out.exit.success() && !out.output.contains("sk-test"),
            "{}",
            out.output
        );
        let _ = l.base;
    }
}

#[test]
fn commands_of_a_private_network_can_use_their_own_loopback() {
    for mechanism in mechanisms() {
        let l = layout();
        let sandbox = Arc::new(Sandbox::prepare(&policy(&l, mechanism, false), &l.root).unwrap());
        let out = sh(
            &l.root,
            Some(&sandbox),
            "python3 -c \"import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); \
             c = socket.create_connection(s.getsockname()); print('LOCAL-OK')\"",
        );
        assert!(
            out.output.contains("LOCAL-OK"),
            "{mechanism}: {}",
            out.output
        );
    }
}

/// What a root service's command tries against files it does not own, and
/// how many processes it makes (limit 40); prints one line per result.
fn root_attacks(target: &Path, secrets: &Path) -> String {
    format!(
        "head -c 1 /etc/shadow >/dev/null 2>&1 && echo SHADOW-READ; \
         chmod 4755 {t} 2>/dev/null && echo SETUID; \
         chmod 644 {s} 2>/dev/null && echo SECRETS-OPENED; \
         touch -d 2001-01-01 {t} 2>/dev/null && echo TIMES-CHANGED; \
         python3 -c \"
import os, time
n = 0
try:
    for i in range(80):
        if os.fork() == 0:
            time.sleep(2)
            os._exit(0)
        n += 1
except OSError:
    pass
print('FORKED', n)
\"",
        t = target.display(),
        s = secrets.display()
    )
}

#[test]
fn a_root_service_command_under_landlock_owns_nothing_outside_its_worktree() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use swarm_exec::sandbox::Mechanism;
    if !root_user() || facilities().landlock.is_err() {
        eprintln!("skipped: needs a root service and Landlock");
        return;
    }
    let abi = *facilities().landlock.as_ref().unwrap();
    let namespaces = facilities().namespaces.is_ok();
    let attempt = |uid: Option<u32>| {
        let l = layout();
        let target = l.base.join("root-owned.bin");
        std::fs::write(&target, "x").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&l.secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mtime = std::fs::metadata(&target).unwrap().mtime();
        let mut p = policy(&l, SandboxMechanism::Landlock, false);
        p.limits = CommandLimits {
            processes: 40,
            ..CommandLimits::default()
        };
        // Decided as the supervisor would, or (uid None) as before the fix:
        // root in a user namespace that maps it to root.
        p.resolved = Some(Mechanism::Landlock {
            abi,
            namespaces,
            uid,
        });
        p.mode = SandboxMode::BestEffort;
        let sandbox = Arc::new(Sandbox::prepare(&p, &l.root).unwrap());
        let out = sh(&l.root, Some(&sandbox), &root_attacks(&target, &l.secrets));
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
        let secrets = std::fs::metadata(&l.secrets).unwrap().permissions().mode() & 0o777;
        let moved = std::fs::metadata(&target).unwrap().mtime() != mtime;
        (out.output, mode, secrets, moved)
    };

    // Before: root mapped to root keeps its power over file metadata, and
    // the process limit does not bind it.
    let (out, mode, secrets, moved) = attempt(None);
    assert!(out.contains("SETUID") && mode == 0o4755, "{out}");
    assert!(out.contains("SECRETS-OPENED") && secrets == 0o644, "{out}");
    assert!(out.contains("TIMES-CHANGED") && moved, "{out}");
    assert!(out.contains("FORKED 80"), "{out}");
    assert!(out.contains("SHADOW-READ"), "{out}");

    // After: the command is the sandbox uid.
    let (out, mode, secrets, moved) = attempt(Some(swarm_exec::sandbox::DEFAULT_SANDBOX_UID));
    assert_eq!(mode, 0o644, "{out}");
    assert_eq!(secrets, 0o600, "{out}");
    assert!(!moved, "{out}");
    assert!(
        !out.contains("SETUID")
            && !out.contains("SECRETS")
            && !out.contains("TIMES")
            && !out.contains("SHADOW"),
        "{out}"
    );
    let forked: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("FORKED "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(forked < 40, "the process limit did not bind: {out}");
}

/// Exchanges `a` and `b` (a directory and a symlink) until `stop`.
fn flip(a: PathBuf, b: PathBuf, stop: Arc<std::sync::atomic::AtomicBool>) {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes()).unwrap();
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes()).unwrap();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // SAFETY: renameat2 with two valid C strings.
        unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                2u32, // RENAME_EXCHANGE
            );
        }
    }
}

/// The walk `hand_over` made before it went by descriptors: by path, with
/// only the last component not followed (the defence off).
fn hand_over_by_path(root: &Path, uid: u32) {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.uid() == 0 {
                let _ = std::os::unix::fs::lchown(e.path(), Some(uid), None);
            }
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
}

/// A command of a root service that swaps a directory of its worktree for a
/// symlink while the worker gives the worktree to the sandbox uid must not
/// get root to chown anything outside.
#[test]
fn handing_the_worktree_over_never_follows_a_swapped_symlink() {
    use std::os::unix::fs::MetadataExt;
    if !root_user() {
        eprintln!("skipped: only root hands worktrees over");
        return;
    }
    let attempt = |walk: &dyn Fn(&Path)| -> bool {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let wt = base.join("wt");
        let victim = base.join("victim");
        std::fs::create_dir_all(&victim).unwrap();
        for i in 0..50 {
            std::fs::write(victim.join(format!("f{i}")), "root's").unwrap();
        }
        std::fs::create_dir_all(wt.join("d")).unwrap();
        std::fs::write(wt.join("d/file"), "x").unwrap();
        std::os::unix::fs::symlink(&victim, wt.join("l")).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flipper = {
            let (a, b, stop) = (wt.join("d"), wt.join("l"), stop.clone());
            std::thread::spawn(move || flip(a, b, stop))
        };
        let started = std::time::Instant::now();
        let mut leaked = false;
        while started.elapsed() < Duration::from_secs(3) && !leaked {
            walk(&wt);
            leaked = std::fs::read_dir(&victim)
                .unwrap()
                .flatten()
                .any(|e| e.metadata().unwrap().uid() != 0);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        flipper.join().unwrap();
        leaked
    };
    let uid = swarm_exec::sandbox::DEFAULT_SANDBOX_UID;
    assert!(
        attempt(&|wt| hand_over_by_path(wt, uid)),
        "the race did not work against the path walk"
    );
    assert!(
        !attempt(&|wt| {
            let _ = swarm_exec::sandbox::hand_over(wt, uid);
        }),
        "hand_over chowned a file outside the worktree"
    );
}

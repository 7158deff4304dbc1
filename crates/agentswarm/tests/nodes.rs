//! Worker nodes over real SSH: each test makes its own hosts — a network
//! namespace with a veth link to this one, running Debian's OpenSSH server
//! on its own address with its own host key — and drives them with
//! `agentswarm node check|install` (docs/scale-out.md). Needs root, `ip`
//! (iproute2) and `sshd` (openssh-server), which `.ci/run` installs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A host of its own: a network namespace joined to this one by a veth
/// pair (10.A.B.1 here, 10.A.B.2 there), running sshd on port 22.
struct TestHost {
    dir: tempfile::TempDir,
    ns: String,
    link: String,
    addr: String,
}

impl TestHost {
    fn start(authorized_key: &Path) -> TestHost {
        let n = fastrand::u32(..);
        let (a, b) = (100 + n % 100, 1 + (n >> 8) % 250);
        let tag = format!("{:06x}", n & 0xff_ffff);
        let (ns, link, peer) = (
            format!("asn{tag}"),
            format!("ash{tag}"),
            format!("asp{tag}"),
        );
        let addr = format!("10.{a}.{b}.2");
        sh("ip", &["netns", "add", &ns]);
        sh(
            "ip",
            &["link", "add", &link, "type", "veth", "peer", "name", &peer],
        );
        sh("ip", &["link", "set", &peer, "netns", &ns]);
        sh(
            "ip",
            &["addr", "add", &format!("10.{a}.{b}.1/30"), "dev", &link],
        );
        sh("ip", &["link", "set", &link, "up"]);
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "ip",
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                &peer,
            ],
        );
        sh(
            "ip",
            &["netns", "exec", &ns, "ip", "link", "set", &peer, "up"],
        );
        sh(
            "ip",
            &["netns", "exec", &ns, "ip", "link", "set", "lo", "up"],
        );
        let host = TestHost {
            dir: tempfile::tempdir().unwrap(),
            ns,
            link,
            addr,
        };
        let d = host.dir.path();
        sh(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                d.join("hostkey").to_str().unwrap(),
            ],
        );
        std::fs::copy(authorized_key, d.join("authorized_keys")).unwrap();
        let config = format!(
            "Port 22\nListenAddress {}\nHostKey {d}/hostkey\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
             StrictModes no\nUsePAM no\nLogLevel ERROR\n",
            host.addr,
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &host.ns,
                "/usr/sbin/sshd",
                "-f",
                d.join("sshd_config").to_str().unwrap(),
                "-E",
                d.join("sshd.log").to_str().unwrap(),
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let target: std::net::SocketAddr = format!("{}:22", host.addr).parse().unwrap();
        while std::net::TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd on {} never answered",
                host.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        host
    }

    /// Its line for a known-hosts file.
    fn known_hosts_line(&self) -> String {
        let key = std::fs::read_to_string(self.dir.path().join("hostkey.pub")).unwrap();
        let mut parts = key.split_whitespace();
        format!(
            "{} {} {}\n",
            self.addr,
            parts.next().unwrap(),
            parts.next().unwrap()
        )
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // sshd and every session it started: nothing is left on the host.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").arg(pid).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .status();
    }
}

/// A client key, and the known-hosts file the config points at.
struct Client {
    key: PathBuf,
    known_hosts: PathBuf,
}

fn client(h: &Harness) -> Client {
    let key = h.home.path().join("id_node");
    sh(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()],
    );
    let known_hosts = h.home.path().join("known_hosts");
    std::fs::write(&known_hosts, "").unwrap();
    Client { key, known_hosts }
}

fn pub_key(c: &Client) -> PathBuf {
    c.key.with_extension("pub")
}

/// `[nodes.NAME]` for each (name, host); each node's binary in the harness
/// home (the hosts share this machine's file system).
fn write_config(h: &Harness, c: &Client, nodes: &[(&str, &TestHost)]) {
    let mut toml = String::new();
    for (name, host) in nodes {
        toml.push_str(&format!(
            "[nodes.{name}]\nssh = \"root@{}\"\nidentity_file = \"{}\"\nknown_hosts_file = \"{}\"\n\
             agentswarm = \"{}\"\nmax_workers = 3\nlabels = [\"rust\"]\nwork_dir = \"{}\"\nlost_after_secs = 6\n",
            host.addr,
            c.key.display(),
            c.known_hosts.display(),
            node_binary(h, name).display(),
            node_binary(h, name).parent().unwrap().parent().unwrap().join("work").display()
        ));
    }
    std::fs::write(h.home.path().join("agentswarm.toml"), toml).unwrap();
}

/// `doctor --json` prints one pretty-printed object.
fn pretty_json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

fn node_binary(h: &Harness, name: &str) -> PathBuf {
    h.home
        .path()
        .join("nodes")
        .join(name)
        .join("bin/agentswarm")
}

#[test]
fn nodes_are_checked_and_installed_over_real_ssh() {
    let h = Harness::new(json!({}));
    let c = client(&h);
    let (one, two) = (TestHost::start(&pub_key(&c)), TestHost::start(&pub_key(&c)));
    std::fs::write(
        &c.known_hosts,
        one.known_hosts_line() + &two.known_hosts_line(),
    )
    .unwrap();
    write_config(&h, &c, &[("n1", &one), ("n2", &two)]);

    // doctor lists them (without connecting).
    let out = h.run(&["doctor", "--json"]);
    let doctor = pretty_json(&out);
    assert_eq!(doctor["nodes"][0]["name"], "n1", "{doctor}");
    assert_eq!(doctor["nodes"][1]["max_workers"], 3);

    // Nothing installed yet: both not ready, and each says what to do.
    let out = h.run(&["node", "check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("n1 (root@") && t.contains("NOT READY"), "{t}");
    assert!(
        t.contains("agentswarm node install n1") && t.contains("agentswarm node install n2"),
        "{t}"
    );

    // n2 runs an older agentswarm.
    let old = node_binary(&h, "n2");
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::write(
        &old,
        "#!/bin/sh\necho '{\"version\":\"0.0.1\",\"hostname\":\"old\",\"cpus\":1,\"sandbox\":\"off\",\"sandbox_gaps\":[],\"memory_limiter\":\"none\",\"free_memory_mb\":null,\"load_1m\":null}'\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = h.run(&["node", "check", "n2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("the node runs agentswarm 0.0.1, this supervisor")
            && text(&out).contains("agentswarm node install n2"),
        "{}",
        text(&out)
    );

    for name in ["n1", "n2"] {
        let out = h.run(&["node", "install", name]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("{name} (root@")) && text(&out).contains("ready"),
            "{}",
            text(&out)
        );
    }
    assert_eq!(
        std::fs::read(node_binary(&h, "n1")).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_agentswarm")).unwrap(),
        "the node got this very binary"
    );
    let out = h.run(&["node", "check", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = last_json_line(&out);
    for n in report.as_array().unwrap() {
        assert_eq!(n["ok"], true, "{n}");
        assert_eq!(n["slots"], 3);
        assert_eq!(n["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert!(
            n["info"]["sandbox"].as_str().is_some_and(|s| !s.is_empty()),
            "{n}"
        );
        assert!(n["info"]["memory_limiter"].as_str().is_some(), "{n}");
    }
    // One shared connection per node, in a directory only this user reads.
    let ssh_dir = h.data_dir().join("ssh");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&ssh_dir).unwrap().mode() & 0o777, 0o700);
    let sockets = std::fs::read_dir(&ssh_dir).unwrap().count();
    assert_eq!(sockets, 2, "one master connection per node");
    for host in [&one, &two] {
        let _ = Command::new("ssh")
            .args(["-O", "exit", "-o"])
            .arg(format!("ControlPath={}/%C", ssh_dir.display()))
            .arg(format!("root@{}", host.addr))
            .output();
    }
}

/// Host keys are checked, never accepted blindly: a node whose key is not
/// in the known-hosts file, or differs from the one there, is refused with
/// what to do.
#[test]
fn an_unknown_or_changed_host_key_is_refused() {
    let h = Harness::new(json!({}));
    let c = client(&h);
    let (one, other) = (TestHost::start(&pub_key(&c)), TestHost::start(&pub_key(&c)));
    write_config(&h, &c, &[("n1", &one)]);

    // The attack's premise: with host keys unchecked, the node is reached.
    let unchecked = Command::new("ssh")
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-i",
        ])
        .arg(&c.key)
        .arg(format!("root@{}", one.addr))
        .arg("true")
        .output()
        .unwrap();
    assert!(
        unchecked.status.success(),
        "{}",
        String::from_utf8_lossy(&unchecked.stderr)
    );

    let out = h.run(&["node", "check", "n1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!("the host key of {} is not in", one.addr)),
        "{t}"
    );
    assert!(t.contains("ssh-keyscan -p 22"), "{t}");
    assert!(
        std::fs::read_to_string(&c.known_hosts).unwrap().is_empty(),
        "nothing was added"
    );

    // Another host's key under this address: a changed key.
    let forged = other.known_hosts_line().replace(&other.addr, &one.addr);
    std::fs::write(&c.known_hosts, forged).unwrap();
    let out = h.run(&["node", "check", "n1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("does not match the one in"),
        "{}",
        text(&out)
    );

    let out = h.run(&["node", "install", "n1"]);
    assert!(!out.status.success());
    assert!(
        !node_binary(&h, "n1").exists(),
        "nothing was copied to an unverified host"
    );
}

/// The events of `kind` in the project's log (`logs --json`).
fn events(h: &Harness, project: &str, kind: &str) -> Vec<Value> {
    let out = h.run(&["logs", project, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["kind"] == kind)
        .collect()
}

/// The processes in a host's network namespace other than its sshd
/// listener: what a run left behind there.
fn leftovers(host: &TestHost) -> Vec<String> {
    let listener = std::fs::read_to_string(host.dir.path().join("sshd.pid")).unwrap_or_default();
    let out = Command::new("ip")
        .args(["netns", "pids", &host.ns])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|p| *p != listener.trim())
        .map(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            format!("{p}: {}", String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .filter(|l| !l.ends_with(": "))
        .collect()
}

/// Two hosts with this binary installed, in a config with `local` at
/// `local_slots`.
fn two_nodes(h: &Harness) -> (Client, TestHost, TestHost) {
    let c = client(h);
    let (one, two) = (TestHost::start(&pub_key(&c)), TestHost::start(&pub_key(&c)));
    std::fs::write(
        &c.known_hosts,
        one.known_hosts_line() + &two.known_hosts_line(),
    )
    .unwrap();
    write_config(h, &c, &[("n1", &one), ("n2", &two)]);
    for name in ["n1", "n2"] {
        let out = h.run(&["node", "install", name]);
        assert!(out.status.success(), "{}", text(&out));
    }
    close_masters(h, &[&one, &two]);
    (c, one, two)
}

/// Ends the master connections `node` commands leave for 60 s.
fn close_masters(h: &Harness, hosts: &[&TestHost]) {
    let ssh_dir = h.data_dir().join("ssh");
    for host in hosts {
        let _ = Command::new("ssh")
            .args(["-O", "exit", "-o"])
            .arg(format!("ControlPath={}/%C", ssh_dir.display()))
            .arg(format!("root@{}", host.addr))
            .output();
    }
}

fn wide_plan(name: &str, n: usize) -> (Value, serde_json::Map<String, Value>) {
    let ids: Vec<String> = (0..n).map(|i| format!("t{i:02}")).collect();
    let tasks: Vec<(&str, &[&str])> = ids.iter().map(|i| (i.as_str(), &[][..])).collect();
    let p = plan(
        name,
        &tasks,
        &[&format!("ls t*.txt | wc -l | grep -qx {n}")],
    );
    let mut scripts = serde_json::Map::new();
    for id in &ids {
        scripts.insert(
            id.clone(),
            json!({"turns": [write_turn(&format!("{id}.txt"), &format!("made by {id}\n")), finish_turn(&format!("wrote {id}.txt"))]}),
        );
    }
    (p, scripts)
}

/// A 30-task plan across `local` and two SSH nodes: every node runs tasks,
/// each task is merged once, the delivery holds every file, and no process
/// is left on any host.
#[test]
fn a_plan_runs_across_local_and_two_nodes() {
    let (p, scripts) = wide_plan("spread", 30);
    let h = Harness::new(json!({"latency_ms": 100, "tasks": scripts}));
    let (_c, one, two) = two_nodes(&h);

    let (out, report) = h.run_plan(&p, &["--max-workers", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(report["status"], "done", "{report}");
    assert_eq!(report["tasks_done"], 31);
    let project = report["project_id"].as_str().unwrap();

    // Where each attempt ran.
    let placed = events(&h, project, "placed");
    let mut per_node: std::collections::BTreeMap<String, usize> = Default::default();
    for e in &placed {
        *per_node
            .entry(e["data"]["node"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    eprintln!("attempts per node: {per_node:?}");
    eprintln!("{}", text(&h.run(&["logs", project])));
    for node in ["local", "n1", "n2"] {
        assert!(
            per_node.get(node).copied().unwrap_or(0) > 0,
            "node {node} ran no task: {per_node:?}"
        );
    }
    let counts = trailer_counts(&h.repo(project));
    for i in 0..30 {
        assert_eq!(
            counts.get(format!("t{i:02}").as_str()),
            Some(&1),
            "{counts:?}"
        );
    }
    let delivery = PathBuf::from(report["delivery"].as_str().unwrap());
    let files = check_delivery(&delivery, "spread");
    for i in 0..30 {
        assert_eq!(
            files.get(&format!("t{i:02}.txt")).map(Vec::as_slice),
            Some(format!("made by t{i:02}\n").as_bytes())
        );
    }
    // Every task has its archive, also those done on a node.
    for i in 0..30 {
        let a = h
            .outputs_dir()
            .join(project)
            .join("tasks")
            .join(format!("t{i:02}.tar.gz"));
        assert!(a.exists(), "{} is missing", a.display());
    }
    // No key reached a node: the model calls came back over the channel.
    for host in [&one, &two] {
        assert!(
            leftovers(host).is_empty(),
            "left on {}: {:?}",
            host.addr,
            leftovers(host)
        );
    }
}

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
             StrictModes no\nUsePAM no\nLogLevel ERROR\nClientAliveInterval 2\nClientAliveCountMax 3\n",
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
    let (mut p, scripts) = wide_plan("spread", 30);
    // t00 needs what only the nodes offer (`local` has no labels).
    p["tasks"][0]["requires"] = json!(["rust"]);
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
    for e in placed.iter().filter(|e| e["task_id"] == "t00") {
        assert_ne!(e["data"]["node"], "local", "t00 requires rust: {e}");
    }
    // A node's attempts say what confined them there.
    let remote = placed.iter().find(|e| e["data"]["node"] == "n1").unwrap();
    assert!(remote["data"]["sandbox"].as_str().is_some(), "{remote}");
    assert!(
        remote["data"]["memory_limiter"].as_str().is_some(),
        "{remote}"
    );
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
    // Each node removed its attempts' worktrees (its cache repository stays).
    for name in ["n1", "n2"] {
        let work = node_binary(&h, name)
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("work");
        let worktrees = work.join(project).join("worktrees");
        let left: Vec<_> = std::fs::read_dir(&worktrees)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{name} kept worktrees: {left:?}");
        assert!(work.join(project).join("repo/.git").is_dir());
    }
    // Nothing stays on the hosts (a probe the run's end caught on its way
    // finishes by itself within a moment).
    for host in [&one, &two] {
        assert!(
            swarm_testkit::wait_for(Duration::from_secs(10), || leftovers(host).is_empty()),
            "left on {}: {:?}",
            host.addr,
            leftovers(host)
        );
    }
}

/// `agentswarm serve` of a harness, until dropped.
struct Daemon {
    child: std::process::Child,
    base: String,
}

impl Daemon {
    fn start(h: &Harness, env: &[(&str, &str)]) -> Daemon {
        let _ = std::fs::remove_file(h.data_dir().join("serve.json"));
        let mut c = h.cmd(&["serve"]);
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(h.home.path().join("serve.log")).unwrap())
            .spawn()
            .unwrap();
        let mut base = String::new();
        let ready = swarm_testkit::wait_for(Duration::from_secs(30), || match ready_daemon(h) {
            Some(url) => {
                base = url;
                true
            }
            None => false,
        });
        assert!(ready, "serve did not become ready");
        Daemon { child, base }
    }

    /// `GET /api/v1/status`'s node `name`.
    fn node(&self, name: &str) -> Value {
        let addr = self.base.strip_prefix("http://").unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        use std::io::{Read, Write};
        write!(
            s,
            "GET /api/v1/status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        let json = &body[body.find("\r\n\r\n").unwrap() + 4..];
        let v: Value = serde_json::from_str(json.trim())
            .or_else(|_| {
                // Chunked: the object is between the first `{` and the last `}`.
                serde_json::from_str(&json[json.find('{').unwrap()..=json.rfind('}').unwrap()])
            })
            .unwrap();
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn submit(h: &Harness, plan: &Value, file: &str) -> String {
    let path = h.home.path().join(file);
    std::fs::write(&path, plan.to_string()).unwrap();
    let out = h.run(&["submit", "--json", "--plan", path.to_str().unwrap(), "goal"]);
    assert!(out.status.success(), "{}", text(&out));
    last_json_line(&out)["project_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The first task placed on `node` in the project, waiting up to 60 s.
fn placed_on(h: &Harness, project: &str, node: &str) -> String {
    let mut found = None;
    let ok = swarm_testkit::wait_for(Duration::from_secs(60), || {
        found = events(h, project, "placed")
            .into_iter()
            .find(|e| e["data"]["node"] == node)
            .map(|e| e["task_id"].as_str().unwrap_or_default().to_owned());
        found.is_some()
    });
    assert!(ok, "no task of {project} was placed on {node}");
    found.unwrap()
}

fn wait_done(h: &Harness, project: &str, secs: u64) -> Value {
    let mut last = Value::Null;
    let ok = swarm_testkit::wait_for(Duration::from_secs(secs), || {
        last = h.status_json(project);
        last["project"]["state"] == "done" || last["state"] == "done"
    });
    assert!(ok, "{project} did not finish: {last}");
    last
}

/// A node's link cut mid-attempt: the attempt is recorded `interrupted`
/// (not counted) and runs again elsewhere; the node is shown down, and
/// used again once its link is back. SIGTERM of the supervisor while
/// attempts run on the nodes leaves no process on any host.
#[test]
fn a_lost_node_s_attempts_run_elsewhere_and_the_node_comes_back() {
    let (p, scripts) = wide_plan("cut", 6);
    let h = Harness::new(json!({"latency_ms": 1500, "tasks": scripts}));
    let (_c, one, two) = two_nodes(&h);
    let d = Daemon::start(&h, &[("MAX_CONCURRENT_WORKERS", "1")]);

    let project = submit(&h, &p, "cut.json");
    let victim = placed_on(&h, &project, "n1");
    sh("ip", &["link", "set", &one.link, "down"]);
    let cut = Instant::now();
    let status = wait_done(&h, &project, 120);
    let attempts = attempts_of(&status, &victim);
    assert_eq!(attempts[0].0, "interrupted", "{attempts:?}");
    assert!(attempts[0].1.contains("node n1"), "{attempts:?}");
    assert!(attempts.len() >= 2, "{attempts:?}");
    let counts = trailer_counts(&h.repo(&project));
    for i in 0..6 {
        assert_eq!(
            counts.get(format!("t{i:02}").as_str()),
            Some(&1),
            "{counts:?}"
        );
    }
    let n1 = d.node("n1");
    assert_eq!(n1["state"], "down", "{n1}");
    eprintln!(
        "the cut node's task was done elsewhere {:.1} s after the cut",
        cut.elapsed().as_secs_f64()
    );

    // The link comes back: so does the node, and it gets work again.
    sh("ip", &["link", "set", &one.link, "up"]);
    assert!(
        swarm_testkit::wait_for(Duration::from_secs(40), || d.node("n1")["state"] == "up"),
        "n1 did not come back: {}",
        d.node("n1")
    );
    let (p2, _) = wide_plan("back", 6);
    let again = submit(&h, &p2, "back.json");
    placed_on(&h, &again, "n1");
    placed_on(&h, &again, "n2");

    // SIGTERM while attempts run there: nothing is left on any host.
    let mut d = d;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = d.child.wait();
    let clean = swarm_testkit::wait_for(Duration::from_secs(20), || {
        leftovers(&one).is_empty() && leftovers(&two).is_empty()
    });
    assert!(
        clean,
        "left on the hosts: {:?} {:?}",
        leftovers(&one),
        leftovers(&two)
    );
}

/// A remote worker killed with SIGKILL: the attempt is `crashed` (counted)
/// and the task runs again. A node with another version of agentswarm is
/// refused (it gets no task) until `node install`.
#[test]
fn a_killed_remote_worker_is_retried_and_an_old_node_is_refused() {
    let (p, scripts) = wide_plan("kill", 4);
    let h = Harness::new(json!({"latency_ms": 2000, "tasks": scripts}));
    let (_c, one, two) = two_nodes(&h);
    // n1 now answers as an older version.
    std::fs::write(
        node_binary(&h, "n1"),
        "#!/bin/sh\necho '{\"version\":\"0.0.1\",\"hostname\":\"old\",\"cpus\":1,\"sandbox\":\"off\",\"sandbox_gaps\":[],\"memory_limiter\":\"none\",\"free_memory_mb\":null,\"load_1m\":null}'\n",
    )
    .unwrap();

    let (mut run, _stdout, project) = h.spawn_run(&[
        "run",
        "--plan",
        &write_plan(&h, &p),
        "--max-workers",
        "1",
        "goal",
    ]);
    placed_on(&h, &project, "n2");
    // A worker process on n2 (below `node worker`), killed while it runs.
    let killed = swarm_testkit::wait_for(Duration::from_secs(30), || {
        leftovers(&two)
            .into_iter()
            .filter(|l| l.ends_with("agentswarm worker "))
            .filter_map(|l| l.split(':').next().map(str::to_owned))
            .any(|pid| {
                Command::new("kill")
                    .args(["-9", &pid])
                    .status()
                    .is_ok_and(|s| s.success())
            })
    });
    assert!(killed, "no worker ran on n2: {:?}", leftovers(&two));
    assert!(run.wait().unwrap().success());
    let status = h.status_json(&project);
    let crashed: Vec<_> = status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| attempts_of(&status, t["id"].as_str().unwrap())[0].0 == "crashed")
        .collect();
    assert_eq!(crashed.len(), 1, "{status}");
    assert_eq!(crashed[0]["attempts_counted"], 1, "a crash is counted");
    assert!(
        attempts_of(&status, crashed[0]["id"].as_str().unwrap())[0]
            .1
            .contains("signal 9"),
        "{status}"
    );
    assert!(
        events(&h, &project, "placed")
            .iter()
            .all(|e| e["data"]["node"] != "n1"),
        "the old node got a task"
    );
    let counts = trailer_counts(&h.repo(&project));
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");

    // Installed, it is used.
    let out = h.run(&["node", "install", "n1"]);
    assert!(out.status.success(), "{}", text(&out));
    close_masters(&h, &[&one, &two]);
    let (out, report) = h.run_plan(&wide_plan("kill2", 4).0, &["--max-workers", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let again = report["project_id"].as_str().unwrap();
    assert!(
        events(&h, again, "placed")
            .iter()
            .any(|e| e["data"]["node"] == "n1"),
        "n1 got no task after its install"
    );
}

fn write_plan(h: &Harness, plan: &Value) -> String {
    let path = h
        .home
        .path()
        .join(format!("plan-{}.json", fastrand::u32(..)));
    std::fs::write(&path, plan.to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A task that requires a label no node carries would wait for ever: the
/// run pauses before any task starts, and says what to add.
#[test]
fn a_task_that_requires_a_label_no_node_has_is_refused_before_it_starts() {
    let (mut p, scripts) = wide_plan("labels", 2);
    p["tasks"][1]["requires"] = json!(["gpu"]);
    let h = Harness::new(json!({"tasks": scripts}));
    std::fs::write(
        h.home.path().join("agentswarm.toml"),
        "[nodes.local]\nlabels = [\"rust\"]\n",
    )
    .unwrap();
    let (out, report) = h.run_plan(&p, &[]);
    assert_eq!(report["status"], "paused", "{}", text(&out));
    let project = report["project_id"].as_str().unwrap();
    let status = h.status_json(project);
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("task t01 requires a node labelled gpu")
            && error.contains("[nodes.local] labels"),
        "{status}"
    );
    assert!(h.server.requests().is_empty(), "no model call was made");

    // `[nodes.local]` takes only labels.
    std::fs::write(
        h.home.path().join("agentswarm.toml"),
        "[nodes.local]\nmax_workers = 3\n",
    )
    .unwrap();
    let out = h.run(&["doctor"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("it takes only `labels`, not `max_workers`"),
        "{}",
        text(&out)
    );
}

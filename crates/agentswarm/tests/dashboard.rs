//! End-to-end: the web dashboard of `agentswarm serve`, driven in headless
//! Chromium over WebDriver (chromedriver) the way a user drives it — submit a
//! goal in the form, watch the graph finish live, read a transcript and the
//! command output, check verify, download the delivery — then again on a
//! phone-sized window.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`apt-get install chromium
//! chromium-driver`, as .ci/run does); without them the test fails and says so.
//!
//! With `AGENTSWARM_SCREENSHOT_DIR` set (relative to the workspace root, e.g.
//! `AGENTSWARM_SCREENSHOT_DIR=docs`), the screenshots `dashboard.png` (the
//! finished graph at desktop size) and `dashboard-phone.png` are written there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

// ------------------------------------------------------------------ scenario

/// A small Python package in five tasks that fan out and join, and a verify
/// that runs its unit test and its command line.
fn wordcount_plan() -> Value {
    json!({
        "name": "wordcount",
        "summary": "Count the words of stdin.",
        "tasks": [
            {"id": "scaffold", "title": "Package skeleton", "description": "Create the wordcount package.", "depends_on": []},
            {"id": "counter", "title": "Word counter", "description": "count_words(text) -> Counter.", "depends_on": ["scaffold"]},
            {"id": "report", "title": "Report format", "description": "format_counts(counts) -> text, most frequent first.", "depends_on": ["scaffold"]},
            {"id": "cli", "title": "Command line", "description": "python3 -m wordcount reads stdin and prints the report.", "depends_on": ["counter", "report"]},
            {"id": "tests", "title": "Unit tests", "description": "Test count_words.", "depends_on": ["counter"]},
            {"id": "verify", "title": "Run the tests", "kind": "verify", "depends_on": ["cli", "tests"],
             "commands": [
                 "python3 -m unittest discover -s tests -v",
                 "echo 'a b b' | python3 -m wordcount | head -n 1 | grep -qx 'b 2'"
             ]}
        ]
    })
}

const COUNTER_PY: &str = "import re\nfrom collections import Counter\n\n\ndef count_words(text):\n    return Counter(re.findall(r\"[a-z']+\", text.lower()))\n";

fn scenario() -> Value {
    let task = |turns: Vec<Value>| json!({ "turns": turns });
    json!({
        "latency_ms": 150,
        "planner": [wordcount_plan()],
        "tasks": {
            "scaffold": task(vec![
                write_turn("wordcount/__init__.py", "\"\"\"Word counts.\"\"\"\n"),
                finish_turn("package skeleton"),
            ]),
            "counter": task(vec![
                write_turn("wordcount/counter.py", COUNTER_PY),
                finish_turn("count_words"),
            ]),
            "report": task(vec![
                write_turn("wordcount/report.py", "def format_counts(counts):\n    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))\n    return \"\\n\".join(f\"{w} {n}\" for w, n in items)\n"),
                finish_turn("format_counts"),
            ]),
            "cli": task(vec![
                write_turn("wordcount/__main__.py", "import sys\n\nfrom .counter import count_words\nfrom .report import format_counts\n\nprint(format_counts(count_words(sys.stdin.read())))\n"),
                run_turn("echo 'one two two' | python3 -m wordcount"),
                finish_turn("the command line works"),
            ]),
            "tests": task(vec![
                write_turn("tests/test_counter.py", "import unittest\n\nfrom wordcount.counter import count_words\n\n\nclass CountWords(unittest.TestCase):\n    def test_counts(self):\n        self.assertEqual(count_words(\"a b B\")[\"b\"], 2)\n\n\nif __name__ == \"__main__\":\n    unittest.main()\n"),
                finish_turn("unit test"),
            ]),
        }
    })
}

// ---------------------------------------------------------------- processes

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `GET path` over plain HTTP/1.1; the status code, or None if it cannot connect.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).ok()?;
    let line = String::from_utf8_lossy(&head[..n]).into_owned();
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A child process that is stopped (SIGTERM, then SIGKILL of its group) when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, killpg, Signal};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever is left of its process group (chromedriver's browser).
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_logged(mut cmd: Command, name: &'static str, log: PathBuf) -> Proc {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(&log).unwrap();
    let err = out.try_clone().unwrap();
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Proc { child, log }
}

/// `agentswarm serve` on a free loopback port, ready (healthz 200).
fn start_serve(h: &Harness, env: &[(&str, &str)]) -> (Proc, SocketAddr) {
    let mut cmd = h.cmd(&["serve", "--bind", "127.0.0.1:0"]);
    cmd.env("MAX_CONCURRENT_WORKERS", "3");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let serve = spawn_logged(cmd, "agentswarm serve", h.home.path().join("serve.log"));
    let mut base = String::new();
    let ready = swarm_testkit::wait_for(Duration::from_secs(60), || match ready_daemon(h) {
        Some(url) => {
            base = url;
            true
        }
        None => false,
    });
    assert!(
        ready,
        "serve did not answer /healthz 200 within 60 s; log:\n{}",
        serve.log()
    );
    let addr = base.trim_start_matches("http://").parse().unwrap();
    (serve, addr)
}

fn browser_binaries() {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard test drives headless Chromium and needs {missing:?}; install them \
         with `apt-get install chromium chromium-driver` (as .ci/run does)"
    );
}

fn start_chromedriver(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = Command::new(CHROMEDRIVER);
    cmd.arg(format!("--port={port}"))
        .arg(format!(
            "--log-path={}",
            dir.join("chromedriver-verbose.log").display()
        ))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir);
    let driver = spawn_logged(cmd, "chromedriver", dir.join("chromedriver.log"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let up = swarm_testkit::wait_for(Duration::from_secs(30), || {
        http_status(addr, "/status") == Some(200)
    });
    assert!(
        up,
        "chromedriver did not start on port {port}; log:\n{}",
        driver.log()
    );
    (driver, port)
}

async fn browser(port: u16, dir: &Path, downloads: &Path) -> Client {
    let profile = dir.join("chrome-profile");
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ],
            "prefs": {
                "download.default_directory": downloads.to_str().unwrap(),
                "download.prompt_for_download": false,
            },
        },
    });
    let caps = caps.as_object().unwrap().clone();
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session through chromedriver")
}

/// The daemon, chromedriver and one browser session, in one temp home.
/// Dropped in field order: the session, chromedriver (with its browser),
/// the daemon, and last the home.
struct Rig {
    client: Client,
    _driver: Proc,
    serve: Proc,
    addr: SocketAddr,
    downloads: PathBuf,
    h: Harness,
}

impl Rig {
    async fn start(serve_env: &[(&str, &str)]) -> Rig {
        browser_binaries();
        let h = Harness::new(scenario());
        // The form sends a cost budget, which needs the model's price.
        std::fs::write(
            h.home.path().join("agentswarm.toml"),
            "[prices.\"scripted-test-model\"]\ninput_per_mtok = 0.4\noutput_per_mtok = 1.6\n",
        )
        .unwrap();
        let (serve, addr) = start_serve(&h, serve_env);
        let browser_dir = h.home.path().join("browser");
        let downloads = h.home.path().join("downloads");
        std::fs::create_dir_all(&browser_dir).unwrap();
        std::fs::create_dir_all(&downloads).unwrap();
        let (driver, port) = start_chromedriver(&browser_dir);
        let client = browser(port, &browser_dir, &downloads).await;
        Rig {
            client,
            _driver: driver,
            serve,
            addr,
            downloads,
            h,
        }
    }

    fn page(&self) -> Page<'_> {
        Page {
            client: &self.client,
            serve: &self.serve,
        }
    }

    fn base(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Submits `goal` in the form; waits until the page, without a reload,
    /// shows every task and the project done. Returns the project id.
    async fn submit_and_finish(&self, goal: &str) -> String {
        let page = self.page();
        page.type_into("#goal", goal).await;
        page.click("#submit-btn").await;
        let hash = page
            .wait(
                "the project view after submitting",
                30,
                "location.hash.startsWith('#/projects/') && location.hash",
            )
            .await;
        let project = hash
            .as_str()
            .unwrap()
            .trim_start_matches("#/projects/")
            .to_owned();
        // The view fills in from the project's first answer, a moment after
        // the address changes.
        let shown = serde_json::to_string(goal).unwrap();
        page.wait(
            "the project view shows the goal",
            30,
            &format!("(document.querySelector('#project-goal') || {{}}).textContent === {shown}"),
        )
        .await;
        assert_eq!(page.text("#project-goal").await, goal);
        // The project view does not poll: only its event stream refreshes it.
        page.wait(
            "every task done and the project done",
            120,
            "document.querySelectorAll('.task-node').length === 6 \
             && [...document.querySelectorAll('.task-node')].every(n => n.dataset.state === 'done') \
             && document.querySelector('#project-state').dataset.state === 'done' \
             && !document.querySelector('#download-btn').hidden",
        )
        .await;
        page.wait(
            "the event stream connected",
            10,
            "document.querySelector('.live-dot').dataset.live === 'live'",
        )
        .await;
        project
    }

    /// Clicks the download button; checks the file saved is the delivery.
    async fn download_delivery(&self, project: &str) {
        self.page().click("#download-btn").await;
        let file = wait_download(&self.downloads, &format!("{project}-delivery.tar.gz"));
        let files = read_archive(&file);
        assert!(
            files.contains_key("manifest.json") && files.contains_key("manifest.txt"),
            "the download is the delivery: {:?}",
            files.keys()
        );
        assert!(
            files.keys().any(|k| k.ends_with("wordcount/counter.py")),
            "{:?}",
            files.keys()
        );
        let delivered = std::fs::read_dir(self.h.outputs_dir().join(project))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with("-delivery.tar.gz"))
            .expect("the delivery in OUTPUTS_DIR");
        assert_eq!(
            std::fs::read(&file).unwrap(),
            std::fs::read(&delivered).unwrap(),
            "the download is byte for byte the delivery"
        );
    }
}

// ------------------------------------------------------------------ the page

struct Page<'a> {
    client: &'a Client,
    serve: &'a Proc,
}

impl Page<'_> {
    async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed ({e}): {script}"))
    }

    /// Polls `expr` (a JavaScript expression) until it is truthy.
    async fn wait(&self, what: &str, secs: u64, expr: &str) -> Value {
        let script = format!("return ({expr});");
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.js(&script).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("{what}: not within {secs} s (`{expr}`)"))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text(&self, css: &str) -> String {
        let sel = serde_json::to_string(css).unwrap();
        self.js(&format!(
            "const e = document.querySelector({sel}); return e ? e.textContent : null;"
        ))
        .await
        .as_str()
        .unwrap_or_else(|| panic!("no element {css}"))
        .to_owned()
    }

    /// A real click (WebDriver), after scrolling the element to the middle of
    /// the window, clear of the sticky top bar.
    async fn click(&self, css: &str) {
        let sel = serde_json::to_string(css).unwrap();
        self.js(&format!(
            "document.querySelector({sel}).scrollIntoView({{block: 'center'}});"
        ))
        .await;
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"));
        el.click()
            .await
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.client.find(Locator::Css(css)).await.unwrap();
        el.send_keys(text).await.unwrap();
    }

    async fn screenshot(&self) -> Vec<u8> {
        let png = self.client.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        png
    }

    async fn no_horizontal_overflow(&self, what: &str) {
        let v = self
            .js("const d = document.documentElement; return [d.scrollWidth, d.clientWidth, window.innerWidth];")
            .await;
        let (scroll, client) = (v[0].as_u64().unwrap(), v[1].as_u64().unwrap());
        assert!(
            scroll <= client,
            "{what}: the page scrolls sideways on a phone (scrollWidth {scroll} > clientWidth {client}; innerWidth {})",
            v[2]
        );
    }

    async fn fail(&self, msg: &str) -> ! {
        let body = self
            .client
            .execute("return document.body.innerText;", vec![])
            .await
            .unwrap_or(Value::Null);
        panic!(
            "{msg}\n--- page text ---\n{}\n--- serve log ---\n{}",
            body.as_str().unwrap_or("?"),
            self.serve.log()
        );
    }
}

fn screenshot_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("AGENTSWARM_SCREENSHOT_DIR")?;
    let dir = PathBuf::from(dir);
    // Relative to the workspace root, not to this crate (cargo's cwd for tests).
    Some(if dir.is_absolute() {
        dir
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(dir)
    })
}

fn save_screenshot(name: &str, png: &[u8]) {
    if let Some(dir) = screenshot_dir() {
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        println!("wrote {}", path.display());
    }
}

/// Waits for a finished download (no `.crdownload` left) named `name`.
fn wait_download(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let ok = swarm_testkit::wait_for(Duration::from_secs(30), || {
        path.exists()
            && std::fs::read_dir(dir)
                .map(|d| {
                    d.flatten()
                        .all(|e| !e.file_name().to_string_lossy().ends_with(".crdownload"))
                })
                .unwrap_or(false)
    });
    let listing: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        ok,
        "no finished download {name} in {} within 30 s; there: {listing:?}",
        dir.display()
    );
    path
}

// --------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_submits_a_goal_follows_it_live_and_downloads_the_delivery() {
    let rig = Rig::start(&[]).await;
    let page = rig.page();
    let client = &rig.client;
    let base = rig.base();

    // The list page, its gauges and the submit form.
    client.goto(&base).await.unwrap();
    page.wait(
        "the project list",
        30,
        "document.querySelector('#project-list[aria-busy=\"false\"]')",
    )
    .await;
    page.wait(
        "the workers gauge shows the cap",
        30,
        "(document.querySelector('#gauges [data-gauge=workers]') || {}).textContent?.includes('/ 3')",
    )
    .await;
    let goal = "Count the words of stdin, most frequent first";
    page.type_into("#max-cost-usd", "5").await;
    let project = rig.submit_and_finish(goal).await;
    let tasks: Value = page
        .js("return [...document.querySelectorAll('.task-node')].map(n => n.dataset.task).sort();")
        .await;
    assert_eq!(
        tasks,
        json!(["cli", "counter", "report", "scaffold", "tests", "verify"])
    );
    assert_eq!(page.text("#project-state").await, "done");
    let meta = page.text(".project-meta").await;
    assert!(meta.contains("budget $5.00"), "the budget was sent: {meta}");
    assert!(page.text("#project-tasks").await.starts_with("6 / 6"));
    // Every edge of the plan is drawn.
    let edges = page
        .js("return document.querySelectorAll('#graph .edge').length;")
        .await;
    assert_eq!(edges, json!(7), "edges of the graph");
    page.js("window.scrollTo(0, 0);").await;
    let png = page.screenshot().await;
    save_screenshot("dashboard.png", &png);

    // Verify: both commands passed.
    page.wait(
        "the verify section",
        30,
        "document.querySelector('#verify').dataset.passed === 'true'",
    )
    .await;
    let verify = page.text("#verify").await;
    assert!(
        verify.contains("python3 -m unittest discover -s tests -v"),
        "{verify}"
    );
    let passed = page
        .js("return [...document.querySelectorAll('#verify .verify-cmd')].map(c => c.dataset.passed);")
        .await;
    assert_eq!(passed, json!(["true", "true"]), "verify commands: {verify}");
    // Usage: the planner and the workers, with a total.
    let usage = page.text("#usage").await;
    assert!(
        usage.contains("planner") && usage.contains("worker") && usage.contains("total"),
        "{usage}"
    );

    // A task: its panel, its attempt, its transcript.
    page.click(".task-node[data-task=counter]").await;
    page.wait(
        "the task panel of counter",
        30,
        "!document.querySelector('#task-panel').hidden && document.querySelector('#task-panel').dataset.task === 'counter'",
    )
    .await;
    assert!(page.text("#task-panel").await.contains("Word counter"));
    assert!(page
        .js("return location.hash;")
        .await
        .as_str()
        .unwrap()
        .ends_with("/tasks/counter"));
    page.click("#task-panel tr.attempt[data-attempt='1'] .transcript-btn")
        .await;
    page.wait(
        "the transcript of counter",
        30,
        "document.querySelector('#transcript .msg[data-role=assistant]')",
    )
    .await;
    let call = page
        .text("#transcript .tool-call[data-tool=write_file]")
        .await;
    assert!(
        call.contains("wordcount/counter.py") && call.contains("def count_words(text):"),
        "the transcript shows the model's write_file call: {call}"
    );
    let roles = page
        .js("return [...document.querySelectorAll('#transcript .msg')].map(m => m.dataset.role);")
        .await;
    assert_eq!(
        roles.as_array().unwrap()[..2],
        [json!("system"), json!("user")],
        "transcript roles: {roles}"
    );
    assert!(
        roles.as_array().unwrap().contains(&json!("tool")),
        "the tool results are shown: {roles}"
    );

    // Another task's command output (its run_command).
    page.click(".task-node[data-task=cli]").await;
    page.wait(
        "the task panel of cli",
        30,
        "document.querySelector('#task-panel').dataset.task === 'cli'",
    )
    .await;
    page.click("#task-panel tr.attempt[data-attempt='1'] .output-btn")
        .await;
    page.wait(
        "the command output of cli",
        30,
        "document.querySelector('#command-output .command, #command-output .form-error')",
    )
    .await;
    let output = page.text("#command-output").await;
    assert!(
        output.contains("python3 -m wordcount") && output.contains("two 2"),
        "the command output of cli: {output}"
    );

    // The delivery, downloaded through the page (fetch + blob).
    rig.download_delivery(&project).await;

    // A phone: the project view stacks, the graph scrolls inside its box and
    // the page itself never scrolls sideways.
    client.set_window_size(390, 844).await.unwrap();
    page.wait("the narrow window", 10, "window.innerWidth <= 400")
        .await;
    client.goto(&base).await.unwrap();
    client
        .goto(&format!("{base}#/projects/{project}"))
        .await
        .unwrap();
    page.wait(
        "the project view on a phone",
        30,
        "document.querySelectorAll('.task-node[data-state=done]').length === 6",
    )
    .await;
    page.no_horizontal_overflow("project view").await;
    let graph = page
        .js("const g = document.querySelector('#graph'); return [g.scrollWidth, g.clientWidth];")
        .await;
    assert!(
        graph[0].as_u64() > graph[1].as_u64(),
        "the graph scrolls inside its box: {graph}"
    );
    // ...and says so while part of it is cut off, not once scrolled to the end.
    page.wait(
        "the graph's scroll hint",
        10,
        "!document.querySelector('#graph-hint').hidden",
    )
    .await;
    page.js("const g = document.querySelector('#graph'); g.scrollLeft = g.scrollWidth; g.dispatchEvent(new Event('scroll'));")
        .await;
    page.wait(
        "the hint gone at the graph's end",
        10,
        "document.querySelector('#graph-hint').hidden",
    )
    .await;
    page.js("document.querySelector('#graph').scrollLeft = 0;")
        .await;
    // A finished project: no live indicator, a whole delivery.
    assert_eq!(
        page.js("return [document.querySelector('.project-head .live').hidden, document.querySelector('#download-btn').textContent];")
            .await,
        json!([true, "Download delivery"])
    );
    page.js("window.scrollTo(0, 0);").await;
    let png = page.screenshot().await;
    save_screenshot("dashboard-phone.png", &png);

    page.click(".task-node[data-task=cli]").await;
    page.wait(
        "the task panel on a phone",
        30,
        "!document.querySelector('#task-panel').hidden",
    )
    .await;
    page.click("#task-panel tr.attempt[data-attempt='1'] .transcript-btn")
        .await;
    page.wait(
        "the transcript on a phone",
        30,
        "document.querySelector('#transcript .tool-call')",
    )
    .await;
    page.no_horizontal_overflow("task panel with a transcript")
        .await;

    // The list page shows the project, done.
    page.click(".crumbs a").await;
    let sel = format!(".project-row[data-project='{project}']");
    page.wait(
        "the project in the list",
        30,
        &format!("document.querySelector(\"{sel}\")?.dataset.state === 'done'"),
    )
    .await;
    assert!(page.text(&sel).await.contains(goal));
    page.no_horizontal_overflow("project list").await;

    rig.client.clone().close().await.unwrap();
}

/// A daemon with an API token: the page asks for it, keeps it in session
/// storage (no cookie) and sends it on every request — the API, the event
/// stream (which is why the page does not use EventSource) and the download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_asks_for_the_api_token_and_sends_it_everywhere() {
    let token = "dashboard-test-token-0123456789";
    let rig = Rig::start(&[("AGENTSWARM_API_TOKEN", token)]).await;
    let page = rig.page();
    rig.client.goto(&rig.base()).await.unwrap();
    page.wait(
        "the token form",
        30,
        "!document.querySelector('#auth').hidden && document.querySelector('#view').hidden",
    )
    .await;
    page.type_into("#token", "wrong-token").await;
    page.click("#auth-form button[type=submit]").await;
    page.wait(
        "the token form again after a wrong token",
        30,
        "!document.querySelector('#auth').hidden && document.querySelector('#token').value === ''",
    )
    .await;
    // ...which says why it came back.
    assert!(
        page.text("#auth-error").await.contains("refused"),
        "no word on the refused token"
    );
    page.type_into("#token", token).await;
    page.click("#auth-form button[type=submit]").await;
    page.wait(
        "the project list with the token",
        30,
        "document.querySelector('#auth').hidden \
         && document.querySelector('#project-list[aria-busy=\"false\"]') \
         && document.querySelector('#gauges [data-gauge=workers]')",
    )
    .await;
    assert_eq!(
        page.js("return [sessionStorage.getItem('agentswarm.token'), document.cookie];")
            .await,
        json!([token, ""])
    );
    let project = rig.submit_and_finish("Count words, behind a token").await;
    rig.download_delivery(&project).await;
    rig.client.clone().close().await.unwrap();
}

/// Review before merge on the dashboard: a task waiting in review shows its
/// diff rendered per file with Approve and Reject buttons; a rejection
/// without a comment is refused on the page, one with a comment starts
/// attempt 2 whose prompt carries it, and Approve merges it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_a_task_in_review_with_its_diff_and_decides_it() {
    let rig = Rig::start(&[]).await;
    let page = rig.page();
    let base = rig.base();
    let body = json!({"goal": "Count words, reviewed", "plan": wordcount_plan(), "options": {"review": "tasks"}});
    let resp = reqwest::Client::new()
        .post(format!("{base}api/v1/projects"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let project = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    rig.client
        .goto(&format!("{base}#/projects/{project}/tasks/scaffold"))
        .await
        .unwrap();
    page.wait(
        "scaffold waits for review with its diff",
        90,
        "document.querySelector('#review .file-diff[data-path=\"wordcount/__init__.py\"] pre.diff .add')",
    )
    .await;
    assert_eq!(
        page.js("return document.querySelector('.task-node[data-task=scaffold]').dataset.state;")
            .await,
        json!("review")
    );
    let added = page
        .js("return [...document.querySelectorAll('#review pre.diff .add')].map(e => e.textContent);")
        .await;
    assert!(
        added.to_string().contains("Word counts."),
        "the added lines are shown: {added}"
    );
    assert!(page
        .text("#review")
        .await
        .contains(&format!("agentswarm review {project} scaffold")));
    assert_eq!(page.text("#project-review").await, "review: tasks");

    // No comment: refused on the page, nothing sent.
    page.click("#reject-btn").await;
    page.wait(
        "the page asks for a comment",
        10,
        "!document.querySelector('#project-view .form-error').hidden",
    )
    .await;
    page.type_into(
        "#review-comment",
        "Say what the package does in the docstring",
    )
    .await;
    page.click("#reject-btn").await;
    page.wait(
        "attempt 2 waits for review",
        90,
        "document.querySelector('#review[data-attempt=\"2\"] .file-diff')",
    )
    .await;
    let prompt = rig
        .h
        .server
        .requests()
        .into_iter()
        .find(|r| {
            r.task.as_deref() == Some("scaffold") && r.attempt == Some(2) && r.turn == Some(0)
        })
        .expect("attempt 2 asked the model");
    assert!(prompt
        .body
        .to_string()
        .contains("Say what the package does in the docstring"));
    let outcomes = page
        .js("return [...document.querySelectorAll('#task-panel tr.attempt')].map(r => r.dataset.outcome);")
        .await;
    assert_eq!(outcomes, json!(["rejected", "review"]));

    page.click("#approve-btn").await;
    page.wait(
        "scaffold merged after the approval",
        60,
        "document.querySelector('.task-node[data-task=scaffold]').dataset.state === 'done'",
    )
    .await;
    page.wait(
        "the review section is gone once it merged",
        10,
        "!document.querySelector('#review')",
    )
    .await;
}

/// A project on an existing repository with `review: "delivery"`: the head
/// of the project view names the repository, base and branch, and once the
/// run is done shows the whole change with Approve; approving writes the
/// branch into the repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_a_held_delivery_and_approves_it() {
    let rig = Rig::start(&[]).await;
    let page = rig.page();
    let base = rig.base();
    let repo = rig.h.home.path().join("src-repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("README.md"), "# words\n").unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(
        &repo,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-qm",
            "start",
        ],
    );
    let body = json!({"goal": "Count words, delivery reviewed", "plan": wordcount_plan(),
                      "repo": repo, "options": {"review": "delivery"}});
    let resp = reqwest::Client::new()
        .post(format!("{base}api/v1/projects"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let project = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    rig.client
        .goto(&format!("{base}#/projects/{project}"))
        .await
        .unwrap();
    let branch = format!("agentswarm/{project}");
    page.wait(
        "the held delivery with its change",
        120,
        "!document.querySelector('#delivery-review').hidden \
         && document.querySelector('#delivery-review .file-diff[data-path=\"wordcount/counter.py\"]')",
    )
    .await;
    let source = page.text("#project-source").await;
    assert!(
        source.contains(&repo.display().to_string()) && source.contains("at main"),
        "{source}"
    );
    assert!(source.contains("waits for review"), "{source}");
    assert!(git(&repo, &["branch", "--list", &branch]).trim().is_empty());

    page.click("#delivery-approve-btn").await;
    page.wait(
        "the branch written",
        30,
        &format!(
            "document.querySelector('#delivery-review').hidden \
             && document.querySelector('#project-source').textContent.includes('branch {branch}')"
        ),
    )
    .await;
    assert_eq!(
        git(&repo, &["rev-parse", &branch]).trim(),
        git(&rig.h.repo(&project), &["rev-parse", "main"]).trim()
    );
}

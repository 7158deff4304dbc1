//! `agentswarm bench`: measures the orchestration against the scripted model
//! server, running the real binary as a child process exactly as a user does.
//!
//! 1. Overhead: N independent one-turn tasks with a zero-latency model; the
//!    cost per task is the span from the first task starting to the last one
//!    merged, divided by N (at cap 1 and at the cap).
//! 2. Makespan: N independent tasks of T turns with a fixed model latency L
//!    at cap K; the lower bound is ceil(N/K)·T·L.
//! 3. Memory: the peak RSS of the supervisor and of every worker process,
//!    sampled every 10 ms from /proc during the makespan run.

use crate::cli::{BenchArgs, Cli};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};
use swarm_protocol::{ProjectId, TaskState};
use swarm_store::{SqliteStore, Store};

pub async fn bench(_cli: &Cli, args: &BenchArgs) -> Result<ExitCode> {
    if args.tasks == 0 || args.workers == 0 || args.turns == 0 {
        bail!("--tasks, --workers and --turns must be positive");
    }
    let exe = match &args.exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe().context("cannot find the agentswarm executable")?,
    };
    progress("starting");
    let home = tempfile::tempdir().context("cannot make a temp dir")?;
    if let Some(files) = args.repo_files {
        if files == 0 {
            bail!("--repo-files must be positive");
        }
        println!(
            "agentswarm bench --repo-files {files} — data in {}",
            home.path().display()
        );
        let result = crate::bench_repo::repo_case(&exe, home.path(), files).await?;
        if args.json {
            println!("{result}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(nodes) = &args.nodes {
        return crate::bench_nodes::nodes_case(&exe, home.path(), nodes, args).await;
    }
    if let Some(tasks) = args.soak {
        return crate::bench_soak::soak_case(&exe, home.path(), tasks, args.workers, args.json)
            .await;
    }
    println!(
        "agentswarm bench — scripted model on loopback, data in {}",
        home.path().display()
    );

    let n = args.tasks;
    let seq = run_case(
        &exe,
        home.path(),
        "overhead-cap1",
        n.min(30),
        1,
        1,
        0,
        None,
        false,
    )
    .await?;
    let par = run_case(
        &exe,
        home.path(),
        "overhead-cap",
        n,
        args.workers,
        1,
        0,
        None,
        false,
    )
    .await?;
    let wide = run_case(
        &exe,
        home.path(),
        "makespan",
        n,
        args.workers,
        args.turns,
        args.latency_ms,
        None,
        false,
    )
    .await?;
    // API_RATE_LIMIT_RPM with the window scaled down (the limiter is the
    // same code for any window): more work waiting than the limit lets through.
    let rate = Rate {
        limit: args.rate_limit,
        window_ms: args.rate_window_ms,
    };
    let limited = run_case(
        &exe,
        home.path(),
        "rate-limit",
        12,
        args.workers,
        6,
        0,
        Some(rate),
        false,
    )
    .await?
    .rate
    .context("the rate case measures its starts")?;

    // Processes and syncs of the whole process tree (the supervisor, its
    // workers and every git they run), counted in a run of its own: tracing
    // slows the run, so it is not timed.
    // Twice, with 10 and 30 tasks: what a run costs once (creating the
    // repository and the store, verify, the delivery) and what each task
    // adds are told apart by the difference.
    let counted = if strace_available() {
        let small = run_case(&exe, home.path(), "counted-10", 10, 1, 1, 0, None, true).await?;
        let large = run_case(
            &exe,
            home.path(),
            "counted",
            n.clamp(11, 30),
            1,
            1,
            0,
            None,
            true,
        )
        .await?;
        small
            .counted
            .zip(large.counted)
            .map(|(a, b)| Counts::from_runs((small.tasks, a), (large.tasks, b)))
    } else {
        progress("strace is not installed: processes and syncs are not counted");
        None
    };

    // Whether the cost per task grows with the plan: a large plan against a
    // 10-task one, both at the cap.
    let scale = if args.scale > 0 {
        let small = run_case(
            &exe,
            home.path(),
            "scale-10",
            10,
            args.workers,
            1,
            0,
            None,
            false,
        )
        .await?;
        let large = run_case(
            &exe,
            home.path(),
            "scale-large",
            args.scale,
            args.workers,
            1,
            0,
            None,
            false,
        )
        .await?;
        Some((small, large))
    } else {
        None
    };

    let sandbox = tokio::task::spawn_blocking({
        let dir = home.path().join("sandbox");
        move || sandbox_cost(&dir)
    })
    .await
    .context("the sandbox case panicked")??;

    let waves = n.div_ceil(args.workers) as f64;
    let lower_ms = waves * args.turns as f64 * args.latency_ms as f64;
    let ratio = wide.span_ms / lower_ms;
    let result = json!({
        "overhead_cap1_ms_per_task": seq.span_ms / seq.tasks as f64,
        "overhead_ms_per_task": par.span_ms / par.tasks as f64,
        "overhead_cap": args.workers,
        "phases_ms": {
            "cap1": {"worker": seq.phases.worker_ms, "merge": seq.phases.merge_ms},
            "cap": {"worker": par.phases.worker_ms, "merge": par.phases.merge_ms},
        },
        "supervisor_processes_per_task": par.spawned_per_task,
        "processes_per_task": counted.map(|c| c.processes_per_task),
        "fsyncs_per_task": counted.map(|c| c.fsyncs_per_task),
        "counted": counted.map(|c| json!({
            "tasks": c.tasks, "cap": 1, "processes": c.large.processes, "fsyncs": c.large.fsyncs,
            "tasks_small": c.small_tasks, "processes_small": c.small.processes, "fsyncs_small": c.small.fsyncs,
            "processes_per_run": c.processes_per_run, "fsyncs_per_run": c.fsyncs_per_run,
        })),
        "makespan_ms": wide.span_ms,
        "makespan_lower_bound_ms": lower_ms,
        "makespan_ratio": ratio,
        "makespan": {"tasks": n, "cap": args.workers, "turns": args.turns, "latency_ms": args.latency_ms},
        "max_in_flight": wide.max_in_flight,
        "supervisor_peak_rss_mb": wide.supervisor_rss_kb as f64 / 1024.0,
        "worker_peak_rss_mb": wide.worker_rss_kb as f64 / 1024.0,
        "helper_peak_rss_mb": wide.helper_rss_kb as f64 / 1024.0,
        "rate_limit": {
            "limit": rate.limit, "window_ms": rate.window_ms, "requests": limited.requests,
            "max_in_window": limited.max_in_window,
            "windows_over_limit": usize::from(limited.max_in_window > rate.limit as usize),
            "utilisation": limited.utilisation,
        },
        "sandbox_ms_per_command": sandbox.iter().map(|c| (c.name.to_owned(), json!({"command_ms": c.command_ms, "prepare_ms": c.prepare_ms}))).collect::<serde_json::Map<_, _>>(),
        "scale": scale.as_ref().map(|(small, large)| {
            let (a, b) = (small.span_ms / f64::from(small.tasks), large.span_ms / f64::from(large.tasks));
            json!({"tasks": large.tasks, "cap": args.workers, "ms_per_task_10": a, "ms_per_task": b, "ratio": b / a})
        }),
        "run_wall_ms": {"overhead_cap1": seq.wall_ms, "overhead_cap": par.wall_ms, "makespan": wide.wall_ms},
    });
    println!();
    println!("orchestration per task, zero-latency model, commit+merge included:");
    println!(
        "  cap 1 ({} tasks):   {:7.2} ms/task",
        seq.tasks,
        seq.span_ms / seq.tasks as f64
    );
    println!("  cap {} ({} tasks):  {:7.2} ms/task   ({:.1} processes spawned by the supervisor per task)", args.workers, par.tasks, par.span_ms / par.tasks as f64, par.spawned_per_task);
    println!(
        "  median per task, running → merging (the worker) / merging → done (the merge queue): cap 1 {:.1} / {:.1} ms, cap {} {:.1} / {:.1} ms",
        seq.phases.worker_ms, seq.phases.merge_ms, args.workers, par.phases.worker_ms, par.phases.merge_ms
    );
    match counted {
        Some(c) => println!(
            "  whole process tree at cap 1 under strace ({} and {} tasks): {:.2} processes and {:.2} syncs per task, plus {:.1} and {:.1} per run \
             ({} processes and {} syncs in all for {} tasks)",
            c.small_tasks, c.tasks, c.processes_per_task, c.fsyncs_per_task, c.processes_per_run, c.fsyncs_per_run,
            c.large.processes, c.large.fsyncs, c.tasks
        ),
        None => println!("  whole process tree: not counted (no strace)"),
    }
    if let Some((small, large)) = &scale {
        let (a, b) = (
            small.span_ms / f64::from(small.tasks),
            large.span_ms / f64::from(large.tasks),
        );
        println!(
            "  {} tasks at cap {}: {b:7.2} ms/task vs {a:.2} ms/task for 10 tasks → ratio {:.2}",
            large.tasks,
            args.workers,
            b / a
        );
    }
    println!(
        "makespan, {n} independent tasks × {} turns × {} ms at cap {}:",
        args.turns, args.latency_ms, args.workers
    );
    println!(
        "  {:.0} ms vs lower bound {:.0} ms → ratio {:.3}  (max {} requests in flight)",
        wide.span_ms, lower_ms, ratio, wide.max_in_flight
    );
    println!(
        "memory (peak RSS): supervisor {:.1} MB, worker {:.1} MB, worker's git helper {:.1} MB",
        wide.supervisor_rss_kb as f64 / 1024.0,
        wide.worker_rss_kb as f64 / 1024.0,
        wide.helper_rss_kb as f64 / 1024.0
    );
    println!(
        "rate limit, {} requests in any {} ms, {} requests waiting: at most {} in one window ({} over the limit), {:.1} % of the limit used",
        rate.limit,
        rate.window_ms,
        limited.requests,
        limited.max_in_window,
        if limited.max_in_window > rate.limit as usize { "ONE OR MORE windows" } else { "no window" },
        limited.utilisation * 100.0
    );
    println!("sandbox, `sh -c true` per command (prepared once per worktree):");
    for c in &sandbox {
        println!(
            "  {:<11} {:6.2} ms/command   (prepare {:.2} ms)",
            c.name, c.command_ms, c.prepare_ms
        );
    }
    if args.json {
        println!("{result}");
    }
    Ok(ExitCode::SUCCESS)
}

struct SandboxCost {
    name: &'static str,
    command_ms: f64,
    prepare_ms: f64,
}

/// The cost of confining a command: `sh -c true` run unconfined and under
/// each mechanism this machine has, in a fresh worktree-like directory.
fn sandbox_cost(dir: &Path) -> Result<Vec<SandboxCost>> {
    use swarm_exec::sandbox::{facilities, SandboxMechanism, SandboxMode, SandboxPolicy};
    const RUNS: u32 = 40;
    std::fs::create_dir_all(dir)?;
    let f = facilities();
    let mut cases = vec![("none", None)];
    if f.landlock.is_ok() {
        cases.push(("landlock", Some(SandboxMechanism::Landlock)));
    }
    if f.bubblewrap.is_ok() {
        cases.push(("bubblewrap", Some(SandboxMechanism::Bubblewrap)));
    }
    let mut out = Vec::new();
    for (name, mechanism) in cases {
        let started = Instant::now();
        let sandbox = match mechanism {
            Some(m) => {
                // Best effort: this measures the cost of the mechanism, and
                // Landlock alone is not `required`-grade for a root service.
                let policy = SandboxPolicy {
                    mode: SandboxMode::BestEffort,
                    mechanism: m,
                    read_only: swarm_exec::sandbox::DEFAULT_READ_ONLY
                        .iter()
                        .map(PathBuf::from)
                        .collect(),
                    ..Default::default()
                };
                Some(std::sync::Arc::new(
                    swarm_exec::Sandbox::prepare(&policy, dir).map_err(|e| anyhow::anyhow!(e))?,
                ))
            }
            None => None,
        };
        let prepare_ms = started.elapsed().as_secs_f64() * 1000.0;
        let opts = swarm_exec::ShellOptions {
            cwd: dir.to_owned(),
            env: Vec::new(),
            timeout: Duration::from_secs(30),
            output_cap: 4096,
            enclosure: None,
            sandbox,
        };
        let started = Instant::now();
        for _ in 0..RUNS {
            let r = swarm_exec::run_shell("true", &opts)?;
            if !r.exit.success() {
                bail!("`true` failed under the {name} sandbox: {}", r.output);
            }
        }
        out.push(SandboxCost {
            name,
            command_ms: started.elapsed().as_secs_f64() * 1000.0 / f64::from(RUNS),
            prepare_ms,
        });
    }
    Ok(out)
}

pub(crate) struct CaseResult {
    pub(crate) phases: Phases,
    /// Under strace: what the whole process tree did.
    counted: Option<Counted>,
    pub(crate) tasks: u32,
    pub(crate) span_ms: f64,
    wall_ms: f64,
    spawned_per_task: f64,
    pub(crate) max_in_flight: usize,
    pub(crate) supervisor_rss_kb: u64,
    /// Peak RSS of any `agentswarm worker` child of the supervisor.
    worker_rss_kb: u64,
    /// Peak RSS of any process a worker started (its git helper: the
    /// bench's workers run no commands).
    helper_rss_kb: u64,
    /// CPU time (user and system) of the supervisor process itself, last
    /// read before it exited.
    pub(crate) supervisor_cpu_ms: f64,
    rate: Option<RateUse>,
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_case(
    exe: &Path,
    home: &Path,
    name: &str,
    n: u32,
    cap: u32,
    turns: u32,
    latency_ms: u64,
    rate: Option<Rate>,
    trace: bool,
) -> Result<CaseResult> {
    let ids: Vec<String> = (0..n).map(|i| format!("t{i:03}")).collect();
    let mut tasks: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "title": format!("Write {id}"), "depends_on": []}))
        .collect();
    tasks.push(json!({"id": "verify", "title": "Verify", "kind": "verify", "depends_on": ids, "commands": ["true"]}));
    let plan = json!({"name": name, "summary": "bench", "tasks": tasks});
    let mut scripts = serde_json::Map::new();
    for id in &ids {
        let mut script = Vec::new();
        for k in 0..turns.saturating_sub(1) {
            script.push(json!({"calls": [{"name": "write_file", "arguments": {"path": format!("{id}-{k}.txt"), "content": id}}]}));
        }
        script.push(json!({"calls": [
            {"name": "write_file", "arguments": {"path": format!("{id}.txt"), "content": id}},
            {"name": "finish", "arguments": {"summary": "done"}}
        ]}));
        scripts.insert(id.clone(), json!({"turns": script}));
    }
    let scenario = swarm_testkit::Scenario::from_json_str(
        &json!({"latency_ms": latency_ms, "tasks": scripts}).to_string(),
    )?;
    let server = swarm_testkit::ScriptedServer::start(scenario).await?;
    let dir = home.join(name);
    std::fs::create_dir_all(&dir)?;
    let plan_path = dir.join("plan.json");
    std::fs::write(&plan_path, plan.to_string())?;
    let data = dir.join("data");

    progress(&format!(
        "{name}: {n} tasks × {turns} turns, {latency_ms} ms a turn, cap {cap}{} …",
        if trace { ", counting under strace" } else { "" }
    ));
    let trace_file = dir.join("strace.txt");
    let mut command = if trace {
        let mut c = tokio::process::Command::new("strace");
        // Every process of the tree (-f), stopped only at the counted calls
        // (--seccomp-bpf), summed (-c).
        c.args([
            "-f",
            "--seccomp-bpf",
            "-qq",
            "-c",
            "-U",
            "calls,errors,name",
            "-e",
        ])
        .arg(format!("trace={}", TRACED.join(",")))
        .arg("-o")
        .arg(&trace_file)
        .arg(exe);
        c
    } else {
        tokio::process::Command::new(exe)
    };
    let started = Instant::now();
    command
        .args(["run", "--json", "--max-workers", &cap.to_string()])
        // The plan's tasks and its verify task, over the default limit with --scale.
        .args(["--max-tasks", &(n + 1).to_string(), "--plan"])
        .arg(&plan_path)
        .arg("bench goal")
        .current_dir(&dir);
    scripted_env(&mut command, &dir, &data, &server);
    command
        .env(
            "API_RATE_LIMIT_RPM",
            rate.map_or(0, |r| r.limit).to_string(),
        )
        .env(
            "AGENTSWARM_RATE_WINDOW_MS",
            rate.map_or(60_000, |r| r.window_ms).to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    // AGENTSWARM_LOG given to the bench goes to the run, whose log then
    // comes out on the bench's stderr (to see where a run's time goes).
    match std::env::var_os("AGENTSWARM_LOG") {
        Some(filter) => command
            .env("AGENTSWARM_LOG", filter)
            .stderr(Stdio::inherit()),
        None => command.stderr(Stdio::piped()),
    };
    let mut child = command.spawn().context("cannot start agentswarm run")?;
    let pid = child.id().unwrap_or(0);
    // Read the output while the run goes on: a large plan writes more than
    // a pipe holds, and the run would block on it.
    let drain = |pipe: Option<_>| {
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = tokio::io::BufReader::new(&mut p)
                    .read_to_string(&mut text)
                    .await;
            }
            text
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    );
    let mut sup_peak = 0u64;
    let mut worker_peak = 0u64;
    let mut helper_peak = 0u64;
    let mut sup_cpu_ms = 0.0f64;
    let output = loop {
        sup_peak = sup_peak.max(rss_kb(pid));
        sup_cpu_ms = cpu_ms(pid).unwrap_or(sup_cpu_ms);
        // The supervisor's children are its workers, but also the git it
        // runs and verify's command: only workers count as workers.
        for c in children_of(pid).into_iter().filter(|c| is_worker(*c)) {
            worker_peak = worker_peak.max(rss_kb(c));
            for h in children_of(c) {
                helper_peak = helper_peak.max(rss_kb(h));
            }
        }
        tokio::select! {
            out = child.wait() => break out?,
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    };
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    progress(&format!("{name}: finished in {:.1} s", wall_ms / 1000.0));
    let stdout = stdout.await.unwrap_or_default();
    let stderr = stderr.await.unwrap_or_default();
    if !output.success() {
        bail!("bench case {name} failed ({output}):\n{stdout}\n{stderr}");
    }
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))?;
    let project = ProjectId::new(report["project_id"].as_str().unwrap_or_default());
    let max_in_flight = server.max_in_flight();
    let rate = rate.map(|r| rate_use(&server, r));
    server.shutdown().await;

    let store = SqliteStore::open(&data.join("agentswarm.db"))?;
    let span_ms = task_span_ms(&store, &project)?;
    let phases = phases(&store, &project)?;
    let spawned = store
        .events(&project, 0, 1_000_000)?
        .iter()
        .rev()
        .find(|e| e.kind == "run_stats")
        .and_then(|e| e.data["spawned"].as_u64())
        .unwrap_or(0);
    let counted = if trace {
        Some(read_counts(&trace_file)?)
    } else {
        None
    };
    Ok(CaseResult {
        phases,
        counted,
        tasks: n,
        span_ms,
        wall_ms,
        spawned_per_task: spawned as f64 / n as f64,
        max_in_flight,
        supervisor_rss_kb: sup_peak,
        worker_rss_kb: worker_peak,
        helper_rss_kb: helper_peak,
        supervisor_cpu_ms: sup_cpu_ms,
        rate,
    })
}

/// The environment of a measured `agentswarm`: nothing of the bench's own
/// but `PATH`; `dir` as its home, `data` as its data directory; the scripted
/// model; the resource gate off (a load average over `MAX_LOAD_AVERAGE`, 3
/// by default, which a 2-core machine doing anything else reaches, would
/// hold the measured runs back for seconds at a time) and no rate limit
/// (a caller may set one after).
pub(crate) fn scripted_env(
    command: &mut tokio::process::Command,
    dir: &Path,
    data: &Path,
    server: &swarm_testkit::ScriptedServer,
) {
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("AGENTSWARM_HOME", data)
        .env("OPENAI_BASE_URL", server.base_url())
        .env("AGENTSWARM_MODEL", "scripted-bench")
        .env("MAX_LOAD_AVERAGE", "0")
        .env("MIN_FREE_MEMORY_MB", "0")
        .env("API_RATE_LIMIT_RPM", "0");
}

/// A rate limit for a bench case: `limit` requests in any `window_ms`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rate {
    limit: u32,
    window_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct RateUse {
    requests: usize,
    /// Most request starts seen in any window.
    max_in_window: usize,
    /// Starts over what the limit allowed while work waited.
    utilisation: f64,
}

/// How the starts the scripted server saw sit against the limit.
fn rate_use(server: &swarm_testkit::ScriptedServer, rate: Rate) -> RateUse {
    let window = Duration::from_millis(rate.window_ms);
    let mut starts: Vec<_> = server.requests().iter().map(|r| r.arrived).collect();
    starts.sort();
    let max_in_window = server.max_in_window(window);
    // While work waits, starts come in bursts of `limit`, one a window.
    // Starts before the last burst, over what the limit allows from the
    // first start to the last: 1.0 when every window is used in full.
    let utilisation = match (starts.first(), starts.last()) {
        (Some(first), Some(last)) if *last > *first + window => {
            let last_burst = *last - window / 2;
            let before_last = starts.iter().filter(|t| **t < last_burst).count();
            let windows = (*last - *first).as_secs_f64() * 1000.0 / rate.window_ms as f64;
            before_last as f64 / (rate.limit as f64 * windows)
        }
        _ => 0.0,
    };
    RateUse {
        requests: starts.len(),
        max_in_window,
        utilisation,
    }
}

/// From the first code task entering `running` to the last one `done`.
fn task_span_ms(store: &dyn Store, project: &ProjectId) -> Result<f64> {
    let verify: Vec<_> = store
        .tasks(project)?
        .into_iter()
        .filter(|t| t.kind == swarm_protocol::TaskKind::Verify)
        .map(|t| t.id)
        .collect();
    let mut first = i64::MAX;
    let mut last = 0i64;
    for e in store.events(project, 0, 1_000_000)? {
        if e.kind != "task_state" || e.task_id.as_ref().is_some_and(|t| verify.contains(t)) {
            continue;
        }
        match e.data["to"].as_str() {
            Some(s) if s == TaskState::Running.as_str() => first = first.min(e.ts_ms),
            Some(s) if s == TaskState::Done.as_str() => last = last.max(e.ts_ms),
            _ => {}
        }
    }
    if first == i64::MAX || last == 0 {
        bail!("no task ran in project {project}");
    }
    Ok((last - first) as f64)
}

/// User plus system CPU time of `pid` so far, in ms (`/proc/PID/stat`).
fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which may hold spaces: state is
    // the 3rd field, utime the 14th and stime the 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some(ticks * 1000.0 / hz)
}

/// VmRSS of a process in kB (0 if gone).
pub(crate) fn rss_kb(pid: u32) -> u64 {
    let [rss] = status_kb(pid, ["VmRSS:"]);
    rss
}

/// `kB` fields of `/proc/PID/status`, in the order asked, from one read (0
/// for a field that is absent, all 0 if the process is gone).
pub(crate) fn status_kb<const N: usize>(pid: u32, fields: [&str; N]) -> [u64; N] {
    let mut out = [0; N];
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return out;
    };
    for line in text.lines() {
        for (field, value) in fields.iter().zip(out.iter_mut()) {
            if let Some(rest) = line.strip_prefix(field) {
                *value = rest
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
            }
        }
    }
    out
}

/// Whether `pid` is an `agentswarm worker` (its first argument `worker`).
fn is_worker(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(b"worker".as_slice()))
}

/// Direct children of `pid` (workers of the supervisor).
pub(crate) fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// The system calls the counting run traces: process images started, and
/// syncs of file data to the disk.
const TRACED: &[&str] = &[
    "execve",
    "execveat",
    "fsync",
    "fdatasync",
    "sync_file_range",
    "syncfs",
    "sync",
    "msync",
];

/// What a whole process tree did in one run, from `strace -c`.
#[derive(Debug, Clone, Copy, Default)]
struct Counted {
    /// Successful `execve`s after the supervisor's own: processes started.
    processes: u64,
    /// Successful syncs of any kind.
    fsyncs: u64,
}

/// Processes and syncs of two runs of different sizes, split into what
/// each task adds (the slope) and what a run costs once (the intercept).
#[derive(Debug, Clone, Copy)]
struct Counts {
    small_tasks: u32,
    small: Counted,
    tasks: u32,
    large: Counted,
    processes_per_task: f64,
    fsyncs_per_task: f64,
    processes_per_run: f64,
    fsyncs_per_run: f64,
}

impl Counts {
    fn from_runs((n1, a): (u32, Counted), (n2, b): (u32, Counted)) -> Self {
        let dn = f64::from(n2) - f64::from(n1);
        let slope = |x: u64, y: u64| (y as f64 - x as f64) / dn;
        let (p, f) = (slope(a.processes, b.processes), slope(a.fsyncs, b.fsyncs));
        Self {
            small_tasks: n1,
            small: a,
            tasks: n2,
            large: b,
            processes_per_task: p,
            fsyncs_per_task: f,
            processes_per_run: b.processes as f64 - p * f64::from(n2),
            fsyncs_per_run: b.fsyncs as f64 - f * f64::from(n2),
        }
    }
}

/// Parses `strace -c -U calls,errors,name` output (the errors column is
/// blank when there were none).
fn read_counts(path: &Path) -> Result<Counted> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the strace summary {}", path.display()))?;
    let mut c = Counted::default();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (calls, errors, name) = match fields.as_slice() {
            [calls, errors, name] => (*calls, *errors, *name),
            [calls, name] => (*calls, "0", *name),
            _ => continue,
        };
        let (Ok(calls), Ok(errors)) = (calls.parse::<u64>(), errors.parse::<u64>()) else {
            continue;
        };
        let ok = calls.saturating_sub(errors);
        match name {
            "execve" | "execveat" => c.processes += ok,
            "total" => {}
            _ => c.fsyncs += ok,
        }
    }
    // The first exec is `agentswarm run` itself.
    c.processes = c.processes.saturating_sub(1);
    Ok(c)
}

/// Whether `strace` can run here (the counting run needs it).
fn strace_available() -> bool {
    std::process::Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A progress line on stderr (stdout's last line stays the JSON), with the
/// time since the bench began.
pub(crate) fn progress(line: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[bench {t:6.1} s] {line}");
}

/// Where a task's time goes, medians over the tasks of a run (ms): `worker`
/// from `running` to `merging` (spawn, setup, model turns, commit, exit),
/// `merge` from `merging` to `done` (waiting in the queue and merging).
#[derive(Debug, Clone, Default)]
pub(crate) struct Phases {
    worker_ms: f64,
    merge_ms: f64,
    /// With nodes: for each node (`placed` events), its attempts and their
    /// median time from `running` to `merging` — how long an attempt there
    /// holds its slot, the model's turns included.
    pub(crate) by_node: std::collections::BTreeMap<String, (usize, f64)>,
}

fn phases(store: &dyn Store, project: &ProjectId) -> Result<Phases> {
    use std::collections::HashMap;
    let mut at: HashMap<(String, String), i64> = HashMap::new();
    let mut node_of: HashMap<String, String> = HashMap::new();
    for e in store.events(project, 0, 1_000_000)? {
        if e.kind == "placed" {
            if let (Some(task), Some(node)) = (e.task_id.as_ref(), e.data["node"].as_str()) {
                node_of.insert(task.to_string(), node.to_owned());
            }
            continue;
        }
        if e.kind != "task_state" {
            continue;
        }
        let (Some(task), Some(to)) = (e.task_id.as_ref(), e.data["to"].as_str()) else {
            continue;
        };
        // The last time each task entered each state.
        at.insert((task.to_string(), to.to_owned()), e.ts_ms);
    }
    let mut worker = Vec::new();
    let mut merge = Vec::new();
    let mut per_node: HashMap<String, Vec<f64>> = HashMap::new();
    for ((task, to), ts) in &at {
        if to != TaskState::Merging.as_str() {
            continue;
        }
        if let Some(r) = at.get(&(task.clone(), TaskState::Running.as_str().to_owned())) {
            worker.push((ts - r) as f64);
            if let Some(node) = node_of.get(task) {
                per_node
                    .entry(node.clone())
                    .or_default()
                    .push((ts - r) as f64);
            }
        }
        if let Some(d) = at.get(&(task.clone(), TaskState::Done.as_str().to_owned())) {
            merge.push((d - ts) as f64);
        }
    }
    Ok(Phases {
        worker_ms: median(&mut worker),
        merge_ms: median(&mut merge),
        by_node: per_node
            .into_iter()
            .map(|(n, mut v)| (n, (v.len(), median(&mut v))))
            .collect(),
    })
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_split_into_per_task_and_per_run() {
        let small = Counted {
            processes: 36,
            fsyncs: 31,
        };
        let large = Counted {
            processes: 56,
            fsyncs: 71,
        };
        let c = Counts::from_runs((10, small), (30, large));
        assert_eq!(
            (c.processes_per_task, c.processes_per_run),
            (1.0, 26.0),
            "{c:?}"
        );
        assert_eq!((c.fsyncs_per_task, c.fsyncs_per_run), (2.0, 11.0), "{c:?}");
    }
}

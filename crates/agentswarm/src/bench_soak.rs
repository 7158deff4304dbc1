//! `agentswarm bench --soak N`: the daemon's memory over a long series of
//! projects. Starts `agentswarm serve` (the gate off, the scripted model on
//! loopback), submits N one-turn tasks as projects of at most 100 tasks
//! through the HTTP API, one after the other, waits for each to be done and
//! for every process below the daemon to be gone, and reads the daemon's
//! RSS from /proc after each (docs/benchmarks.md).

use crate::bench::{children_of, progress, rss_kb, status_kb};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};
use swarm_protocol::api::{ProjectDetail, ProjectOptions, ProjectSummary, SubmitRequest};
use swarm_protocol::ProjectState;

/// Tasks in each project of the soak (plus its verify task).
const PROJECT_TASKS: u32 = 100;

/// How long a project may take before the soak gives up on it.
const PROJECT_DEADLINE: Duration = Duration::from_secs(600);

/// What the daemon's memory was after one project.
struct Sample {
    tasks_so_far: u32,
    /// `VmRSS`, `RssAnon` and `RssFile` of `/proc/PID/status`, in kB.
    rss_kb: u64,
    anon_kb: u64,
    file_kb: u64,
    seconds: f64,
}

pub async fn soak_case(
    exe: &Path,
    home: &Path,
    tasks: u32,
    workers: u32,
    json_out: bool,
) -> Result<ExitCode> {
    if tasks == 0 {
        bail!("--soak must be positive");
    }
    let ids: Vec<String> = (0..PROJECT_TASKS.min(tasks))
        .map(|i| format!("t{i:03}"))
        .collect();
    // The scripted server answers by task id and turn, so every project can
    // reuse the same ids.
    let mut scripts = serde_json::Map::new();
    for id in &ids {
        scripts.insert(
            id.clone(),
            json!({"turns": [{"calls": [
                {"name": "write_file", "arguments": {"path": format!("{id}.txt"), "content": id}},
                {"name": "finish", "arguments": {"summary": "done"}}
            ]}]}),
        );
    }
    let scenario = swarm_testkit::Scenario::from_json_str(
        &json!({"latency_ms": 0, "tasks": scripts}).to_string(),
    )?;
    let server = swarm_testkit::ScriptedServer::start(scenario).await?;
    let dir = home.join("soak");
    let data = dir.join("data");
    std::fs::create_dir_all(&dir)?;
    println!(
        "agentswarm bench --soak {tasks} — `serve` at cap {workers}, projects of {} tasks; data in {}",
        ids.len(),
        dir.display()
    );

    let log = std::fs::File::create(dir.join("serve.log"))?;
    let mut serve = tokio::process::Command::new(exe);
    serve
        .args(["serve", "--bind", "127.0.0.1:0"])
        .current_dir(&dir);
    crate::bench::scripted_env(&mut serve, &dir, &data, &server);
    let mut serve = serve
        .env("MAX_CONCURRENT_WORKERS", workers.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start agentswarm serve")?;
    let result = drive(&data, &ids, tasks).await;
    // SIGTERM: a clean stop, as systemd does it (to serve itself, also when
    // it runs below a wrapper).
    let pid = result.as_ref().map_or(serve.id(), |s| Some(s.pid));
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), serve.wait()).await;
    server.shutdown().await;
    let soak = result.with_context(|| {
        format!(
            "the soak failed; serve's log is {}",
            dir.join("serve.log").display()
        )
    })?;

    let series: Vec<f64> = soak.samples.iter().map(|s| mb(s.rss_kb)).collect();
    let slope = second_half_slope(&soak.samples);
    let result = json!({
        "soak": {
            "tasks": tasks, "project_tasks": ids.len(), "cap": workers,
            "start_rss_mb": mb(soak.start_kb),
            "rss_mb": series,
            "anon_mb": soak.samples.iter().map(|s| mb(s.anon_kb)).collect::<Vec<_>>(),
            "file_mb": soak.samples.iter().map(|s| mb(s.file_kb)).collect::<Vec<_>>(),
            "peak_rss_mb": mb(soak.peak_kb),
            "mb_per_100_tasks_second_half": slope,
            "left_below_serve": soak.left_over,
            "seconds": soak.samples.last().map_or(0.0, |s| s.seconds),
        }
    });
    println!(
        "serve's RSS, at start {:.1} MB, after each project of {} tasks:",
        mb(soak.start_kb),
        ids.len()
    );
    for s in &soak.samples {
        println!(
            "  {:5} tasks  {:6.1} MB  (anonymous {:.1}, file {:.1})  at {:.0} s",
            s.tasks_so_far,
            mb(s.rss_kb),
            mb(s.anon_kb),
            mb(s.file_kb),
            s.seconds
        );
    }
    println!(
        "  peak {:.1} MB; slope over the second half: {} MB per 100 tasks; processes left below serve after a project: {}",
        mb(soak.peak_kb),
        slope.map_or("–".to_owned(), |m| format!("{m:+.2}")),
        soak.left_over
    );
    if json_out {
        println!("{result}");
    }
    Ok(ExitCode::SUCCESS)
}

struct Soak {
    /// serve's process id.
    pid: u32,
    start_kb: u64,
    peak_kb: u64,
    samples: Vec<Sample>,
    /// Processes found below serve once a project had ended (summed over
    /// the projects; 0 when every worker and helper went with its project).
    left_over: usize,
}

/// Submits the projects one after the other and samples serve between them.
async fn drive(data: &Path, ids: &[String], tasks: u32) -> Result<Soak> {
    let (base, pid) = wait_for_address(data).await?;
    let http = reqwest::Client::new();
    wait_until(Duration::from_secs(60), || async {
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await
    .context("serve did not become ready within 60 s")?;
    // The daemon is idle: what it holds before any project.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start_kb = rss_kb(pid);
    let mut soak = Soak {
        pid,
        start_kb,
        peak_kb: start_kb,
        samples: Vec::new(),
        left_over: 0,
    };
    let began = Instant::now();
    let mut done = 0u32;
    let mut k = 0u32;
    while done < tasks {
        let n = (tasks - done).min(ids.len() as u32) as usize;
        let ids = &ids[..n];
        let mut plan_tasks: Vec<Value> = ids
            .iter()
            .map(|id| json!({"id": id, "title": format!("Write {id}"), "depends_on": []}))
            .collect();
        plan_tasks.push(json!({"id": "verify", "title": "Verify", "kind": "verify", "depends_on": ids, "commands": ["true"]}));
        let request = SubmitRequest {
            goal: format!("soak project {k}"),
            plan: Some(
                json!({"name": format!("soak-{k}"), "summary": "soak", "tasks": plan_tasks}),
            ),
            options: ProjectOptions {
                max_tasks: Some(n as u32 + 1),
                ..ProjectOptions::default()
            },
            repo: None,
            base: None,
            push: false,
        };
        let created: ProjectSummary = answer(
            http.post(format!("{base}/api/v1/projects"))
                .json(&request)
                .send()
                .await?,
        )
        .await?;
        progress(&format!("soak: project {k} ({n} tasks) is {}", created.id));
        let deadline = Instant::now() + PROJECT_DEADLINE;
        let state = loop {
            soak.peak_kb = soak.peak_kb.max(rss_kb(pid));
            let detail: ProjectDetail = answer(
                http.get(format!("{base}/api/v1/projects/{}", created.id))
                    .send()
                    .await?,
            )
            .await?;
            if detail.project.state.is_terminal() {
                break detail.project.state;
            }
            if Instant::now() > deadline {
                bail!("project {} not done after {PROJECT_DEADLINE:?}", created.id);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if state != ProjectState::Done {
            bail!("project {} ended {state}", created.id);
        }
        // Every worker, helper and git below serve should go with the
        // project; give them a moment to be reaped, then count what is left.
        let gone = wait_until(Duration::from_secs(5), || async {
            descendants(pid).is_empty()
        })
        .await;
        if gone.is_err() {
            let left = descendants(pid);
            progress(&format!(
                "soak: after project {k}, still below serve: {left:?}"
            ));
            soak.left_over += left.len();
        }
        // What a quiet daemon holds, not what the last merge had in flight.
        tokio::time::sleep(Duration::from_secs(1)).await;
        done += n as u32;
        k += 1;
        let [rss, anon_kb, file_kb] = status_kb(pid, ["VmRSS:", "RssAnon:", "RssFile:"]);
        soak.peak_kb = soak.peak_kb.max(rss);
        soak.samples.push(Sample {
            tasks_so_far: done,
            rss_kb: rss,
            anon_kb,
            file_kb,
            seconds: began.elapsed().as_secs_f64(),
        });
        progress(&format!(
            "soak: {done} tasks done, serve's RSS {:.1} MB",
            mb(rss)
        ));
    }
    let [hwm] = status_kb(pid, ["VmHWM:"]);
    soak.peak_kb = soak.peak_kb.max(hwm);
    Ok(soak)
}

/// The address serve advertises in `<data dir>/serve.json` once it
/// listens, and the process id it gives there: the data directory is new,
/// so the advertisement is this serve's, and its pid is the one to sample
/// even when `--exe` is a wrapper that runs serve as its child (heaptrack).
async fn wait_for_address(data: &Path) -> Result<(String, u32)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(advert) = crate::client::advertised(data) {
            return Ok(advert);
        }
        if Instant::now() > deadline {
            bail!(
                "serve did not advertise its address in {} within 60 s",
                data.join("serve.json").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn answer<T: serde::de::DeserializeOwned>(r: reqwest::Response) -> Result<T> {
    let status = r.status();
    if !status.is_success() {
        bail!(
            "the API answered {status}: {}",
            r.text().await.unwrap_or_default()
        );
    }
    Ok(r.json().await?)
}

async fn wait_until<F, Fut>(timeout: Duration, mut ready: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !ready().await {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Every process below `pid`, at any depth.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut next = children_of(pid);
    while let Some(p) = next.pop() {
        next.extend(children_of(p));
        out.push(p);
    }
    out
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Least-squares slope of the RSS over the second half of the samples, in
/// MB per 100 tasks (`None` with fewer than two samples there).
fn second_half_slope(samples: &[Sample]) -> Option<f64> {
    let half = &samples[samples.len() / 2..];
    if half.len() < 2 {
        return None;
    }
    let n = half.len() as f64;
    let xs: Vec<f64> = half
        .iter()
        .map(|s| f64::from(s.tasks_so_far) / 100.0)
        .collect();
    let ys: Vec<f64> = half.iter().map(|s| mb(s.rss_kb)).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(tasks: u32, mb: u64) -> Sample {
        Sample {
            tasks_so_far: tasks,
            rss_kb: mb * 1024,
            anon_kb: 0,
            file_kb: 0,
            seconds: 0.0,
        }
    }

    #[test]
    fn the_slope_is_taken_over_the_second_half_in_mb_per_100_tasks() {
        // Growing fast at first, then 2 MB every 100 tasks.
        let s: Vec<Sample> = [10, 20, 30, 32, 34, 36]
            .iter()
            .enumerate()
            .map(|(i, m)| sample((i as u32 + 1) * 100, *m))
            .collect();
        let slope = second_half_slope(&s).unwrap_or(f64::NAN);
        assert!((slope - 2.0).abs() < 1e-9, "{slope}");
        assert_eq!(second_half_slope(&s[..2]), None);
    }
}

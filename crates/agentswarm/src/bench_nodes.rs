//! `agentswarm bench --nodes FILE`: the makespan of a wide plan on this
//! machine plus worker nodes over SSH, against this machine alone with as
//! many slots, and what the supervisor spends per task in each
//! (docs/scale-out.md, docs/benchmarks.md).

use crate::bench::run_case;
use crate::cli::BenchArgs;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;

pub async fn nodes_case(
    exe: &Path,
    home: &Path,
    nodes_file: &Path,
    args: &BenchArgs,
) -> Result<ExitCode> {
    let text = std::fs::read_to_string(nodes_file)
        .with_context(|| format!("cannot read {}", nodes_file.display()))?;
    let file = swarm_config::FileConfig::parse(&text, nodes_file)?;
    let nodes = swarm_config::nodes::resolve(file.nodes.as_ref(), None)
        .map_err(|e| anyhow::anyhow!("{}: {e}", nodes_file.display()))?;
    if nodes.is_empty() {
        bail!(
            "{} has no [nodes.NAME] table: give the nodes to measure (benches/nodes.sh writes one)",
            nodes_file.display()
        );
    }
    let slots = args.workers + nodes.iter().map(|n| n.max_workers).sum::<u32>();
    println!(
        "agentswarm bench --nodes — {} tasks × {} turns × {} ms; here {} slot(s) plus {} on {} node(s); data in {}",
        args.tasks,
        args.turns,
        args.latency_ms,
        args.workers,
        slots - args.workers,
        nodes.len(),
        home.display()
    );
    // The run finds its configuration in its working directory.
    let spread = "nodes-makespan";
    std::fs::create_dir_all(home.join(spread))?;
    std::fs::write(home.join(spread).join("agentswarm.toml"), &text)?;
    let with_nodes = run_case(
        exe,
        home,
        spread,
        args.tasks,
        args.workers,
        args.turns,
        args.latency_ms,
        None,
        false,
    )
    .await?;
    let alone = run_case(
        exe,
        home,
        "local-makespan",
        args.tasks,
        slots,
        args.turns,
        args.latency_ms,
        None,
        false,
    )
    .await?;
    let lower_ms =
        f64::from(args.tasks.div_ceil(slots)) * f64::from(args.turns) * args.latency_ms as f64;
    let per_task = |ms: f64| ms / f64::from(args.tasks);
    let result = json!({
        "tasks": args.tasks, "turns": args.turns, "latency_ms": args.latency_ms, "slots": slots,
        "nodes": nodes.iter().map(|n| json!({"name": n.name, "slots": n.max_workers})).collect::<Vec<_>>(),
        "makespan_lower_bound_ms": lower_ms,
        "with_nodes": {
            "makespan_ms": with_nodes.span_ms, "ratio": with_nodes.span_ms / lower_ms,
            "max_in_flight": with_nodes.max_in_flight,
            "supervisor_cpu_ms_per_task": per_task(with_nodes.supervisor_cpu_ms),
            "supervisor_peak_rss_mb": with_nodes.supervisor_rss_kb as f64 / 1024.0,
            "attempts_by_node": with_nodes.phases.by_node.iter().map(|(n, (count, ms))| {
                (n.clone(), json!({"attempts": count, "running_to_merging_median_ms": ms}))
            }).collect::<serde_json::Map<_, _>>(),
        },
        "local_only": {
            "makespan_ms": alone.span_ms, "ratio": alone.span_ms / lower_ms,
            "max_in_flight": alone.max_in_flight,
            "supervisor_cpu_ms_per_task": per_task(alone.supervisor_cpu_ms),
            "supervisor_peak_rss_mb": alone.supervisor_rss_kb as f64 / 1024.0,
        },
    });
    println!();
    println!("lower bound for {slots} slots: {lower_ms:.0} ms");
    for (what, r) in [("here + nodes", &with_nodes), ("here alone  ", &alone)] {
        println!(
            "  {what}: makespan {:.0} ms → ratio {:.3} (max {} requests in flight); supervisor {:.1} ms CPU per task, peak RSS {:.1} MB",
            r.span_ms,
            r.span_ms / lower_ms,
            r.max_in_flight,
            per_task(r.supervisor_cpu_ms),
            r.supervisor_rss_kb as f64 / 1024.0
        );
    }
    for (node, (count, ms)) in &with_nodes.phases.by_node {
        println!("  on {node}: {count} attempts, {ms:.0} ms from running to merging (median)");
    }
    if args.json {
        println!("{result}");
    }
    Ok(ExitCode::SUCCESS)
}

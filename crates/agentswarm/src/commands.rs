//! The commands. Each builds the config and the engine, then calls into it.

use crate::cli::{
    Cli, Command, LimitArgs, NodeCommand, OutputArgs, RunArgs, ServiceCommand, TapeArgs,
};
use crate::output;
use anyhow::{bail, Context, Result};
use std::process::ExitCode;
use std::sync::Arc;
use swarm_config::{Config, FileConfig, Overrides};
use swarm_engine::{Engine, EngineSettings, Gateway, ProjectLock, RunReport, Tape};
use swarm_protocol::{Plan, ProjectId, ProjectState};
use swarm_store::{SqliteStore, Store};
use tokio_util::sync::CancellationToken;

pub fn worker() -> ExitCode {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    match swarm_agent::run_worker(stdin.lock(), stdout.lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentswarm worker: {e}");
            ExitCode::from(2)
        }
    }
}

/// `agentswarm agent-relay` (internal): runs inside an outside agent's
/// sandbox, in front of the agent; exits with the agent's status.
pub fn agent_relay(
    socket: std::path::PathBuf,
    templated: String,
    command: Vec<std::ffi::OsString>,
) -> ExitCode {
    let spec = swarm_exec::relay::RelaySpec {
        socket,
        command,
        templated: templated
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentswarm agent-relay: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(swarm_exec::relay::run(spec)) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("agentswarm agent-relay: {e}");
            ExitCode::from(2)
        }
    }
}

pub async fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(ref args) => run(&cli, args).await,
        Command::Resume {
            ref project,
            ref out,
            ref limits,
            ref tape,
        } => {
            let project = expand_project(&cli, project)?;
            resume(&cli, &project, out, limits, tape).await
        }
        Command::Status { ref project, json } => {
            let project = project
                .as_deref()
                .map(|p| expand_project(&cli, p))
                .transpose()?;
            status(&cli, project.as_deref(), json).await
        }
        Command::Logs {
            ref project,
            ref task,
            follow,
            json,
        } => {
            let project = expand_project(&cli, project)?;
            crate::logs::logs(&cli, &project, task.as_deref(), follow, json).await
        }
        Command::Demo {
            ref out,
            ref limits,
            ref tape,
        } => demo(&cli, out, limits, tape).await,
        Command::Bench(ref args) => crate::commands::bench(&cli, args).await,
        Command::Serve { bind, ref limits } => crate::daemon::serve(&cli, limits, bind).await,
        Command::Submit(ref args) => crate::daemon::submit(&cli, args).await,
        Command::Prune {
            ref projects,
            older_than_days,
            deliveries,
            dry_run,
        } => prune(&cli, projects, older_than_days, deliveries, dry_run),
        Command::Review {
            ref project,
            ref task,
            approve,
            ref reject,
            json,
            ref tape,
        } => {
            let project = expand_project(&cli, project)?;
            let args = crate::review::ReviewArgs {
                project: &project,
                task: task.as_deref(),
                approve,
                reject: reject.as_deref(),
                json,
            };
            crate::review::review(&cli, args, tape).await
        }
        Command::Cancel { ref project } => {
            let project = expand_project(&cli, project)?;
            crate::daemon::cancel(&cli, &project).await
        }
        Command::Doctor { json, check_model } => {
            crate::doctor::doctor(&cli, json, check_model).await
        }
        Command::Node(NodeCommand::Check { ref name, json }) => {
            crate::node::check(&cli, name.as_deref(), json)
        }
        Command::Node(NodeCommand::Install { ref name }) => crate::node::install(&cli, name),
        Command::Node(NodeCommand::Info { json }) => crate::node::info(&cli, json),
        Command::Node(NodeCommand::Worker {
            memory_mb,
            lost_after,
            grace_secs,
        }) => crate::node::worker_host(&cli, memory_mb, lost_after, grace_secs).await,
        Command::Service(ServiceCommand::Install {
            ref output,
            ref exe,
            ref user,
            ref service_data_dir,
            ref env_file,
        }) => crate::service::install(
            &cli,
            crate::service::Target {
                output: output.as_deref(),
                exe: exe.as_deref(),
                user,
                data_dir: service_data_dir.as_deref(),
                env_file,
            },
        ),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = crate::cli::Cli::command();
            clap_complete::generate(shell, &mut cmd, "agentswarm", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(crate::cli::Cli::command())
                .render(&mut std::io::stdout())
                .context("cannot write the man page")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker => Ok(worker()),
        Command::AgentRelay {
            socket,
            templated,
            command,
        } => Ok(agent_relay(socket, templated, command)),
    }
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

pub fn load_config(
    cli: &Cli,
    limits: &LimitArgs,
    model: Option<String>,
    base_url: Option<String>,
) -> Result<Config> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let file = match swarm_config::find_config_file(cli.config.as_deref(), &env_lookup, &cwd) {
        Some(path) => Some((FileConfig::load(&path)?, path)),
        None => None,
    };
    let flags = Overrides {
        data_dir: cli.data_dir.clone(),
        outputs_dir: cli.outputs_dir.clone(),
        max_concurrent_workers: limits.max_workers,
        max_tasks: limits.max_tasks,
        max_attempts: limits.max_attempts,
        max_turns: limits.max_turns,
        max_fix_rounds: limits.max_fix_rounds,
        model,
        base_url,
        max_cost_usd: limits.max_cost_usd,
        max_tokens: limits.max_tokens,
        allow_network: limits.allow_network.then_some(true),
        agent: limits.agent.clone(),
        review: limits.review,
    };
    let config = Config::resolve(file, &env_lookup, &flags)?;
    // From here on, every log line masks the configured keys and the API token.
    swarm_llm::redact::install_global(swarm_llm::redact::Redactor::new(config.secret_values()));
    Ok(config)
}

pub fn open_store(config: &Config) -> Result<Arc<dyn Store>> {
    let path = config.store_path();
    let store = SqliteStore::open(&path)
        .with_context(|| format!("cannot open the store at {}", path.display()))?;
    Ok(Arc::new(store))
}

pub fn build_engine(config: Config, store: Arc<dyn Store>, tape: &TapeArgs) -> Result<Engine> {
    let tape = match (&tape.record, &tape.replay) {
        (Some(path), _) => {
            let redactor = swarm_llm::redact::Redactor::new(config.models()?.key_values());
            Tape::Record(
                swarm_llm::cassette::Recorder::create(path, redactor)
                    .with_context(|| format!("cannot write the recording {}", path.display()))?,
            )
        }
        (None, Some(path)) => Tape::Replay(swarm_llm::cassette::Replayer::open(path)?),
        (None, None) => Tape::Live,
    };
    let gateway = Gateway::from_config(&config, store.clone(), tape)?;
    let exe = std::env::current_exe().context("cannot find the agentswarm executable")?;
    let settings = EngineSettings::for_executable(exe, &config);
    Ok(Engine::new(config, store, gateway, settings))
}

/// One keyless OpenAI-compatible provider serving `model` for every role:
/// the scripted model server of `demo` and `bench`.
pub fn scripted_models(base_url: &str, model: &str) -> swarm_config::Models {
    use swarm_config::{ModelRef, ProviderConfig, ProviderKind, RoleModels};
    let mut provider = ProviderConfig::new("scripted", ProviderKind::OpenAi, base_url);
    provider.request_timeout_secs = 60;
    let role = RoleModels {
        primary: ModelRef {
            provider: "scripted".into(),
            model: model.into(),
        },
        fallback: Vec::new(),
        max_tokens: None,
        temperature: None,
        agent: Default::default(),
    };
    swarm_config::Models {
        providers: [("scripted".to_owned(), provider)].into_iter().collect(),
        planner: role.clone(),
        worker: role.clone(),
        fixer: role,
        prices: Default::default(),
    }
}

/// `run` refuses to start a project whose provider lacks its key; `serve`
/// pauses such projects instead.
pub fn check_keys(engine: &Engine) -> Result<()> {
    if let Some(msg) = engine.gateway().missing_key() {
        bail!("{msg}");
    }
    Ok(())
}

/// A supervisor (run, resume, demo, serve) adopts the orphans of its
/// workers' commands, so that nothing they double-fork escapes it.
pub fn become_supervisor() {
    if let Err(e) = swarm_exec::tree::become_subreaper() {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphans of commands may outlive a worker");
    }
}

/// Runs `project` with live progress and Ctrl-C handling; prints the report.
async fn drive(engine: &Engine, project: &ProjectLock, out: &OutputArgs) -> Result<ExitCode> {
    become_supervisor();
    let cancel = CancellationToken::new();
    let mut printer = output::Printer::start(engine, project.id(), out);
    let signals = spawn_signal_handler(cancel.clone());
    let sweeping = CancellationToken::new();
    let sweeper = Engine::spawn_orphan_sweeper(sweeping.clone());
    let report = printer.watch(engine, engine.run(project, cancel)).await;
    sweeping.cancel();
    let _ = sweeper.await;
    signals.abort();
    let orphans = swarm_exec::reap_orphans();
    if orphans > 0 {
        tracing::info!(orphans, "killed and reaped processes left by workers");
    }
    printer.finish().await;
    let report = report?;
    output::print_report(&report, out.json);
    Ok(exit_code(&report))
}

fn exit_code(r: &RunReport) -> ExitCode {
    match r.status {
        ProjectState::Done => ExitCode::SUCCESS,
        ProjectState::Interrupted => ExitCode::from(130),
        // Resumable once the budget is raised or the key fixed.
        ProjectState::BudgetExhausted | ProjectState::Paused => ExitCode::from(3),
        ProjectState::Failed
        | ProjectState::Cancelled
        | ProjectState::Queued
        | ProjectState::Planning
        | ProjectState::Running => ExitCode::from(1),
    }
}

/// First SIGINT/SIGTERM: stop starting work, stop workers, record the state.
/// Second SIGINT: kill every process of every worker and exit at once.
pub fn spawn_signal_handler(cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        // The live view's bars go first, so that they do not draw over this.
        crate::live::release_terminal();
        eprintln!("agentswarm: stopping — no new workers; running ones get SIGTERM, then SIGKILL after the grace; state is saved. Press Ctrl-C again to exit at once.");
        cancel.cancel();
        int.recv().await;
        let killed = swarm_exec::limit::kill_everything();
        eprintln!("agentswarm: killed {killed} process(es); exiting now");
        std::process::exit(130);
    })
}

/// The goal and the optional plan document of `run` and `submit`.
pub fn goal_and_plan(
    goal: Option<&str>,
    goal_file: Option<&std::path::Path>,
    plan: Option<&std::path::Path>,
) -> Result<(String, Option<Plan>)> {
    let goal = match (goal, goal_file) {
        (Some(g), _) => g.to_owned(),
        (None, Some(f)) => {
            // Not read whole when it cannot be a goal (4 bytes a character at most).
            let len = std::fs::metadata(f)
                .with_context(|| format!("cannot read the goal file {}", f.display()))?
                .len();
            if len > 4 * swarm_engine::MAX_GOAL_CHARS as u64 {
                bail!(
                    "the goal file {} is {len} bytes, more than a goal may be ({} characters); \
                     keep the goal to what to build and put the details in the plan or the repository",
                    f.display(),
                    swarm_engine::MAX_GOAL_CHARS
                );
            }
            std::fs::read_to_string(f).with_context(|| format!("cannot read the goal file {}", f.display()))?
        }
        (None, None) => bail!("give a goal: `agentswarm run \"Build …\"` or `--goal-file FILE` (or try `agentswarm demo`)"),
    };
    if let Some(why) = swarm_engine::goal_problem(&goal) {
        bail!("{why}");
    }
    let plan: Option<Plan> = match plan {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the plan {}", path.display()))?;
            let plan = swarm_engine::plan::plan_document(&text).map_err(|p| {
                anyhow::anyhow!(
                    "the plan file {} is invalid:\n  - {}",
                    path.display(),
                    p.join("\n  - ")
                )
            })?;
            Some(plan)
        }
        None => None,
    };
    Ok((goal.trim().to_owned(), plan))
}

async fn run(cli: &Cli, args: &RunArgs) -> Result<ExitCode> {
    let (goal, plan) = goal_and_plan(
        args.goal.as_deref(),
        args.goal_file.as_deref(),
        args.plan.as_deref(),
    )?;
    let config = load_config(cli, &args.limits, args.model.clone(), args.base_url.clone())?;
    let store = open_store(&config)?;
    let engine = build_engine(config, store, &args.tape)?;
    check_keys(&engine)?;
    if let Some(id) = &args.continue_project {
        let id = ProjectId::new(id.as_str());
        return continue_with(&engine, &id, &goal, &args.out).await;
    }
    let source = args.repo.request()?;
    let project = engine.create_project_on(&goal, plan, source.as_ref())?;
    println!("project {}", project.id());
    drive(&engine, &project, &args.out).await
}

/// `run --continue` (and a rejected delivery's follow-up round without a
/// daemon): plans `goal` on the project and runs it in the foreground.
pub async fn continue_in_foreground(
    cli: &Cli,
    id: &ProjectId,
    goal: &str,
    out: &OutputArgs,
    tape: &TapeArgs,
) -> Result<ExitCode> {
    let config = load_config(cli, &LimitArgs::default(), None, None)?;
    let store = open_store(&config)?;
    let engine = build_engine(config, store, tape)?;
    check_keys(&engine)?;
    continue_with(&engine, id, goal, out).await
}

async fn continue_with(
    engine: &Engine,
    id: &ProjectId,
    goal: &str,
    out: &OutputArgs,
) -> Result<ExitCode> {
    {
        engine.store().project(id)?;
        let lock = engine.lock(id)?;
        let added = engine.continue_project(&lock, goal).await?;
        println!("project {id}");
        println!(
            "continuing with {} new task(s): {}",
            added.len(),
            added
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        drive(engine, &lock, out).await
    }
}

/// The project a command names: its id, or the start of exactly one
/// project's id (`agentswarm status 2026120`). An unknown or ambiguous
/// start is an error that lists the candidates; without a store the name
/// is taken as given (the command says it does not exist).
fn expand_project(cli: &Cli, given: &str) -> Result<String> {
    let config = load_config(cli, &LimitArgs::default(), None, None)?;
    if !config.store_path().exists() {
        return Ok(given.to_owned());
    }
    let ids: Vec<String> = open_store(&config)?
        .list_projects()?
        .into_iter()
        .map(|p| p.id.to_string())
        .collect();
    if ids.iter().any(|id| id == given) || given.is_empty() {
        return Ok(given.to_owned());
    }
    let matches: Vec<&String> = ids.iter().filter(|id| id.starts_with(given)).collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Ok(given.to_owned()),
        many => bail!(
            "{given:?} is the start of {} project ids: {}; give more of it",
            many.len(),
            many.iter()
                .take(10)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn prune(
    cli: &Cli,
    projects: &[String],
    older_than_days: u64,
    deliveries: bool,
    dry_run: bool,
) -> Result<ExitCode> {
    let config = load_config(cli, &LimitArgs::default(), None, None)?;
    if !config.store_path().exists() {
        println!(
            "no projects in {}: nothing to prune",
            config.data_dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let ids = projects
        .iter()
        .map(|p| expand_project(cli, p).map(ProjectId::new))
        .collect::<Result<Vec<_>>>()?;
    let store = open_store(&config)?;
    let req = swarm_engine::prune::PruneRequest {
        projects: ids,
        older_than: std::time::Duration::from_secs(older_than_days * 86_400),
        deliveries,
        dry_run,
    };
    let pruned = swarm_engine::prune::prune(&config, store.as_ref(), &req)?;
    if pruned.is_empty() {
        println!("no ended project is older than {older_than_days} days: nothing to prune");
        return Ok(ExitCode::SUCCESS);
    }
    let mut freed = 0;
    let mut skipped = false;
    for p in &pruned {
        let mb = p.bytes as f64 / 1_048_576.0;
        match (&p.skipped, p.deleted) {
            (Some(why), _) => {
                skipped = true;
                println!("kept   {} ({}, {} days): {why}", p.id, p.state, p.age_days);
            }
            (None, true) => {
                freed += p.bytes;
                println!(
                    "pruned {} ({}, {} days): {mb:.1} MB",
                    p.id, p.state, p.age_days
                );
            }
            (None, false) => println!(
                "would prune {} ({}, {} days): {mb:.1} MB",
                p.id, p.state, p.age_days
            ),
        }
    }
    if !dry_run {
        println!("{:.1} MB freed", freed as f64 / 1_048_576.0);
    }
    if !deliveries {
        println!(
            "deliveries kept in {} (--deliveries deletes them too)",
            config.outputs_dir.display()
        );
    }
    Ok(if skipped {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn resume(
    cli: &Cli,
    project: &str,
    out: &OutputArgs,
    limits: &LimitArgs,
    tape: &TapeArgs,
) -> Result<ExitCode> {
    let config = load_config(cli, limits, None, None)?;
    let store = open_store(&config)?;
    let id = ProjectId::new(project);
    let p = store.project(&id)?;
    if p.state == ProjectState::Cancelled {
        return Err(swarm_engine::Error::Cancelled(id).into());
    }
    if p.state == ProjectState::Done {
        println!(
            "project {id} is already done; delivery: {}",
            p.delivery.as_deref().unwrap_or("-")
        );
    }
    let engine = build_engine(config, store, tape)?;
    check_keys(&engine)?;
    let lock = engine.lock(&id)?;
    engine.update_limits(&id, &p.options)?;
    drive(&engine, &lock, out).await
}

/// Through the daemon's API when it is up, else from the store; the same
/// view either way.
async fn status(cli: &Cli, project: Option<&str>, json: bool) -> Result<ExitCode> {
    let config = load_config(cli, &LimitArgs::default(), None, None)?;
    if let Some(client) = crate::client::Client::discover(&config).await? {
        match project {
            Some(id) => {
                let d = client.get(&crate::client::project_path(id)?).await?;
                output::print_project_status(&d, json);
            }
            None => {
                output::print_projects(&client.get("/api/v1/projects").await?, json);
                if !json {
                    let swarm = client.get("/api/v1/status").await?;
                    output::print_nodes(&swarm);
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let path = config.store_path();
    if !path.exists() {
        if json {
            println!("[]");
        } else {
            println!(
                "no projects yet in {} (run `agentswarm demo` or `agentswarm run \"goal\"`)",
                config.data_dir.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let store = open_store(&config)?;
    match project {
        Some(id) => {
            let d = swarm_engine::views::project_detail(
                store.as_ref(),
                &config,
                &ProjectId::new(id),
                &[],
            )?;
            output::print_project_status(&d, json);
        }
        None => output::print_projects(
            &swarm_engine::views::project_list(store.as_ref(), &config)?,
            json,
        ),
    }
    Ok(ExitCode::SUCCESS)
}

async fn demo(
    cli: &Cli,
    out: &OutputArgs,
    limits: &LimitArgs,
    tape: &TapeArgs,
) -> Result<ExitCode> {
    let scenario =
        swarm_testkit::Scenario::from_json_str(&swarm_testkit::demo_scenario().to_string())?;
    let server = swarm_testkit::ScriptedServer::start(scenario).await?;
    let mut config = load_config(cli, limits, None, None)?;
    if config.sources.get("max_load_average") == Some(&swarm_config::Source::Default) {
        // Right after `cargo build` the load average is high for a minute;
        // the demo should not sit behind the gate for that.
        config.max_load_average = 0.0;
    }
    if config.sources.get("api_rate_limit_rpm") == Some(&swarm_config::Source::Default) {
        // The scripted model has no quota to protect.
        config.api_rate_limit_rpm = 0;
    }
    config.set_models(scripted_models(&server.base_url(), "scripted-demo"));
    println!(
        "AgentSwarm demo — the model is SCRIPTED: a built-in fake model server on {} answers every",
        server.base_url()
    );
    println!("request from a script. No API key is used and nothing leaves this machine; the workers, git");
    println!("worktrees, merges, verify (the project's real unit tests) and the delivery archive are real.");
    println!(
        "data: {}   outputs: {}",
        config.data_dir.display(),
        config.outputs_dir.display()
    );
    let store = open_store(&config)?;
    let engine = build_engine(config, store, tape)?;
    let project = engine.create_project(swarm_testkit::DEMO_GOAL, None)?;
    println!("goal: {}", swarm_testkit::DEMO_GOAL);
    println!("project {}", project.id());
    let id = project.id().clone();
    let code = drive(&engine, &project, out).await;
    server.shutdown().await;
    if !out.json && matches!(&code, Ok(c) if *c == ExitCode::SUCCESS) {
        println!();
        println!("next:");
        println!("  mkdir /tmp/wordstats && tar -xzf <the delivery above> -C /tmp/wordstats");
        println!("  cd /tmp/wordstats/wordstats && python3 -m unittest discover -s tests   # the delivered tests, outside the swarm");
        println!("  agentswarm logs {id}      # what each worker did; `agentswarm status {id}` for the tasks");
        println!(
            "  agentswarm serve          # the daemon and its dashboard on http://127.0.0.1:7700/"
        );
        println!("  with a real model: export OPENAI_API_KEY=… AGENTSWARM_MODEL=…, then");
        println!("  agentswarm doctor --check-model && agentswarm run \"your goal\"   (README, docs/providers.md)");
    }
    code
}

pub use crate::bench::bench;

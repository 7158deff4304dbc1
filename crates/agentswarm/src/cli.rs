//! Command-line flags.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "agentswarm",
    version,
    about = "A self-hosted swarm of LLM coding agents: goal → plan → parallel workers → merged, verified delivery."
)]
pub struct Cli {
    /// Config file (default: $AGENTSWARM_CONFIG, ./agentswarm.toml, the user config dir, /etc/agentswarm/).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory: store, repositories, worktrees (default: $AGENTSWARM_HOME or ~/.local/share/agentswarm).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where archives and manifests go (default: $OUTPUTS_DIR or <data dir>/outputs).
    #[arg(long, global = true, value_name = "DIR")]
    pub outputs_dir: Option<PathBuf>,
    /// More log output on stderr (-v info, -vv debug); AGENTSWARM_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Plan, run and deliver one goal in the foreground.
    Run(RunArgs),
    /// Carry on a project whose run was stopped (interrupted, failed, out of
    /// budget, paused); finished tasks are not run again. Limits given here
    /// (e.g. a higher --max-cost-usd) replace the project's stored ones.
    Resume {
        /// The project's id, as `status` lists it.
        project: String,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        tape: TapeArgs,
    },
    /// The daemon: run every queued or unfinished project of the store,
    /// sharing one worker pool; speaks the systemd notify protocol.
    Serve {
        /// Where the HTTP API, dashboard and metrics answer (default
        /// 127.0.0.1:7700; over AGENTSWARM_BIND and `bind` in the config).
        /// Any address but loopback needs AGENTSWARM_API_TOKEN.
        #[arg(long, value_name = "ADDRESS:PORT")]
        bind: Option<std::net::SocketAddr>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Queue a project for `agentswarm serve`; prints its id.
    Submit(SubmitArgs),
    /// Review before merge (`--review tasks|delivery`): list what waits for a
    /// person, print a task's diff, approve it or reject it with a comment.
    /// Without TASK, --approve and --reject act on a delivery held for review.
    Review {
        /// The project's id, as `status` lists it.
        project: String,
        /// A task waiting in review (`agentswarm review PROJECT` lists them).
        task: Option<String>,
        /// Merge the task's commit (or write the held delivery branch).
        #[arg(long, conflicts_with = "reject")]
        approve: bool,
        /// Do not merge it: a new attempt starts whose prompt carries COMMENT
        /// (for the delivery: a follow-up round with COMMENT as its goal).
        #[arg(long, value_name = "COMMENT")]
        reject: Option<String>,
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tape: TapeArgs,
    },
    /// Stop a project for good: the daemon stops its workers; it cannot be resumed.
    Cancel {
        /// The project's id, as `status` lists it.
        project: String,
    },
    /// Delete what ended projects leave behind: their repository, worktrees,
    /// transcripts and store rows. Deliveries in OUTPUTS_DIR are kept unless
    /// --deliveries is given.
    Prune {
        /// Projects to prune (ids or unique starts of ids); none: every ended
        /// project last changed more than --older-than-days ago.
        projects: Vec<String>,
        /// Prune only projects that ended at least this many days ago.
        #[arg(long, value_name = "DAYS", default_value_t = 30)]
        older_than_days: u64,
        /// Also delete their deliveries and task archives in OUTPUTS_DIR.
        #[arg(long)]
        deliveries: bool,
        /// Say what would be deleted, and delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show the resolved configuration and where each value came from, the
    /// memory-limit mechanism, the resource gate's readings, git and the store.
    Doctor {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also send one tiny request to each role's model (planner, worker,
        /// fixer) and report whether and how fast it answers.
        #[arg(long)]
        check_model: bool,
    },
    /// Install AgentSwarm as a systemd service.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Worker nodes reached over SSH ([nodes.NAME] in agentswarm.toml).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Show projects, or one project's tasks.
    Status {
        /// One project's id: its tasks, attempts and verify results
        /// (without: every project, one line each).
        project: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a project's event log, one line per event (state changes, tool
    /// calls, plan, verify…); `--follow` keeps printing until its run ends.
    Logs {
        /// The project's id, as `status` lists it.
        project: String,
        /// Only this task's events.
        task: Option<String>,
        /// Keep printing new events until the project's run ends (Ctrl-C stops).
        #[arg(short, long)]
        follow: bool,
        /// One JSON object a line: the raw events.
        #[arg(long)]
        json: bool,
    },
    /// Run a real goal offline against the built-in scripted model (no key needed).
    Demo {
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        tape: TapeArgs,
    },
    /// Measure orchestration overhead and makespan against the scripted model.
    Bench(BenchArgs),
    /// Print a shell completion script (e.g. `agentswarm completions bash >
    /// /etc/bash_completion.d/agentswarm`).
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `agentswarm man > /usr/local/share/man/man1/agentswarm.1`.
    Man,
    /// Internal: run one task attempt, speaking JSON lines on stdin/stdout.
    #[command(hide = true)]
    Worker,
    /// Internal: the relay in front of an outside agent, inside its sandbox
    /// (docs/agents.md): gives it a loopback endpoint that reaches SOCKET.
    #[command(hide = true)]
    AgentRelay {
        #[arg(long)]
        socket: std::path::PathBuf,
        /// Environment variables whose `{gateway}` is replaced (comma-separated).
        #[arg(long, default_value = "")]
        templated: String,
        /// The agent's program and arguments.
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Connect to the nodes of [nodes.NAME] (or one), compare their version
    /// with this one and show their sandbox, memory limiter and load.
    Check {
        /// The node to check (default: every configured node).
        name: Option<String>,
        /// One JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Copy this binary to the node (where its `agentswarm` setting says),
    /// then check it.
    Install {
        /// The node, as named in [nodes.NAME].
        name: String,
    },
    /// What this machine offers as a node (run on the node by `check`).
    #[command(hide = true)]
    Info {
        #[arg(long)]
        json: bool,
    },
    /// Runs one attempt's worker on this node for a supervisor over SSH
    /// (internal: the supervisor starts it).
    #[command(hide = true)]
    Worker {
        /// The worker tree's memory limit, in MB.
        #[arg(long)]
        memory_mb: u64,
        /// Seconds without the supervisor's heartbeat before the worker ends.
        #[arg(long, default_value_t = 10)]
        lost_after: u64,
        /// SIGTERM, then SIGKILL after this many seconds.
        #[arg(long, default_value_t = 5)]
        grace_secs: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Write the systemd unit for `agentswarm serve` with this machine's
    /// paths and print the commands that enable it.
    Install {
        /// Where the unit goes (default: /etc/systemd/system/agentswarm.service,
        /// only on a host whose init is systemd).
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The binary the unit starts (default: this one if it is installed
        /// under /usr or /opt, else /usr/local/bin/agentswarm, to which it
        /// must be copied).
        #[arg(long, value_name = "PATH")]
        exe: Option<PathBuf>,
        /// The dedicated user the service runs as.
        #[arg(long, default_value = "agentswarm")]
        user: String,
        /// Data directory of the service (default: /var/lib/agentswarm, or --data-dir).
        #[arg(long, value_name = "DIR")]
        service_data_dir: Option<PathBuf>,
        /// Environment file with the model settings and limits.
        #[arg(
            long,
            value_name = "FILE",
            default_value = "/etc/agentswarm/agentswarm.env"
        )]
        env_file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The software goal.
    pub goal: Option<String>,
    /// Read the goal from a file.
    #[arg(long, value_name = "FILE", conflicts_with = "goal")]
    pub goal_file: Option<PathBuf>,
    /// Run this plan document instead of asking the planner.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// Add more work to an existing project: plan tasks for this goal on
    /// its `main`, keeping what is done, then run them and deliver again.
    #[arg(
        long = "continue",
        value_name = "PROJECT",
        conflicts_with_all = ["plan", "repo", "base", "push"]
    )]
    pub continue_project: Option<String>,
    /// Model name (over AGENTSWARM_MODEL).
    #[arg(long)]
    pub model: Option<String>,
    /// Model endpoint (over OPENAI_BASE_URL).
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub out: OutputArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub tape: TapeArgs,
}

/// What `submit` takes: the goal, a plan and the project's own limits; the
/// model, the worker cap and recording are the daemon's.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The software goal.
    pub goal: Option<String>,
    /// Read the goal from a file.
    #[arg(long, value_name = "FILE", conflicts_with = "goal")]
    pub goal_file: Option<PathBuf>,
    /// Run this plan document instead of asking the planner.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// Print `{"project_id", "status"}` as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub limits: ProjectLimitArgs,
}

/// Starting from an existing repository (docs/existing-repos.md).
#[derive(Debug, Args, Default, Clone)]
pub struct RepoArgs {
    /// Start from an existing repository instead of an empty one: a local
    /// path or a git URL (https, ssh; cloned by the supervisor with this
    /// machine's git credentials). The delivery is also a branch
    /// `agentswarm/<project>` there, `changes.patch` and a bundle.
    #[arg(long, value_name = "PATH|URL")]
    pub repo: Option<String>,
    /// The branch of --repo to start from (default: the branch checked out
    /// there, whose working tree must then be clean).
    #[arg(long, value_name = "BRANCH", requires = "repo")]
    pub base: Option<String>,
    /// Push the delivery branch to the repository's remote (`origin` of a
    /// local path; the URL itself).
    #[arg(long, requires = "repo")]
    pub push: bool,
}

impl RepoArgs {
    /// The request for the engine, a relative path made absolute against
    /// the current directory.
    pub fn request(&self) -> anyhow::Result<Option<swarm_engine::source::SourceRequest>> {
        let Some(repo) = &self.repo else {
            return Ok(None);
        };
        let repo =
            if swarm_protocol::source::is_url(repo) || std::path::Path::new(repo).is_absolute() {
                repo.clone()
            } else {
                let cwd = std::env::current_dir()?;
                let p = cwd.join(repo);
                std::fs::canonicalize(&p)
                    .unwrap_or(p)
                    .to_string_lossy()
                    .into_owned()
            };
        Ok(Some(swarm_engine::source::SourceRequest {
            repo,
            base: self.base.clone(),
            push: self.push,
        }))
    }
}

/// A project's own limits (`submit`); the same flags as in [`LimitArgs`]
/// but the worker cap, which is the daemon's.
#[derive(Debug, Args, Default, Clone)]
pub struct ProjectLimitArgs {
    /// Most tasks a plan may have.
    #[arg(long, value_name = "N")]
    pub max_tasks: Option<u32>,
    /// Attempts per task before it fails for good.
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Model turns per attempt.
    #[arg(long, value_name = "N")]
    pub max_turns: Option<u32>,
    /// Fix rounds after a failed verify.
    #[arg(long, value_name = "N")]
    pub max_fix_rounds: Option<u32>,
    /// Budget: the project ends `budget_exhausted` when its model calls cost this much (US dollars).
    #[arg(long, value_name = "USD")]
    pub max_cost_usd: Option<f64>,
    /// Budget: … or use this many tokens (input + output).
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u64>,
    /// Let the project's commands use the network (package installs); recorded in the manifest.
    #[arg(long)]
    pub allow_network: bool,
    /// The agent that does the project's tasks unless a task names one: a name under
    /// [agents] in agentswarm.toml, or `builtin` (docs/agents.md).
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
    /// A person reviews the work before it lands: `tasks` (each task's commit waits for
    /// `agentswarm review --approve` before it merges), `delivery` (the delivery branch
    /// waits), or `off` (docs/existing-repos.md).
    #[arg(long, value_name = "MODE", value_parser = parse_review)]
    pub review: Option<swarm_protocol::ReviewMode>,
}

impl From<&ProjectLimitArgs> for LimitArgs {
    fn from(p: &ProjectLimitArgs) -> Self {
        LimitArgs {
            max_workers: None,
            max_tasks: p.max_tasks,
            max_attempts: p.max_attempts,
            max_turns: p.max_turns,
            max_fix_rounds: p.max_fix_rounds,
            max_cost_usd: p.max_cost_usd,
            max_tokens: p.max_tokens,
            allow_network: p.allow_network,
            agent: p.agent.clone(),
            review: p.review,
        }
    }
}

/// Recording and replaying model calls (docs/providers.md).
#[derive(Debug, Args, Default, Clone)]
pub struct TapeArgs {
    /// Write every model request and answer to FILE as JSON lines (keys redacted).
    #[arg(long, value_name = "FILE", conflicts_with = "replay")]
    pub record: Option<PathBuf>,
    /// Answer every model request from a recording, with no network.
    #[arg(long, value_name = "FILE")]
    pub replay: Option<PathBuf>,
}

#[derive(Debug, Args, Default, Clone)]
pub struct OutputArgs {
    /// Print one JSON object as the last line on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also print every tool call of every worker.
    #[arg(long)]
    pub show_tools: bool,
    /// Plain progress lines even in a terminal (no live bars).
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Args, Default, Clone)]
pub struct LimitArgs {
    /// Workers running at once (over MAX_CONCURRENT_WORKERS).
    #[arg(long, value_name = "N")]
    pub max_workers: Option<u32>,
    /// Most tasks a plan may have.
    #[arg(long, value_name = "N")]
    pub max_tasks: Option<u32>,
    /// Attempts per task before it fails for good.
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Model turns per attempt.
    #[arg(long, value_name = "N")]
    pub max_turns: Option<u32>,
    /// Fix rounds after a failed verify.
    #[arg(long, value_name = "N")]
    pub max_fix_rounds: Option<u32>,
    /// Budget: the project ends `budget_exhausted` when its model calls cost this much (US dollars).
    #[arg(long, value_name = "USD")]
    pub max_cost_usd: Option<f64>,
    /// Budget: … or use this many tokens (input + output).
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u64>,
    /// Let the project's commands use the network (package installs); recorded in the manifest.
    #[arg(long)]
    pub allow_network: bool,
    /// The agent that does the project's tasks unless a task names one: a name under
    /// [agents] in agentswarm.toml, or `builtin` (docs/agents.md).
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
    /// A person reviews the work before it lands: `tasks` (each task's commit waits for
    /// `agentswarm review --approve` before it merges), `delivery` (the delivery branch
    /// waits), or `off` (docs/existing-repos.md).
    #[arg(long, value_name = "MODE", value_parser = parse_review)]
    pub review: Option<swarm_protocol::ReviewMode>,
}

/// A flag given again overrides the earlier one, so that a script's defaults
/// can be changed after it (`benches/nodes.sh -- --tasks 48`).
#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub struct BenchArgs {
    /// Tasks in the wide DAG (plus one verify task).
    #[arg(long, default_value_t = 40)]
    pub tasks: u32,
    /// Worker cap for the makespan run.
    #[arg(long, default_value_t = 4)]
    pub workers: u32,
    /// Fixed model latency for the makespan run, in milliseconds (real models
    /// take 1–10 s a turn; see docs/benchmarks.md for 200 ms).
    #[arg(long, default_value_t = 500)]
    pub latency_ms: u64,
    /// Model turns per task in the makespan run.
    #[arg(long, default_value_t = 2)]
    pub turns: u32,
    /// Requests per window in the rate-limit run (API_RATE_LIMIT_RPM).
    #[arg(long, default_value_t = 20)]
    pub rate_limit: u32,
    /// The rate-limit run's window in milliseconds (60000 in production;
    /// shorter here so that the run takes seconds).
    #[arg(long, default_value_t = 2000)]
    pub rate_window_ms: u64,
    /// Instead of the runs above: time setting up a project on a generated
    /// repository of this many files (`run --repo`: the checks, the copy of
    /// the base commit, the repository map) and report the map's size.
    #[arg(long, value_name = "N")]
    pub repo_files: Option<u32>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also run a plan of this many one-turn tasks at the cap and compare its
    /// orchestration cost per task with a 10-task plan's (0: skip).
    #[arg(long, default_value_t = 0, value_name = "TASKS")]
    pub scale: u32,
    /// Measure this agentswarm binary's `run` instead of this one's (to
    /// compare two builds with the same harness).
    #[arg(long, value_name = "PATH")]
    pub exe: Option<std::path::PathBuf>,
    /// Instead of the runs above: the makespan of --tasks tasks of --turns
    /// turns at --latency-ms with --workers here plus the worker nodes of
    /// FILE (`[nodes.NAME]` tables, agentswarm installed there), against a
    /// run here alone with as many slots; with the supervisor's CPU time
    /// and memory per task in both (benches/nodes.sh makes two hosts).
    #[arg(long, value_name = "FILE")]
    pub nodes: Option<std::path::PathBuf>,
    /// Instead of the runs above: `agentswarm serve` at --workers runs TASKS
    /// one-turn tasks as projects of 100 submitted one after the other,
    /// and reports its RSS after each project (docs/benchmarks.md).
    #[arg(long, value_name = "TASKS")]
    pub soak: Option<u32>,
}

fn parse_review(s: &str) -> Result<swarm_protocol::ReviewMode, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not a review mode; give off, tasks or delivery"))
}

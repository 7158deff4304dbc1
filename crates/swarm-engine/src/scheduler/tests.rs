//! The scheduler with a fake runner and a fake `main`: no worker binary, no
//! git, no model server. The engine is real (in-memory store, its slots and
//! gate), so what these tests read back is what `status` would show.

use super::*;
use crate::runner::{AttemptReport, Ended, RunnerKind};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use swarm_protocol::api::ProjectOptions;

/// What the fake runner does with one attempt.
#[derive(Debug, Clone)]
enum Step {
    /// Works `hold`, then commits.
    Commit,
    /// Works `hold`, then ends without a commit.
    End(Ended, &'static str),
    /// Works until the run is cancelled, then reports `interrupted`.
    UntilCancelled,
}

/// A log of what happened, in order: `start a/1`, `merge a/1`, `verify 1`, …
type Log = Arc<Mutex<Vec<String>>>;

fn push(log: &Log, line: String) {
    log.lock().unwrap().push(line);
}

struct FakeRunner {
    steps: Mutex<HashMap<String, VecDeque<Step>>>,
    hold: Duration,
    log: Log,
    prompts: Mutex<Vec<(String, u32, String)>>,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
    started: tokio::sync::Notify,
}

impl FakeRunner {
    fn new(log: &Log, hold: Duration, steps: &[(&str, Vec<Step>)]) -> Arc<Self> {
        Arc::new(Self {
            steps: Mutex::new(
                steps
                    .iter()
                    .map(|(t, s)| (t.to_string(), s.iter().cloned().collect()))
                    .collect(),
            ),
            hold,
            log: log.clone(),
            prompts: Mutex::new(Vec::new()),
            running: AtomicUsize::new(0),
            most_at_once: AtomicUsize::new(0),
            started: tokio::sync::Notify::new(),
        })
    }

    fn prompt(&self, task: &str, attempt: u32) -> String {
        let prompts = self.prompts.lock().unwrap();
        let found = prompts.iter().find(|(t, a, _)| t == task && *a == attempt);
        found.map(|p| p.2.clone()).unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl AttemptRunner for FakeRunner {
    fn kind(&self) -> RunnerKind {
        RunnerKind::Builtin
    }

    async fn run(self: Arc<Self>, job: AttemptJob, cancel: CancellationToken) -> AttemptReport {
        let task = job.task.to_string();
        let attempt = job.attempt;
        push(&self.log, format!("start {task}/{attempt}"));
        self.prompts
            .lock()
            .unwrap()
            .push((task.clone(), attempt, job.prompt.clone()));
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        let step = self
            .steps
            .lock()
            .unwrap()
            .get_mut(&task)
            .and_then(|s| s.pop_front())
            .unwrap_or(Step::Commit);
        let outcome = match step {
            Step::Commit => {
                tokio::time::sleep(self.hold).await;
                Outcome::Committed {
                    branch: format!("task/{task}/{attempt}"),
                    commit: format!("c-{task}-{attempt}"),
                    summary: format!("did {task}"),
                    turns: 3,
                    notes: Vec::new(),
                }
            }
            Step::End(how, reason) => {
                tokio::time::sleep(self.hold).await;
                Outcome::ended(how, reason, 2)
            }
            Step::UntilCancelled => {
                self.started.notify_one();
                cancel.cancelled().await;
                Outcome::ended(Ended::Interrupted, "interrupted: stopping", 1)
            }
        };
        self.running.fetch_sub(1, Ordering::SeqCst);
        AttemptReport {
            outcome,
            workspace: Some(Workspace {
                path: format!("/ws/{task}/{attempt}").into(),
            }),
        }
    }

    fn release(&self, workspace: Workspace, dirty: bool) {
        let how = if dirty { "dirty" } else { "clean" };
        push(
            &self.log,
            format!("release {} {how}", workspace.path.display()),
        );
    }
}

/// `main` without git: merges succeed unless a conflict is scripted for the
/// task, verify passes unless failing results are scripted.
struct FakeMain {
    events: Events,
    log: Log,
    conflicts: HashMap<String, VecDeque<Vec<String>>>,
    verify: VecDeque<Vec<CommandResult>>,
}

#[async_trait::async_trait]
impl Integration for FakeMain {
    fn merge(&mut self, job: MergeJob) -> Result<()> {
        push(&self.log, format!("merge {}/{}", job.task, job.attempt));
        let conflict = self
            .conflicts
            .get_mut(job.task.as_str())
            .and_then(|c| c.pop_front());
        let result = match conflict {
            Some(paths) => MergeOutcome::Conflict { paths },
            None => MergeOutcome::Merged {
                commit: format!("m-{}", job.task),
            },
        };
        let _ = self.events.send(Event::Merged {
            task: job.task,
            attempt: job.attempt,
            result: Ok(result),
        });
        Ok(())
    }

    fn verify(&mut self, job: VerifyJob) {
        push(&self.log, format!("verify {}", job.attempt));
        let results = self.verify.pop_front().unwrap_or_else(|| {
            job.commands
                .iter()
                .map(|c| result(c, true))
                .collect::<Vec<_>>()
        });
        let _ = self.events.send(Event::Verified {
            attempt: job.attempt,
            result: Ok(results),
        });
    }

    async fn stop_verify(&mut self) {}

    fn archive(&mut self, task: TaskRecord, workspace: Workspace, runner: Arc<dyn AttemptRunner>) {
        push(&self.log, format!("archive {}", task.id));
        runner.release(workspace, false);
    }

    fn archive_commit(&mut self, task: TaskRecord) {
        push(&self.log, format!("archive {} from its commit", task.id));
    }

    fn hold(&mut self, task: TaskId, attempt: u32, _commit: String) {
        push(&self.log, format!("hold {task}/{attempt}"));
        let _ = self.events.send(Event::Held {
            task,
            attempt,
            result: Ok(()),
        });
    }

    fn main_head(&self) -> Option<String> {
        Some("head".into())
    }

    async fn plan_fixes(
        &self,
        _request: String,
        _existing: &HashSet<TaskId>,
        _max_tasks: u32,
    ) -> std::result::Result<Plan, String> {
        Err("no planner in these tests".into())
    }
}

fn result(command: &str, passed: bool) -> CommandResult {
    CommandResult {
        command: command.into(),
        exit: if passed {
            "exit status: 0"
        } else {
            "exit status: 1"
        }
        .into(),
        passed,
        timed_out: false,
        duration_ms: 1,
        output: String::new(),
    }
}

/// A project of code tasks (`(id, dependencies)`) and a verify task after
/// all of them, on an engine with `cap` worker slots.
struct Project {
    home: tempfile::TempDir,
    _lock: crate::ProjectLock,
    engine: Engine,
    id: ProjectId,
    log: Log,
}

impl Project {
    fn new(cap: u32, tasks: &[(&str, &[&str])]) -> Self {
        let home = tempfile::tempdir().unwrap();
        let engine = engine(home.path(), cap);
        let mut plan_tasks: Vec<serde_json::Value> = tasks
            .iter()
            .map(|(id, deps)| serde_json::json!({"id": id, "title": id.to_uppercase(), "depends_on": deps}))
            .collect();
        let all: Vec<&str> = tasks.iter().map(|(id, _)| *id).collect();
        plan_tasks.push(serde_json::json!({
            "id": "check", "title": "Verify", "kind": "verify",
            "depends_on": all, "commands": ["make test"],
        }));
        let plan: Plan =
            serde_json::from_value(serde_json::json!({"name": "demo", "tasks": plan_tasks}))
                .unwrap();
        let lock = engine.create_project("a goal", Some(plan)).unwrap();
        let id = lock.id().clone();
        Self {
            home,
            _lock: lock,
            engine,
            id,
            log: Log::default(),
        }
    }

    /// Runs the scheduler until it has nothing left to do.
    async fn run(
        &self,
        limits: RunLimits,
        runner: Arc<FakeRunner>,
        main: impl FnOnce(Events) -> FakeMain,
        cancel: CancellationToken,
    ) {
        let mut s = Scheduler::new(
            &self.engine,
            &self.id,
            "a goal",
            limits,
            runner,
            main,
            cancel,
        )
        .unwrap();
        let stale = s.stale();
        s.reconcile(stale, &[], &Default::default()).unwrap();
        tokio::time::timeout(Duration::from_secs(20), s.schedule())
            .await
            .expect("the scheduler never finished")
            .unwrap();
    }

    fn main(&self) -> impl FnOnce(Events) -> FakeMain {
        self.main_with(&[], Vec::new())
    }

    fn main_with(
        &self,
        conflicts: &[(&str, Vec<Vec<String>>)],
        verify: Vec<Vec<CommandResult>>,
    ) -> impl FnOnce(Events) -> FakeMain {
        let log = self.log.clone();
        let conflicts: HashMap<String, VecDeque<Vec<String>>> = conflicts
            .iter()
            .map(|(t, c)| (t.to_string(), c.iter().cloned().collect()))
            .collect();
        move |events| FakeMain {
            events,
            log,
            conflicts,
            verify: verify.into(),
        }
    }

    fn task(&self, id: &str) -> TaskRecord {
        self.engine
            .store()
            .task(&self.id, &TaskId::from(id))
            .unwrap()
            .unwrap()
    }

    /// The outcomes of the task's attempts, in order.
    fn outcomes(&self, id: &str) -> Vec<AttemptOutcome> {
        let attempts = self.engine.store().attempts(&self.id, &TaskId::from(id));
        attempts.unwrap().iter().map(|a| a.outcome).collect()
    }

    fn position(&self, line: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("{line:?} not in the log: {log:?}"))
    }

    /// Waits (at most 10 s) until the project's `waiting` column (what
    /// `status` shows) holds something; returns it.
    async fn waiting(&self) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(w) = self.engine.store().project(&self.id).unwrap().waiting {
                return w;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the project never said why it waits"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What the resource gate reads next (see `engine`).
    fn machine(&self, available_mb: u64) {
        let stats = serde_json::json!({"available_mb": available_mb, "load1": 0.1});
        std::fs::write(self.home.path().join("stats.json"), stats.to_string()).unwrap();
    }

    fn count(&self, prefix: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.starts_with(prefix)).count()
    }
}

/// An engine on an in-memory store with `cap` slots, a gate that is open,
/// and no model server (nothing here calls one).
fn engine(home: &std::path::Path, cap: u32) -> Engine {
    let stats_file = home.join("stats.json");
    std::fs::write(&stats_file, r#"{"available_mb": 65536, "load1": 0.1}"#).unwrap();
    let path = std::path::PathBuf::from("/x/agentswarm.toml");
    let toml = "[providers.local]\nbase_url = \"http://127.0.0.1:1/v1\"\n\
                [models.worker]\nprovider = \"local\"\nmodel = \"m-1\"\n";
    let file = swarm_config::FileConfig::parse(toml, &path).unwrap();
    let cap = cap.to_string();
    let env = |k: &str| -> Option<String> {
        match k {
            "AGENTSWARM_HOME" => Some(home.display().to_string()),
            "AGENTSWARM_GATE_STATS_FILE" => Some(stats_file.display().to_string()),
            "MAX_CONCURRENT_WORKERS" => Some(cap.clone()),
            "AGENTSWARM_SANDBOX" => Some("off".into()),
            _ => None,
        }
    };
    let config =
        swarm_config::Config::resolve(Some((file, path)), &env, &Default::default()).unwrap();
    let store: Arc<dyn swarm_store::Store> =
        Arc::new(swarm_store::SqliteStore::in_memory().unwrap());
    let gateway = crate::Gateway::from_config(&config, store.clone(), crate::Tape::Live).unwrap();
    let settings = crate::EngineSettings {
        worker_program: "/nonexistent/agentswarm".into(),
        worker_args: Vec::new(),
        shutdown_grace: Duration::from_secs(1),
    };
    Engine::new(config, store, gateway, settings)
}

fn limits(max_attempts: u32) -> RunLimits {
    crate::operator::apply_options(
        RunLimits::default(),
        &ProjectOptions {
            max_attempts: Some(max_attempts),
            max_fix_rounds: Some(0),
            ..Default::default()
        },
    )
}

const QUICK: Duration = Duration::from_millis(5);

#[tokio::test]
async fn dependents_start_only_after_their_dependencies_merged() {
    let p = Project::new(
        4,
        &[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])],
    );
    let runner = FakeRunner::new(&p.log, QUICK, &[]);
    p.run(limits(3), runner, p.main(), CancellationToken::new())
        .await;

    for t in ["a", "b", "c", "d", "check"] {
        assert_eq!(p.task(t).state, TaskState::Done, "task {t}");
    }
    assert!(p.position("merge a/1") < p.position("start b/1"));
    assert!(p.position("merge a/1") < p.position("start c/1"));
    assert!(p.position("merge b/1") < p.position("start d/1"));
    assert!(p.position("merge c/1") < p.position("start d/1"));
    assert!(p.position("merge d/1") < p.position("verify 1"));
    // Each task ran once and its worktree was archived, then given back clean.
    assert_eq!(p.count("start "), 4);
    assert_eq!(p.outcomes("d"), vec![AttemptOutcome::Merged]);
    assert!(p.position("archive d") < p.position("release /ws/d/1 clean"));
    assert_eq!(p.task("check").merge_commit.as_deref(), Some("head"));
}

#[tokio::test]
async fn a_task_whose_dependency_failed_is_blocked_and_never_runs() {
    let p = Project::new(4, &[("a", &[]), ("b", &["a"]), ("c", &[])]);
    let gave_up = Step::End(Ended::Failed, "the agent gave up");
    let runner = FakeRunner::new(&p.log, QUICK, &[("a", vec![gave_up.clone(), gave_up])]);
    p.run(limits(2), runner, p.main(), CancellationToken::new())
        .await;

    let a = p.task("a");
    assert_eq!(a.state, TaskState::Failed);
    assert_eq!(a.attempts_counted, 2);
    assert_eq!(
        a.last_error.as_deref(),
        Some("the agent gave up (attempt 2; no attempts left of 2)")
    );
    let b = p.task("b");
    assert_eq!(b.state, TaskState::Blocked);
    assert_eq!(
        b.last_error.as_deref(),
        Some("blocked: dependency a is failed")
    );
    assert_eq!(p.count("start b/"), 0);
    assert_eq!(p.task("c").state, TaskState::Done);
    // Verify depends on every task: blocked too, and never run.
    assert_eq!(p.task("check").state, TaskState::Blocked);
    assert_eq!(p.count("verify "), 0);
    // An attempt without a commit gives its worktree back as dirty.
    assert_eq!(p.count("release /ws/a/1 dirty"), 1);
}

#[tokio::test]
async fn a_failed_attempt_runs_again_and_counts_against_max_attempts() {
    let p = Project::new(2, &[("a", &[])]);
    let crashed = Step::End(Ended::Crashed, "worker process ended (exit code 1)");
    let runner = FakeRunner::new(&p.log, QUICK, &[("a", vec![crashed])]);
    p.run(
        limits(3),
        runner.clone(),
        p.main(),
        CancellationToken::new(),
    )
    .await;

    let a = p.task("a");
    assert_eq!(a.state, TaskState::Done);
    assert_eq!((a.attempt, a.attempts_counted), (2, 1));
    assert_eq!(
        p.outcomes("a"),
        vec![AttemptOutcome::Crashed, AttemptOutcome::Merged]
    );
    assert!(runner.prompt("a", 1).starts_with("Task a: A\nAttempt: 1\n"));
    assert!(runner
        .prompt("a", 2)
        .contains("The previous attempt failed: worker process ended (exit code 1)"));
}

#[tokio::test]
async fn every_kind_of_failure_but_an_interruption_uses_up_an_attempt() {
    let p = Project::new(2, &[("a", &[])]);
    let runner = FakeRunner::new(
        &p.log,
        QUICK,
        &[(
            "a",
            vec![
                Step::End(Ended::TimedOut, "timeout"),
                Step::End(Ended::MemoryLimit, "over the memory limit"),
                Step::End(Ended::Stuck, "no progress"),
            ],
        )],
    );
    p.run(limits(3), runner, p.main(), CancellationToken::new())
        .await;

    let a = p.task("a");
    assert_eq!(a.state, TaskState::Failed);
    assert_eq!((a.attempt, a.attempts_counted), (3, 3));
    assert_eq!(
        p.outcomes("a"),
        vec![
            AttemptOutcome::Timeout,
            AttemptOutcome::MemoryLimit,
            AttemptOutcome::Stuck
        ]
    );
}

#[tokio::test]
async fn the_swarms_own_setup_failures_are_retried_uncounted_a_few_times() {
    // One attempt allowed: two setup failures in a row do not use it up.
    let p = Project::new(2, &[("a", &[]), ("b", &[])]);
    let setup = Step::End(
        Ended::Setup,
        "cannot prepare the worktree: fatal: commondir",
    );
    let runner = FakeRunner::new(
        &p.log,
        QUICK,
        &[
            ("a", vec![setup.clone(), setup.clone()]),
            // Setup failing for good: after the retries it counts.
            (
                "b",
                vec![setup.clone(), setup.clone(), setup.clone(), setup],
            ),
        ],
    );
    p.run(limits(1), runner, p.main(), CancellationToken::new())
        .await;

    let a = p.task("a");
    assert_eq!(a.state, TaskState::Done);
    assert_eq!((a.attempt, a.attempts_counted), (3, 0));
    assert_eq!(
        p.outcomes("a"),
        vec![
            AttemptOutcome::Failed,
            AttemptOutcome::Failed,
            AttemptOutcome::Merged
        ]
    );
    let b = p.task("b");
    assert_eq!(b.state, TaskState::Failed);
    assert_eq!((b.attempt, b.attempts_counted), (3, 1));
    assert!(
        b.last_error
            .as_deref()
            .unwrap()
            .contains("no attempts left"),
        "{:?}",
        b.last_error
    );
}

#[tokio::test]
async fn interrupted_attempts_are_not_counted() {
    // One attempt allowed: were interruptions counted, the task would fail.
    let p = Project::new(2, &[("a", &[])]);
    let interrupted = Step::End(Ended::Interrupted, "interrupted: the project halted");
    let runner = FakeRunner::new(
        &p.log,
        QUICK,
        &[("a", vec![interrupted.clone(), interrupted])],
    );
    p.run(limits(1), runner, p.main(), CancellationToken::new())
        .await;

    let a = p.task("a");
    assert_eq!(a.state, TaskState::Done);
    assert_eq!((a.attempt, a.attempts_counted), (3, 0));
    assert_eq!(
        p.outcomes("a"),
        vec![
            AttemptOutcome::Interrupted,
            AttemptOutcome::Interrupted,
            AttemptOutcome::Merged
        ]
    );
}

#[tokio::test]
async fn a_merge_conflict_runs_the_task_again_with_the_conflicting_paths() {
    let p = Project::new(2, &[("a", &[])]);
    let runner = FakeRunner::new(&p.log, QUICK, &[]);
    let main = p.main_with(&[("a", vec![vec!["src/lib.rs".into()]])], Vec::new());
    p.run(limits(3), runner.clone(), main, CancellationToken::new())
        .await;

    let a = p.task("a");
    assert_eq!(a.state, TaskState::Done);
    assert_eq!((a.attempt, a.attempts_counted), (2, 1));
    assert_eq!(
        p.outcomes("a"),
        vec![AttemptOutcome::Conflict, AttemptOutcome::Merged]
    );
    let again = runner.prompt("a", 2);
    assert!(
        again.contains("could not be merged") && again.contains("src/lib.rs"),
        "{again}"
    );
    // The conflicting attempt's commit was whole: its worktree goes back clean.
    assert!(p.position("merge a/1") < p.position("release /ws/a/1 clean"));
    assert!(p.position("release /ws/a/1 clean") < p.position("start a/2"));
}

#[tokio::test]
async fn conflicts_use_up_attempts_like_other_failures() {
    let p = Project::new(2, &[("a", &[])]);
    let runner = FakeRunner::new(&p.log, QUICK, &[]);
    let paths = vec!["README.md".to_owned()];
    let main = p.main_with(&[("a", vec![paths.clone(), paths])], Vec::new());
    p.run(limits(2), runner, main, CancellationToken::new())
        .await;

    let a = p.task("a");
    assert_eq!(a.state, TaskState::Failed);
    assert_eq!(
        a.last_error.as_deref(),
        Some("merge conflict in README.md; re-running on the new main (attempt 2; no attempts left of 2)")
    );
    assert_eq!(a.conflict_paths, vec!["README.md".to_owned()]);
}

#[tokio::test]
async fn no_more_attempts_run_at_once_than_the_cap() {
    let tasks: Vec<(&str, &[&str])> = vec![
        ("t1", &[]),
        ("t2", &[]),
        ("t3", &[]),
        ("t4", &[]),
        ("t5", &[]),
        ("t6", &[]),
    ];
    let p = Project::new(2, &tasks);
    let runner = FakeRunner::new(&p.log, Duration::from_millis(50), &[]);
    p.run(
        limits(3),
        runner.clone(),
        p.main(),
        CancellationToken::new(),
    )
    .await;

    for (t, _) in &tasks {
        assert_eq!(p.task(t).state, TaskState::Done, "task {t}");
    }
    assert_eq!(runner.most_at_once.load(Ordering::SeqCst), 2);
    // Slots are free again once the run is over.
    assert_eq!(p.engine.running_workers(), 0);
}

#[tokio::test]
async fn a_run_whose_slots_are_all_taken_waits_says_why_and_starts_when_one_frees() {
    let p = Project::new(1, &[("a", &[])]);
    // Another project holds the only slot.
    let held = p.engine.slots.clone().try_acquire_owned().unwrap();
    let runner = FakeRunner::new(&p.log, QUICK, &[]);
    let other_project = async {
        let why = p.waiting().await;
        assert_eq!(p.count("start "), 0, "started without a slot");
        drop(held);
        why
    };
    let (why, ()) = tokio::join!(
        other_project,
        p.run(limits(3), runner, p.main(), CancellationToken::new())
    );

    assert_eq!(
        why,
        "waiting: all 1 worker slots (MAX_CONCURRENT_WORKERS) are in use by other projects"
    );
    assert_eq!(p.task("a").state, TaskState::Done);
    assert_eq!(p.engine.store().project(&p.id).unwrap().waiting, None);
}

#[tokio::test]
async fn a_closed_resource_gate_holds_dispatch_until_it_opens() {
    let p = Project::new(2, &[("a", &[]), ("b", &[])]);
    p.machine(100);
    let runner = FakeRunner::new(&p.log, QUICK, &[]);
    let machine = async {
        let why = p.waiting().await;
        assert_eq!(p.count("start "), 0, "started while the gate was closed");
        p.machine(65536);
        why
    };
    let (why, ()) = tokio::join!(
        machine,
        p.run(limits(3), runner, p.main(), CancellationToken::new())
    );

    assert_eq!(
        why,
        "waiting: free memory 100 MB < 1024 MB (MIN_FREE_MEMORY_MB)"
    );
    assert_eq!(p.task("a").state, TaskState::Done);
    assert_eq!(p.task("b").state, TaskState::Done);
    assert_eq!(p.engine.store().project(&p.id).unwrap().waiting, None);
}

#[tokio::test]
async fn a_stop_interrupts_running_attempts_and_a_later_run_carries_on() {
    let p = Project::new(2, &[("a", &[]), ("b", &["a"])]);
    let runner = FakeRunner::new(&p.log, QUICK, &[("a", vec![Step::UntilCancelled])]);
    let cancel = CancellationToken::new();
    let stop = {
        let (runner, cancel) = (runner.clone(), cancel.clone());
        tokio::spawn(async move {
            runner.started.notified().await;
            cancel.cancel();
        })
    };
    p.run(limits(1), runner.clone(), p.main(), cancel).await;
    stop.await.unwrap();

    // Stopped, not failed: the attempt is recorded interrupted and not counted.
    let a = p.task("a");
    assert_eq!(a.state, TaskState::Ready);
    assert_eq!((a.attempt, a.attempts_counted), (1, 0));
    assert_eq!(p.outcomes("a"), vec![AttemptOutcome::Interrupted]);
    assert_eq!(p.task("b").state, TaskState::Pending);
    assert_eq!(p.count("start "), 1);

    // The next run (`resume`) starts the task again and finishes the project.
    p.run(limits(1), runner, p.main(), CancellationToken::new())
        .await;
    assert_eq!(p.task("a").state, TaskState::Done);
    assert_eq!(p.task("a").attempt, 2);
    assert_eq!(p.task("b").state, TaskState::Done);
    assert_eq!(p.task("check").state, TaskState::Done);
}

#[tokio::test]
async fn a_stale_running_task_goes_back_to_ready_unless_its_commit_merged() {
    let p = Project::new(2, &[("a", &[]), ("b", &[])]);
    let running = TaskUpdate {
        from: vec![TaskState::Pending],
        to: Some(TaskState::Running),
        attempt: Some(1),
        ..Default::default()
    };
    for t in ["a", "b"] {
        assert!(p
            .engine
            .store()
            .update_task(&p.id, &TaskId::from(t), &running)
            .unwrap());
    }
    let runner = FakeRunner::new(&p.log, QUICK, &[]);
    let cancel = CancellationToken::new();
    let mut s = Scheduler::new(
        &p.engine,
        &p.id,
        "a goal",
        limits(3),
        runner,
        p.main(),
        cancel,
    )
    .unwrap();
    let stale = s.stale();
    assert_eq!(stale.len(), 2);
    let on_main = swarm_git::TaskCommit {
        sha: "abc".into(),
        task: "a".into(),
        attempt: 1,
    };
    s.reconcile(stale, &[on_main], &Default::default()).unwrap();

    assert_eq!(p.task("a").state, TaskState::Done);
    assert_eq!(p.task("a").commit.as_deref(), Some("abc"));
    let b = p.task("b");
    assert_eq!(b.state, TaskState::Ready);
    assert_eq!(b.attempts_counted, 0);
    assert_eq!(p.outcomes("b"), vec![AttemptOutcome::Interrupted]);
}

#[tokio::test]
async fn a_failing_verify_without_fix_rounds_left_fails_the_project_s_verify() {
    let p = Project::new(2, &[("a", &[])]);
    let runner = FakeRunner::new(&p.log, QUICK, &[]);
    let main = p.main_with(&[], vec![vec![result("make test", false)]]);
    p.run(limits(3), runner, main, CancellationToken::new())
        .await;

    assert_eq!(p.task("a").state, TaskState::Done);
    let check = p.task("check");
    assert_eq!(check.state, TaskState::Failed);
    assert_eq!(
        check.last_error.as_deref(),
        Some("verify failed: `make test` (exit status: 1); no fix rounds left of 0")
    );
    assert_eq!(p.count("verify "), 1);
}

#[test]
fn ready_and_blocked_rules() {
    let p = Project::new(1, &[("a", &[]), ("b", &["a"]), ("c", &["b"])]);
    let mut tasks: BTreeMap<TaskId, TaskRecord> = ["a", "b", "c", "check"]
        .iter()
        .map(|t| (TaskId::from(*t), p.task(t)))
        .collect();
    let order: Vec<TaskId> = tasks.keys().cloned().collect();
    let changes = ready_or_blocked(&order, &tasks);
    assert_eq!(changes, vec![(TaskId::from("a"), TaskState::Ready, None)]);

    if let Some(a) = tasks.get_mut(&TaskId::from("a")) {
        a.state = TaskState::Cancelled;
    }
    let changes = ready_or_blocked(&order, &tasks);
    let blocked = |t: &str| {
        (
            TaskId::from(t),
            TaskState::Blocked,
            Some("blocked: dependency a is cancelled".to_owned()),
        )
    };
    assert_eq!(changes, vec![blocked("b"), blocked("check")]);
}

#[test]
fn retry_rule() {
    assert_eq!(after_failure(0, true, 3), (TaskState::Ready, 1));
    assert_eq!(after_failure(2, true, 3), (TaskState::Failed, 3));
    assert_eq!(after_failure(2, false, 3), (TaskState::Ready, 2));
    assert_eq!(after_failure(0, true, 1), (TaskState::Failed, 1));
}

/// `review = "tasks"`: a committed attempt is held and waits in `review`
/// (its dependent waits too) until a decision arrives through the store,
/// as from another process: a rejection runs it again with the comment in
/// the prompt (not counted), an approval merges it.
#[tokio::test]
async fn review_holds_a_commit_until_a_person_decides() {
    let p = Project::new(2, &[("a", &[]), ("b", &["a"])]);
    let runner = FakeRunner::new(&p.log, QUICK, &[]);
    let store = p.engine.store().clone();
    let id = p.id.clone();
    let person = tokio::spawn(async move {
        let wait = |task: &'static str, attempt: u32| {
            let (store, id) = (store.clone(), id.clone());
            async move {
                loop {
                    let t = store.task(&id, &TaskId::from(task)).unwrap().unwrap();
                    if t.state == TaskState::Review && t.attempt == attempt {
                        return t;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let a = wait("a", 1).await;
        assert_eq!(a.commit.as_deref(), Some("c-a-1"));
        let attempts = store.attempts(&id, &a.id).unwrap();
        assert_eq!(attempts[0].outcome, AttemptOutcome::Review);
        assert_eq!(attempts[0].commit.as_deref(), Some("c-a-1"));
        let b = store.task(&id, &TaskId::from("b")).unwrap().unwrap();
        assert_eq!(b.state, TaskState::Pending, "a dependent waits");
        // A decision for another attempt changes nothing.
        let reject = swarm_store::ReviewDecision::Reject {
            comment: "use tabs".into(),
        };
        assert!(!store.decide_review(&id, &a.id, 2, &reject).unwrap());
        assert!(store.decide_review(&id, &a.id, 1, &reject).unwrap());
        assert!(!store.decide_review(&id, &a.id, 1, &reject).unwrap());
        let a = wait("a", 2).await;
        let approve = swarm_store::ReviewDecision::Approve;
        assert!(store.decide_review(&id, &a.id, 2, &approve).unwrap());
        let b = wait("b", 1).await;
        assert!(store.decide_review(&id, &b.id, 1, &approve).unwrap());
    });
    let mut l = limits(1);
    l.review = swarm_protocol::ReviewMode::Tasks;
    p.run(l, runner.clone(), p.main(), CancellationToken::new())
        .await;
    person.await.unwrap();

    for t in ["a", "b", "check"] {
        assert_eq!(p.task(t).state, TaskState::Done, "task {t}");
    }
    // With max_attempts 1 the rejected attempt would have failed the task
    // had it counted.
    let a = p.task("a");
    assert_eq!((a.attempt, a.attempts_counted), (2, 0));
    assert_eq!(a.review_comment, None, "cleared once merged");
    let attempts = p.engine.store().attempts(&p.id, &a.id).unwrap();
    assert_eq!(attempts[0].outcome, AttemptOutcome::Rejected);
    assert_eq!(attempts[1].outcome, AttemptOutcome::Merged);
    assert!(
        runner.prompt("a", 2).contains("use tabs"),
        "{}",
        runner.prompt("a", 2)
    );
    assert!(!runner.prompt("a", 1).contains("use tabs"));
    // Held, never merged while waiting; merged from the review branch.
    assert_eq!(p.count("merge a/1"), 0);
    assert!(p.position("hold a/1") < p.position("start a/2"));
    assert!(p.position("merge a/2") < p.position("start b/1"));
    assert!(p.position("hold b/1") < p.position("merge b/1"));
    // The worktree goes back at once (clean); the archive is written from the commit.
    assert!(p.position("release /ws/a/1 clean") < p.position("start a/2"));
    assert_eq!(p.count("archive a from its commit"), 1);
}

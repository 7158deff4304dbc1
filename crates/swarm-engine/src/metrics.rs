//! What the operator sees of a running engine: the live worker table, the
//! swarm status snapshot (`Engine::swarm_status`) and the Prometheus metrics
//! (`Engine::metrics_text`), for the HTTP API, the dashboard and the terminal
//! view.
//!
//! The hot path only touches atomics and one small map: a model call adds to
//! a few counters, an attempt's end is one histogram observation, a tool
//! call updates one row of the live table. Everything that needs the store
//! or `/proc` (ready tasks, projects per state, the gate's readings) is read
//! when the metrics are rendered or the status is asked for.
//!
//! Label values are role, provider and model names, task kinds, outcomes
//! and states: never keys, goals or prompts.

use crate::gate::GateStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use swarm_protocol::{AttemptOutcome, ProjectId, ProjectState, TaskId, TaskKind, TaskState};

/// A worker process (or a verify run) the engine runs now.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LiveWorker {
    pub project: ProjectId,
    /// The task it works on (the verify task for a verify run).
    pub task: TaskId,
    pub attempt: u32,
    /// The worker's process id once it is spawned; `None` before that and
    /// for verify runs.
    pub pid: Option<u32>,
    /// When the attempt started (ms since the Unix epoch).
    pub started_ms: i64,
    /// The model turn it is on (0 before the first model call).
    pub turns: u32,
    /// The last tool the agent called (`None` before the first, and for
    /// verify runs).
    pub last_tool: Option<String>,
}

/// The engine's table of the workers it runs now. Rows are added by
/// [`LiveTable::enter`] and removed when the returned [`LiveEntry`] is
/// dropped, however the attempt ends.
#[derive(Debug, Default)]
pub(crate) struct LiveTable {
    next: AtomicU64,
    rows: Mutex<HashMap<u64, LiveWorker>>,
}

impl LiveTable {
    fn rows(&self) -> MutexGuard<'_, HashMap<u64, LiveWorker>> {
        // Every update is a few plain assignments: a panicking holder
        // cannot leave a row half-written in a way that matters.
        self.rows.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a row for an attempt that starts now.
    pub(crate) fn enter(
        self: &Arc<Self>,
        project: &ProjectId,
        task: &TaskId,
        attempt: u32,
    ) -> LiveEntry {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.rows().insert(
            key,
            LiveWorker {
                project: project.clone(),
                task: task.clone(),
                attempt,
                pid: None,
                started_ms: swarm_store::now_ms(),
                turns: 0,
                last_tool: None,
            },
        );
        LiveEntry {
            table: self.clone(),
            key,
        }
    }

    /// Every row, sorted by project, then start time.
    pub(crate) fn snapshot(&self) -> Vec<LiveWorker> {
        let mut rows: Vec<LiveWorker> = self.rows().values().cloned().collect();
        rows.sort_by(|a, b| {
            (&a.project, a.started_ms, &a.task, a.attempt).cmp(&(
                &b.project,
                b.started_ms,
                &b.task,
                b.attempt,
            ))
        });
        rows
    }

    /// Rows now.
    pub(crate) fn len(&self) -> usize {
        self.rows().len()
    }

    fn update(&self, key: u64, f: impl FnOnce(&mut LiveWorker)) {
        if let Some(row) = self.rows().get_mut(&key) {
            f(row);
        }
    }
}

/// One row of the [`LiveTable`]; dropping it removes the row.
#[derive(Debug)]
pub struct LiveEntry {
    table: Arc<LiveTable>,
    key: u64,
}

impl LiveEntry {
    /// The worker process is spawned.
    pub fn set_pid(&self, pid: u32) {
        self.table.update(self.key, |r| r.pid = Some(pid));
    }

    /// The worker asks for the model's answer of `turn`.
    pub fn turn(&self, turn: u32) {
        self.table.update(self.key, |r| r.turns = turn);
    }

    /// The agent called `tool` on `turn`.
    pub fn tool(&self, turn: u32, tool: &str) {
        self.table.update(self.key, |r| {
            r.turns = turn;
            match &mut r.last_tool {
                Some(t) => {
                    t.clear();
                    t.push_str(tool);
                }
                None => r.last_tool = Some(tool.to_owned()),
            }
        });
    }
}

impl Drop for LiveEntry {
    fn drop(&mut self) {
        self.table.rows().remove(&self.key);
    }
}

/// The shared model-request limiter (`API_RATE_LIMIT_RPM`) as it stands.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RateLimitStatus {
    /// Requests that may start in any window of about a minute; 0 = off.
    pub rpm: u32,
    /// Requests that started in the window ending now.
    pub started_in_window: u32,
    /// Requests waiting for a slot now.
    pub waiting: u32,
    /// Time model calls spent waiting for the rate limits (the request
    /// limiter and the providers' token limits), summed over the calls that
    /// ended since start-up; the same figure as
    /// `agentswarm_rate_limit_wait_seconds_total`.
    pub wait_seconds_total: f64,
}

/// A snapshot of the whole swarm, for the status API and views.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SwarmStatus {
    /// Workers and verify runs running now, over all projects (the rows of
    /// `Engine::live_workers`).
    pub workers_running: u32,
    /// Worker slots over all nodes: `MAX_CONCURRENT_WORKERS` here plus each
    /// node's `max_workers`.
    pub workers_cap: u32,
    /// Tasks in state `ready` over every project that is not finished.
    pub ready_tasks: u32,
    /// Tasks waiting for a person's decision (state `review`) over every
    /// project that is not finished.
    #[serde(default)]
    pub review_tasks: u32,
    /// The resource gate and what it reads now.
    pub gate: GateStatus,
    /// The shared model-request limiter.
    pub rate_limit: RateLimitStatus,
    /// Providers that answered that their quota is used up: no work that
    /// needs them is dispatched until their reset (docs/providers.md).
    #[serde(default)]
    pub quota_blocked: Vec<QuotaStatus>,
    /// The machines attempts run on: `local`, then the `[nodes.NAME]`.
    #[serde(default)]
    pub nodes: Vec<crate::nodes::NodeStatus>,
}

/// A provider out of quota, as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuotaStatus {
    pub provider: String,
    /// When its calls go out again (ms since the Unix epoch).
    pub until_ms: i64,
    /// Seconds left until then (at least 1 while it holds).
    pub resets_in_secs: u64,
    /// What the provider said (keys masked).
    pub reason: String,
}

impl QuotaStatus {
    pub fn of(b: &crate::gateway::QuotaBlock, now: std::time::SystemTime) -> Self {
        let left = b.until.duration_since(now).unwrap_or_default();
        let until_ms = b
            .until
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Self {
            provider: b.provider.clone(),
            until_ms,
            resets_in_secs: left.as_secs().max(1),
            reason: b.reason.clone(),
        }
    }
}

/// Which text format [`Metrics::render`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricsFormat {
    /// The Prometheus text exposition format, version 0.0.4: what every
    /// scraper reads.
    #[default]
    Prometheus,
    /// OpenMetrics 1.0.0 text (ends with `# EOF`).
    OpenMetrics,
}

/// The `Content-Type` of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `Content-Type` of the Prometheus text format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

impl MetricsFormat {
    /// OpenMetrics when the request's `Accept` header asks for it, else
    /// the Prometheus text format.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Prometheus,
        }
    }

    /// The `Content-Type` to serve the text with.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => PROMETHEUS_CONTENT_TYPE,
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// Rendered metrics and the `Content-Type` to serve them with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsText {
    pub body: String,
    pub content_type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    role: String,
    provider: String,
    model: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    role: String,
    provider: String,
    model: String,
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    role: String,
    provider: String,
    model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
    model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaLabels {
    provider: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// 1 s, 2 s, 4 s … 8192 s (about 2 h 16 min): attempts and tasks take
/// seconds to the two-hour range.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

/// One model call as the gateway records it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ModelCall<'a> {
    pub role: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    /// `ok` or the error kind.
    pub outcome: &'a str,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: Option<f64>,
    pub retries: u32,
    pub waited: Duration,
}

/// The engine's Prometheus registry and metric families. One per engine
/// (shared with its gateway), behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    workers_running: Gauge,
    workers_max: Gauge,
    ready_tasks: Gauge,
    review_tasks: Gauge,
    gate_open: Gauge,
    gate_free_memory_mb: FloatGauge,
    gate_load_average: FloatGauge,
    model_calls: Family<CallLabels, Counter>,
    model_tokens: Family<TokenLabels, Counter>,
    model_cost: Family<ModelLabels, FloatCounter>,
    model_retries: Family<ProviderLabels, Counter>,
    rate_limit_wait: FloatCounter,
    rate_limit_waiting: Gauge,
    rate_limit_rpm: Gauge,
    quota_blocked: Family<QuotaLabels, Gauge>,
    node_slots: Family<NodeLabels, Gauge>,
    node_busy: Family<NodeLabels, Gauge>,
    node_up: Family<NodeLabels, Gauge>,
    /// Providers that were ever out of quota (their series go back to 0).
    quota_seen: Mutex<std::collections::BTreeSet<String>>,
    attempt_duration: Histograms<AttemptLabels>,
    task_duration: Histograms<KindLabels>,
    projects: Family<StateLabels, Gauge>,
    tasks_finished: Family<StateLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every family registered. Counters are registered
    /// without their `_total` suffix: the encoders add it.
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            workers_running: Gauge::default(),
            workers_max: Gauge::default(),
            ready_tasks: Gauge::default(),
            review_tasks: Gauge::default(),
            gate_open: Gauge::default(),
            gate_free_memory_mb: FloatGauge::default(),
            gate_load_average: FloatGauge::default(),
            model_calls: Family::default(),
            model_tokens: Family::default(),
            model_cost: Family::default(),
            model_retries: Family::default(),
            rate_limit_wait: FloatCounter::default(),
            rate_limit_waiting: Gauge::default(),
            rate_limit_rpm: Gauge::default(),
            quota_blocked: Family::default(),
            node_slots: Family::default(),
            node_busy: Family::default(),
            node_up: Family::default(),
            quota_seen: Mutex::default(),
            attempt_duration: Family::new_with_constructor(duration_histogram),
            task_duration: Family::new_with_constructor(duration_histogram),
            projects: Family::default(),
            tasks_finished: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "agentswarm_workers_running",
            "Workers and verify runs running now",
            m.workers_running.clone(),
        );
        r.register(
            "agentswarm_workers_max",
            "Workers allowed at once (MAX_CONCURRENT_WORKERS)",
            m.workers_max.clone(),
        );
        r.register(
            "agentswarm_ready_tasks",
            "Tasks ready to start over all unfinished projects",
            m.ready_tasks.clone(),
        );
        r.register(
            "agentswarm_review_tasks",
            "Tasks waiting for a person's review (state review) over all unfinished projects",
            m.review_tasks.clone(),
        );
        r.register(
            "agentswarm_gate_open",
            "1 when the resource gate lets new workers start, else 0",
            m.gate_open.clone(),
        );
        r.register(
            "agentswarm_gate_free_memory_mb",
            "Available memory the resource gate reads, in MB (NaN when unreadable)",
            m.gate_free_memory_mb.clone(),
        );
        r.register(
            "agentswarm_gate_load_average",
            "1-minute load average the resource gate reads (NaN when unreadable)",
            m.gate_load_average.clone(),
        );
        r.register(
            "agentswarm_model_calls",
            "Model calls by role, provider, model and outcome",
            m.model_calls.clone(),
        );
        r.register(
            "agentswarm_model_tokens",
            "Model tokens by role, provider, model and direction",
            m.model_tokens.clone(),
        );
        r.register(
            "agentswarm_model_cost_usd",
            "Cost of model calls in USD, from the configured prices",
            m.model_cost.clone(),
        );
        r.register(
            "agentswarm_model_retries",
            "HTTP requests sent beyond the first of a call (retries, shrinks, fallbacks)",
            m.model_retries.clone(),
        );
        r.register(
            "agentswarm_rate_limit_wait_seconds",
            "Time model calls spent waiting for the rate limits, in seconds",
            m.rate_limit_wait.clone(),
        );
        r.register(
            "agentswarm_rate_limit_waiting",
            "Model requests waiting for the request rate limit now",
            m.rate_limit_waiting.clone(),
        );
        r.register(
            "agentswarm_rate_limit_rpm",
            "Model requests allowed to start per minute (API_RATE_LIMIT_RPM; 0 = off)",
            m.rate_limit_rpm.clone(),
        );
        r.register(
            "agentswarm_provider_quota_blocked_seconds",
            "Seconds until a provider that answered that its quota is used up resets (0: not blocked)",
            m.quota_blocked.clone(),
        );
        r.register(
            "agentswarm_node_slots",
            "Attempts a worker node runs at once (local: MAX_CONCURRENT_WORKERS)",
            m.node_slots.clone(),
        );
        r.register(
            "agentswarm_node_busy",
            "Attempts (and verify runs) running on a worker node now",
            m.node_busy.clone(),
        );
        r.register(
            "agentswarm_node_up",
            "Whether a worker node answers and may take attempts (1) or not (0)",
            m.node_up.clone(),
        );
        r.register(
            "agentswarm_attempt_duration_seconds",
            "Duration of task attempts, start to end, by task kind and outcome",
            m.attempt_duration.clone(),
        );
        r.register(
            "agentswarm_task_duration_seconds",
            "Duration of tasks, first start to done, by task kind",
            m.task_duration.clone(),
        );
        r.register(
            "agentswarm_projects",
            "Projects in the store by state",
            m.projects.clone(),
        );
        r.register(
            "agentswarm_tasks_finished",
            "Tasks that reached done, failed or blocked in this process",
            m.tasks_finished.clone(),
        );
        m
    }

    /// Adds one model call (what the gateway stores in `model_calls`).
    pub(crate) fn model_call(&self, call: &ModelCall<'_>) {
        let (role, provider, model) = (call.role, call.provider, call.model);
        self.model_calls
            .get_or_create(&CallLabels {
                role: role.to_owned(),
                provider: provider.to_owned(),
                model: model.to_owned(),
                outcome: call.outcome.to_owned(),
            })
            .inc();
        for (direction, tokens) in [("input", call.input_tokens), ("output", call.output_tokens)] {
            self.model_tokens
                .get_or_create(&TokenLabels {
                    role: role.to_owned(),
                    provider: provider.to_owned(),
                    model: model.to_owned(),
                    direction,
                })
                .inc_by(tokens);
        }
        // Calls of a model without a price add nothing, but show the series.
        let cost = call
            .cost_usd
            .filter(|c| c.is_finite() && *c > 0.0)
            .unwrap_or(0.0);
        self.model_cost
            .get_or_create(&ModelLabels {
                role: role.to_owned(),
                provider: provider.to_owned(),
                model: model.to_owned(),
            })
            .inc_by(cost);
        self.model_retries
            .get_or_create(&ProviderLabels {
                provider: provider.to_owned(),
                model: model.to_owned(),
            })
            .inc_by(u64::from(call.retries));
        if !call.waited.is_zero() {
            self.rate_limit_wait.inc_by(call.waited.as_secs_f64());
        }
    }

    /// Seconds model calls spent waiting for the rate limits so far.
    pub fn rate_limit_wait_seconds(&self) -> f64 {
        self.rate_limit_wait.get()
    }

    /// An attempt of a `kind` task ended with `outcome` after `took`.
    pub(crate) fn attempt_ended(&self, kind: TaskKind, outcome: AttemptOutcome, took: Duration) {
        self.attempt_duration
            .get_or_create(&AttemptLabels {
                kind: kind.as_str(),
                outcome: outcome.as_str(),
            })
            .observe(took.as_secs_f64());
    }

    /// A `kind` task reached `done`, `took` after its first start.
    pub(crate) fn task_done(&self, kind: TaskKind, took: Duration) {
        self.task_duration
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .observe(took.as_secs_f64());
    }

    /// A task reached `state`; counted for `done`, `failed` and `blocked`.
    pub(crate) fn task_finished(&self, state: TaskState) {
        match state {
            TaskState::Done | TaskState::Failed | TaskState::Blocked => {
                self.tasks_finished
                    .get_or_create(&StateLabels {
                        state: state.as_str(),
                    })
                    .inc();
            }
            TaskState::Pending
            | TaskState::Ready
            | TaskState::Running
            | TaskState::Review
            | TaskState::Merging
            | TaskState::Cancelled => {}
        }
    }

    /// Sets the gauges from a status snapshot and the projects per state
    /// (every state gets a series, 0 where none is in it).
    pub(crate) fn refresh(&self, status: &SwarmStatus, projects: &[(ProjectState, u32)]) {
        self.workers_running.set(i64::from(status.workers_running));
        self.workers_max.set(i64::from(status.workers_cap));
        self.ready_tasks.set(i64::from(status.ready_tasks));
        self.review_tasks.set(i64::from(status.review_tasks));
        self.gate_open.set(i64::from(status.gate.open));
        self.gate_free_memory_mb
            .set(status.gate.free_memory_mb.map_or(f64::NAN, |mb| mb as f64));
        self.gate_load_average
            .set(status.gate.load_1m.unwrap_or(f64::NAN));
        self.rate_limit_waiting
            .set(i64::from(status.rate_limit.waiting));
        self.rate_limit_rpm.set(i64::from(status.rate_limit.rpm));
        for n in &status.nodes {
            let labels = NodeLabels {
                node: n.name.clone(),
            };
            self.node_slots
                .get_or_create(&labels)
                .set(i64::from(n.slots));
            self.node_busy.get_or_create(&labels).set(i64::from(n.busy));
            self.node_up
                .get_or_create(&labels)
                .set(i64::from(n.state == "up"));
        }
        for (state, n) in projects {
            self.projects
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(i64::from(*n));
        }
    }

    /// Sets the quota gauges: each `(provider, seconds until its reset)`
    /// now; a provider blocked before and not now goes back to 0.
    pub(crate) fn quota(&self, blocked: &[(String, u64)]) {
        let mut seen = self
            .quota_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        seen.extend(blocked.iter().map(|(p, _)| p.clone()));
        for provider in seen.iter() {
            let secs = blocked
                .iter()
                .find(|(p, _)| p == provider)
                .map_or(0, |(_, s)| *s);
            self.quota_blocked
                .get_or_create(&QuotaLabels {
                    provider: provider.clone(),
                })
                .set(i64::try_from(secs).unwrap_or(i64::MAX));
        }
    }

    /// The registry as text in `format`.
    pub fn render(&self, format: MetricsFormat) -> MetricsText {
        let mut body = String::with_capacity(8 * 1024);
        let written = match format {
            MetricsFormat::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut body, &self.registry)
            }
            MetricsFormat::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut body, &self.registry)
            }
        };
        // Writing to a `String` does not fail; an encoder error would be a
        // bug in a label value, and what was written is still served.
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not render every metric");
        }
        MetricsText {
            body,
            content_type: format.content_type(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> SwarmStatus {
        SwarmStatus {
            workers_running: 3,
            workers_cap: 10,
            ready_tasks: 4,
            review_tasks: 2,
            gate: GateStatus {
                open: false,
                reason: Some("free memory 512 MB < 1024 MB (MIN_FREE_MEMORY_MB)".into()),
                free_memory_mb: Some(512),
                load_1m: Some(0.75),
                min_free_memory_mb: 1024,
                max_load_average: 3.0,
            },
            rate_limit: RateLimitStatus {
                rpm: 20,
                started_in_window: 7,
                waiting: 2,
                wait_seconds_total: 0.0,
            },
            quota_blocked: Vec::new(),
            nodes: Vec::new(),
        }
    }

    fn call(outcome: &'static str, cost: Option<f64>) -> ModelCall<'static> {
        ModelCall {
            role: "worker",
            provider: "local",
            model: "m-1",
            outcome,
            input_tokens: 100,
            output_tokens: 20,
            cost_usd: cost,
            retries: 2,
            waited: Duration::from_millis(1500),
        }
    }

    /// The value of the sample line that starts with `series ` (exact name
    /// and labels).
    fn sample(text: &str, series: &str) -> f64 {
        let line = text
            .lines()
            .find(|l| l.strip_prefix(series).is_some_and(|r| r.starts_with(' ')))
            .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"));
        line[series.len()..].trim().parse().unwrap()
    }

    #[test]
    fn a_quota_block_shows_until_its_reset() {
        let m = Metrics::new();
        m.quota(&[("openrouter".into(), 120)]);
        let t = m.render(MetricsFormat::Prometheus).body;
        assert_eq!(
            sample(
                &t,
                "agentswarm_provider_quota_blocked_seconds{provider=\"openrouter\"}"
            ),
            120.0
        );
        m.quota(&[]);
        let t = m.render(MetricsFormat::Prometheus).body;
        assert_eq!(
            sample(
                &t,
                "agentswarm_provider_quota_blocked_seconds{provider=\"openrouter\"}"
            ),
            0.0
        );
    }

    #[test]
    fn every_family_renders_with_its_labels() {
        let m = Metrics::new();
        m.model_call(&call("ok", Some(0.25)));
        m.model_call(&call("http_429", None));
        m.attempt_ended(
            TaskKind::Code,
            AttemptOutcome::Merged,
            Duration::from_secs(3),
        );
        m.attempt_ended(
            TaskKind::Verify,
            AttemptOutcome::Failed,
            Duration::from_millis(1500),
        );
        m.task_done(TaskKind::Code, Duration::from_secs(5));
        m.task_finished(TaskState::Done);
        m.task_finished(TaskState::Cancelled);
        m.refresh(
            &status(),
            &[(ProjectState::Running, 2), (ProjectState::Done, 1)],
        );
        let text = m.render(MetricsFormat::Prometheus);
        assert_eq!(
            text.content_type,
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let t = &text.body;
        assert_eq!(sample(t, "agentswarm_workers_running"), 3.0);
        assert_eq!(sample(t, "agentswarm_workers_max"), 10.0);
        assert_eq!(sample(t, "agentswarm_ready_tasks"), 4.0);
        assert_eq!(sample(t, "agentswarm_review_tasks"), 2.0);
        assert_eq!(sample(t, "agentswarm_gate_open"), 0.0);
        assert_eq!(sample(t, "agentswarm_gate_free_memory_mb"), 512.0);
        assert_eq!(sample(t, "agentswarm_gate_load_average"), 0.75);
        let who = r#"role="worker",provider="local",model="m-1""#;
        assert_eq!(
            sample(
                t,
                &format!(r#"agentswarm_model_calls_total{{{who},outcome="ok"}}"#)
            ),
            1.0
        );
        assert_eq!(
            sample(
                t,
                &format!(r#"agentswarm_model_calls_total{{{who},outcome="http_429"}}"#)
            ),
            1.0
        );
        assert_eq!(
            sample(
                t,
                &format!(r#"agentswarm_model_tokens_total{{{who},direction="input"}}"#)
            ),
            200.0
        );
        assert_eq!(
            sample(
                t,
                &format!(r#"agentswarm_model_tokens_total{{{who},direction="output"}}"#)
            ),
            40.0
        );
        assert_eq!(
            sample(t, &format!("agentswarm_model_cost_usd_total{{{who}}}")),
            0.25
        );
        assert_eq!(
            sample(
                t,
                r#"agentswarm_model_retries_total{provider="local",model="m-1"}"#
            ),
            4.0
        );
        assert_eq!(sample(t, "agentswarm_rate_limit_wait_seconds_total"), 3.0);
        assert_eq!(m.rate_limit_wait_seconds(), 3.0);
        assert_eq!(sample(t, "agentswarm_rate_limit_waiting"), 2.0);
        assert_eq!(sample(t, "agentswarm_rate_limit_rpm"), 20.0);
        // Histograms: every bucket, +Inf, sum and count.
        let code = r#"kind="code",outcome="merged""#;
        assert_eq!(
            sample(
                t,
                &format!(r#"agentswarm_attempt_duration_seconds_bucket{{{code},le="2"}}"#)
            ),
            0.0
        );
        assert_eq!(
            sample(
                t,
                &format!(r#"agentswarm_attempt_duration_seconds_bucket{{{code},le="4"}}"#)
            ),
            1.0
        );
        assert_eq!(
            sample(
                t,
                &format!(r#"agentswarm_attempt_duration_seconds_bucket{{{code},le="8192"}}"#)
            ),
            1.0
        );
        assert_eq!(
            sample(
                t,
                &format!(r#"agentswarm_attempt_duration_seconds_bucket{{{code},le="+Inf"}}"#)
            ),
            1.0
        );
        assert_eq!(
            sample(
                t,
                &format!("agentswarm_attempt_duration_seconds_sum{{{code}}}")
            ),
            3.0
        );
        assert_eq!(
            sample(
                t,
                &format!("agentswarm_attempt_duration_seconds_count{{{code}}}")
            ),
            1.0
        );
        assert_eq!(
            sample(
                t,
                r#"agentswarm_attempt_duration_seconds_count{kind="verify",outcome="failed"}"#
            ),
            1.0
        );
        assert_eq!(
            sample(
                t,
                r#"agentswarm_task_duration_seconds_bucket{kind="code",le="8"}"#
            ),
            1.0
        );
        assert_eq!(
            sample(t, r#"agentswarm_task_duration_seconds_count{kind="code"}"#),
            1.0
        );
        assert_eq!(sample(t, r#"agentswarm_projects{state="running"}"#), 2.0);
        assert_eq!(sample(t, r#"agentswarm_projects{state="done"}"#), 1.0);
        assert_eq!(
            sample(t, r#"agentswarm_tasks_finished_total{state="done"}"#),
            1.0
        );
        assert!(!t.contains(r#"state="cancelled"}"#), "{t}");
        for family in [
            "# TYPE agentswarm_model_calls_total counter",
            "# TYPE agentswarm_model_cost_usd_total counter",
            "# TYPE agentswarm_rate_limit_wait_seconds_total counter",
            "# TYPE agentswarm_attempt_duration_seconds histogram",
            "# TYPE agentswarm_workers_running gauge",
        ] {
            assert!(t.contains(family), "{family} missing:\n{t}");
        }
        assert!(!t.contains("_total_total"), "{t}");
        assert!(!t.contains("# EOF"), "{t}");
    }

    #[test]
    fn openmetrics_ends_with_eof() {
        let m = Metrics::new();
        m.model_call(&call("ok", Some(0.5)));
        let text = m.render(MetricsFormat::negotiate(Some(
            "application/openmetrics-text; version=1.0.0,text/plain;q=0.5",
        )));
        assert_eq!(text.content_type, OPENMETRICS_CONTENT_TYPE);
        assert!(text.body.ends_with("# EOF\n"), "{}", text.body);
        assert!(text.body.contains("# TYPE agentswarm_model_calls counter"));
        assert!(text
            .body
            .contains(r#"agentswarm_model_calls_total{role="worker",provider="local",model="m-1",outcome="ok"} 1"#));
        assert_eq!(
            MetricsFormat::negotiate(Some("text/plain")),
            MetricsFormat::Prometheus
        );
        assert_eq!(MetricsFormat::negotiate(None), MetricsFormat::Prometheus);
    }

    #[test]
    fn counters_never_go_backwards() {
        let m = Metrics::new();
        let series = [
            r#"agentswarm_model_calls_total{role="worker",provider="local",model="m-1",outcome="ok"}"#,
            r#"agentswarm_model_tokens_total{role="worker",provider="local",model="m-1",direction="input"}"#,
            r#"agentswarm_model_cost_usd_total{role="worker",provider="local",model="m-1"}"#,
            r#"agentswarm_model_retries_total{provider="local",model="m-1"}"#,
            "agentswarm_rate_limit_wait_seconds_total",
        ];
        let mut last = vec![0.0; series.len()];
        // A negative or NaN cost (a bad price) must not lower the counter.
        for cost in [Some(0.1), None, Some(-5.0), Some(f64::NAN), Some(0.2)] {
            m.model_call(&call("ok", cost));
            let text = m.render(MetricsFormat::Prometheus).body;
            for (i, s) in series.iter().enumerate() {
                let v = sample(&text, s);
                assert!(v >= last[i], "{s} went from {} to {v}", last[i]);
                last[i] = v;
            }
        }
        assert!((last[2] - 0.3).abs() < 1e-9, "cost {}", last[2]);
    }

    #[test]
    fn unreadable_gate_readings_render_as_nan() {
        let m = Metrics::new();
        let mut s = status();
        s.gate.free_memory_mb = None;
        s.gate.load_1m = None;
        m.refresh(&s, &[]);
        let t = m.render(MetricsFormat::Prometheus).body;
        assert!(sample(&t, "agentswarm_gate_free_memory_mb").is_nan());
        assert!(sample(&t, "agentswarm_gate_load_average").is_nan());
    }

    /// An engine on an in-memory store whose gate reads `stats`; its
    /// workers are `/bin/false`, its commands run unconfined.
    fn engine(home: &std::path::Path, stats: &str) -> crate::Engine {
        let stats_file = home.join("stats.json");
        std::fs::write(&stats_file, stats).unwrap();
        let path = std::path::PathBuf::from("/x/agentswarm.toml");
        let toml = "[providers.local]\nbase_url = \"http://127.0.0.1:1/v1\"\n\
                    [models.worker]\nprovider = \"local\"\nmodel = \"m-1\"\n";
        let file = swarm_config::FileConfig::parse(toml, &path).unwrap();
        let env = |k: &str| -> Option<String> {
            match k {
                "AGENTSWARM_HOME" => Some(home.display().to_string()),
                "AGENTSWARM_GATE_STATS_FILE" => Some(stats_file.display().to_string()),
                "MAX_CONCURRENT_WORKERS" => Some("4".into()),
                "MIN_FREE_MEMORY_MB" => Some("1024".into()),
                "API_RATE_LIMIT_RPM" => Some("20".into()),
                "AGENTSWARM_SANDBOX" => Some("off".into()),
                _ => None,
            }
        };
        let config =
            swarm_config::Config::resolve(Some((file, path)), &env, &Default::default()).unwrap();
        let store: Arc<dyn swarm_store::Store> =
            Arc::new(swarm_store::SqliteStore::in_memory().unwrap());
        let gateway =
            crate::Gateway::from_config(&config, store.clone(), crate::Tape::Live).unwrap();
        let settings = crate::EngineSettings {
            worker_program: "/bin/false".into(),
            worker_args: Vec::new(),
            shutdown_grace: Duration::from_secs(1),
        };
        crate::Engine::new(config, store, gateway, settings)
    }

    #[test]
    fn engine_status_and_metrics_come_from_the_store_and_the_gate() {
        let home = tempfile::tempdir().unwrap();
        let engine = engine(home.path(), r#"{"available_mb": 512, "load1": 0.5}"#);
        let plan: swarm_protocol::Plan = serde_json::from_value(serde_json::json!({
            "name": "demo",
            "tasks": [
                {"id": "a", "title": "A"},
                {"id": "b", "title": "B"},
                {"id": "check", "title": "Verify", "kind": "verify",
                 "depends_on": ["a", "b"], "commands": ["true"]},
            ],
        }))
        .unwrap();
        let lock = engine.create_project("a goal", Some(plan)).unwrap();
        let ready = swarm_store::TaskUpdate {
            from: vec![TaskState::Pending],
            to: Some(TaskState::Ready),
            ..Default::default()
        };
        for t in ["a", "b"] {
            assert!(engine
                .store()
                .update_task(lock.id(), &TaskId::new(t), &ready)
                .unwrap());
        }
        engine.create_project("planned later", None).unwrap();

        let s = engine.swarm_status();
        assert_eq!((s.workers_running, s.workers_cap, s.ready_tasks), (0, 4, 2));
        assert!(!s.gate.open);
        assert!(s
            .gate
            .reason
            .as_deref()
            .unwrap()
            .contains("MIN_FREE_MEMORY_MB"));
        assert_eq!(s.gate.free_memory_mb, Some(512));
        assert_eq!(s.gate.min_free_memory_mb, 1024);
        assert_eq!(s.rate_limit.rpm, 20);
        assert_eq!(s.rate_limit.waiting, 0);
        let back: SwarmStatus = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);

        let live = engine.live.enter(lock.id(), &TaskId::new("a"), 1);
        live.tool(1, "read_file");
        let workers = engine.live_workers();
        assert_eq!(workers.len(), 1);
        assert_eq!(engine.swarm_status().workers_running, 1);
        assert_eq!(workers[0].last_tool.as_deref(), Some("read_file"));
        drop(live);
        assert!(engine.live_workers().is_empty());

        engine.metrics.model_call(&call("ok", Some(0.5)));
        let text = engine.metrics_text();
        assert_eq!(text.content_type, PROMETHEUS_CONTENT_TYPE);
        let t = &text.body;
        assert_eq!(sample(t, "agentswarm_ready_tasks"), 2.0);
        assert_eq!(sample(t, "agentswarm_workers_max"), 4.0);
        assert_eq!(sample(t, "agentswarm_workers_running"), 0.0);
        assert_eq!(sample(t, "agentswarm_gate_open"), 0.0);
        assert_eq!(sample(t, "agentswarm_gate_free_memory_mb"), 512.0);
        assert_eq!(sample(t, "agentswarm_gate_load_average"), 0.5);
        assert_eq!(sample(t, "agentswarm_rate_limit_rpm"), 20.0);
        assert_eq!(sample(t, r#"agentswarm_projects{state="queued"}"#), 2.0);
        assert_eq!(sample(t, r#"agentswarm_projects{state="done"}"#), 0.0);
        assert_eq!(sample(t, "agentswarm_rate_limit_wait_seconds_total"), 1.5);
        assert_eq!(engine.swarm_status().rate_limit.wait_seconds_total, 1.5);
        let open = engine.metrics_text_as(MetricsFormat::OpenMetrics);
        assert!(open.body.ends_with("# EOF\n"));
    }

    fn plan(json: serde_json::Value) -> swarm_protocol::Plan {
        serde_json::from_value(json).unwrap()
    }

    #[tokio::test]
    async fn a_run_observes_every_attempt_and_leaves_no_live_row() {
        let home = tempfile::tempdir().unwrap();
        let engine = engine(home.path(), r#"{"available_mb": 4096, "load1": 0.0}"#);
        // Every worker crashes: `a` fails after its attempts, verify is blocked.
        let crashing = engine
            .create_project(
                "crash",
                Some(plan(serde_json::json!({"name": "crash", "tasks": [
                    {"id": "a", "title": "A"},
                    {"id": "check", "title": "Verify", "kind": "verify",
                     "depends_on": ["a"], "commands": ["true"]},
                ]}))),
            )
            .unwrap();
        let report = engine
            .run(&crashing, tokio_util::sync::CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(report.status, ProjectState::Failed);
        assert!(engine.live_workers().is_empty());
        // A plan of one verify task passes on the initial commit.
        let verify_only = engine
            .create_project(
                "verify",
                Some(plan(serde_json::json!({"name": "verify", "tasks": [
                    {"id": "check", "title": "Verify", "kind": "verify", "commands": ["true"]},
                ]}))),
            )
            .unwrap();
        let report = engine
            .run(&verify_only, tokio_util::sync::CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(report.status, ProjectState::Done, "{:?}", report.error);
        assert!(engine.live_workers().is_empty());

        let attempts = engine.config().run.max_attempts;
        let t = engine.metrics_text().body;
        assert_eq!(
            sample(
                &t,
                r#"agentswarm_attempt_duration_seconds_count{kind="code",outcome="crashed"}"#
            ),
            f64::from(attempts),
        );
        assert_eq!(
            sample(
                &t,
                r#"agentswarm_attempt_duration_seconds_count{kind="verify",outcome="merged"}"#
            ),
            1.0
        );
        assert_eq!(
            sample(
                &t,
                r#"agentswarm_task_duration_seconds_count{kind="verify"}"#
            ),
            1.0
        );
        assert!(!t.contains(r#"agentswarm_task_duration_seconds_count{kind="code"}"#));
        for (state, n) in [("done", 1.0), ("failed", 1.0), ("blocked", 1.0)] {
            let series = format!(r#"agentswarm_tasks_finished_total{{state="{state}"}}"#);
            assert_eq!(sample(&t, &series), n, "{series}");
        }
        assert_eq!(sample(&t, r#"agentswarm_projects{state="failed"}"#), 1.0);
        assert_eq!(sample(&t, r#"agentswarm_projects{state="done"}"#), 1.0);
        assert_eq!(sample(&t, "agentswarm_workers_running"), 0.0);
        assert_eq!(sample(&t, "agentswarm_ready_tasks"), 0.0);
    }

    #[test]
    fn live_rows_leave_with_their_entry() {
        let table = Arc::new(LiveTable::default());
        let (p1, p2) = (ProjectId::new("p1"), ProjectId::new("p2"));
        let b = table.enter(&p2, &TaskId::new("b"), 1);
        let a = table.enter(&p1, &TaskId::new("a"), 2);
        a.set_pid(4242);
        a.turn(1);
        a.tool(2, "run_command");
        a.tool(3, "write_file");
        let rows = table.snapshot();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].project, p1, "sorted by project");
        assert_eq!(rows[0].pid, Some(4242));
        assert_eq!(rows[0].turns, 3);
        assert_eq!(rows[0].last_tool.as_deref(), Some("write_file"));
        assert_eq!(rows[1].pid, None);
        assert_eq!(rows[1].last_tool, None);
        drop(a);
        assert_eq!(table.snapshot().len(), 1);
        assert_eq!(table.len(), 1);
        drop(b);
        assert!(table.snapshot().is_empty());
        let json = serde_json::to_value(LiveWorker {
            project: p2,
            task: TaskId::new("b"),
            attempt: 1,
            pid: None,
            started_ms: 1,
            turns: 0,
            last_tool: None,
        })
        .unwrap();
        assert_eq!(json["task"], "b");
        assert_eq!(json["pid"], serde_json::Value::Null);
    }
}

//! The model gateway: every model call of the planner, the fixer and every
//! worker goes through here. It is the only code that holds API keys and
//! talks to providers (workers ask over IPC), and the only place that
//! counts: each call is recorded in the store (`model_calls`) with its
//! provider, model, tokens, cost, retries and rate-limit wait, and checked
//! against the project's budget.
//!
//! A project whose budget is spent, or whose provider refuses the key, is
//! *halted*: no new call starts, its run stops its workers at their next
//! call, and the project ends `budget_exhausted` or `paused` — resumable,
//! with nothing finished redone.

use crate::metrics::{Metrics, ModelCall};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use swarm_config::{Config, ModelRole, Models, RunLimits};
use swarm_llm::cassette::{Recorder, Replayer};
use swarm_llm::ratelimit::{LimiterSnapshot, RequestLimiter, SlidingWindow, TokenWindow};
use swarm_llm::redact::Redactor;
use swarm_llm::router::{Failed, Route, Router, Served, Target};
use swarm_llm::{CallMeta, ModelRequest, RetryPolicy};
use swarm_protocol::chat::{ChatMessage, ToolSpec};
use swarm_protocol::{ProjectId, ProjectState, TaskId};
use swarm_store::{ModelCallRecord, Spent, Store};
use tokio_util::sync::CancellationToken;

/// Where answers come from.
pub enum Tape {
    /// The providers.
    Live,
    /// The providers, and every call written to a file (`--record`).
    Record(Recorder),
    /// A recording, with no network (`--replay`).
    Replay(Replayer),
}

/// Who is asking, for accounting and `--replay`.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub project: &'a ProjectId,
    pub task: Option<&'a TaskId>,
    pub attempt: Option<u32>,
    pub role: ModelRole,
    /// A worker's turn; the call's number in a planner or fixer exchange.
    pub turn: u32,
}

/// Why a project's calls stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Halt {
    Budget(String),
    Auth(String),
    /// `--replay` has no answer: retrying cannot help.
    Replay(String),
}

impl Halt {
    /// The state the project ends in.
    pub fn state(&self) -> ProjectState {
        match self {
            Halt::Budget(_) => ProjectState::BudgetExhausted,
            Halt::Auth(_) | Halt::Replay(_) => ProjectState::Paused,
        }
    }
    pub fn message(&self) -> &str {
        match self {
            Halt::Budget(m) | Halt::Auth(m) | Halt::Replay(m) => m,
        }
    }
}

/// A call that did not produce an answer.
#[derive(Debug)]
pub enum CallError {
    /// The model failed (after the retries and fallbacks).
    Model(Failed),
    /// The project is halted (budget spent, key refused); the run is stopping.
    Halted(Halt),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Model(e) => write!(f, "{e}"),
            CallError::Halted(h) => f.write_str(h.message()),
        }
    }
}

/// One project's budget and halt switch, open while its run lasts.
pub struct Account {
    max_cost_usd: Option<f64>,
    max_tokens: Option<u64>,
    spent: Mutex<Spent>,
    halt: Mutex<Option<Halt>>,
    /// Cancelled when the project halts: its run stops.
    stop: CancellationToken,
}

impl Account {
    pub fn halted(&self) -> Option<Halt> {
        self.halt.lock().ok().and_then(|h| h.clone())
    }

    /// Halts the project (the first reason wins) and stops its run.
    fn halt(&self, why: Halt) -> Halt {
        let first = match self.halt.lock() {
            Ok(mut h) => h.get_or_insert(why).clone(),
            Err(_) => why,
        };
        self.stop.cancel();
        first
    }

    /// Halts the project when its budget is spent.
    pub fn check_budget(&self) -> Option<Halt> {
        let msg = self.over_budget()?;
        Some(self.halt(Halt::Budget(msg)))
    }

    /// The budget message when it is spent.
    fn over_budget(&self) -> Option<String> {
        let spent = self.spent.lock().map(|s| *s).unwrap_or_default();
        budget_message(spent, self.max_cost_usd, self.max_tokens)
    }
}

/// Why `spent` is over the budget, if it is.
fn budget_message(
    spent: Spent,
    max_cost_usd: Option<f64>,
    max_tokens: Option<u64>,
) -> Option<String> {
    if let Some(max) = max_cost_usd.filter(|m| spent.cost_usd >= *m) {
        return Some(format!(
            "budget exhausted: model calls cost ${:.4} of max_cost_usd ${max:.2}; raise it \
             (`agentswarm resume <project> --max-cost-usd N`) to carry on",
            spent.cost_usd
        ));
    }
    if let Some(max) = max_tokens.filter(|m| spent.tokens >= *m) {
        return Some(format!(
            "budget exhausted: model calls used {} of max_tokens {max} tokens; raise it \
             (`agentswarm resume <project> --max-tokens N`) to carry on",
            spent.tokens
        ));
    }
    None
}

/// The route of each role.
struct Routes {
    planner: Route,
    worker: Route,
    fixer: Route,
}

impl Routes {
    fn of(&self, role: ModelRole) -> &Route {
        match role {
            ModelRole::Planner => &self.planner,
            ModelRole::Worker => &self.worker,
            ModelRole::Fixer => &self.fixer,
        }
    }
}

/// A provider that answered that its quota or usage limit is reached
/// ([`swarm_llm::Error::is_quota`]), and when it resets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaBlock {
    pub provider: String,
    /// When calls to it go out again: its `Retry-After`, else
    /// [`DEFAULT_QUOTA_BLOCK`] after the answer.
    pub until: SystemTime,
    /// What the provider said (keys masked).
    pub reason: String,
}

/// How long a provider is left alone after a quota answer that did not say
/// when it resets.
pub const DEFAULT_QUOTA_BLOCK: Duration = Duration::from_secs(15 * 60);

struct Inner {
    router: Router,
    /// Providers out of quota, by name, until their reset.
    quota: Mutex<BTreeMap<String, QuotaBlock>>,
    /// Outside agents on their own credentials out of their usage limit,
    /// by agent name, until their reset.
    agent_quota: Mutex<BTreeMap<String, QuotaBlock>>,
    /// The router's shared request limiter, for its snapshot.
    limiter: Arc<dyn RequestLimiter>,
    /// Every call is counted here too (the engine renders these).
    metrics: Arc<Metrics>,
    routes: Routes,
    models: Models,
    store: Arc<dyn Store>,
    redactor: Redactor,
    tape: Tape,
    /// Providers that need a key they do not have, by name: the message to pause with.
    missing_keys: BTreeMap<String, String>,
    accounts: Mutex<HashMap<ProjectId, Arc<Account>>>,
}

#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl Gateway {
    /// Providers, routes and the rate limiter from the resolved config.
    pub fn from_config(config: &Config, store: Arc<dyn Store>, tape: Tape) -> crate::Result<Self> {
        let models = config.models()?.clone();
        // The provider counts requests when they arrive, a little after we
        // start them, and that lag varies: the first of a window may arrive
        // late and the first of the next one early. A window 2 % longer than
        // the provider's keeps every provider-side window within the limit
        // (the bench measures this at the server) and still uses 98 % of it.
        let window = Duration::from_millis(config.rate_window_ms);
        let limiter: Arc<dyn RequestLimiter> = Arc::new(SlidingWindow::new(
            config.api_rate_limit_rpm,
            window + window / 50,
        ));
        Self::new(models, limiter, store, tape)
    }

    pub fn new(
        models: Models,
        limiter: Arc<dyn RequestLimiter>,
        store: Arc<dyn Store>,
        tape: Tape,
    ) -> crate::Result<Self> {
        let mut providers = HashMap::new();
        let mut missing_keys = BTreeMap::new();
        for (name, p) in &models.providers {
            let settings = crate::probe::provider_settings(name, p);
            let provider = swarm_llm::build_provider(settings)
                .map_err(|e| crate::Error::Other(e.to_string()))?;
            let tokens = (p.tokens_per_minute > 0).then(|| {
                Arc::new(TokenWindow::new(
                    p.tokens_per_minute,
                    Duration::from_secs(60),
                ))
            });
            if let Some(e) = p.missing_key().filter(|_| models.uses(name)) {
                missing_keys.insert(name.clone(), e.to_string());
            }
            providers.insert(name.clone(), (provider, tokens, p.max_retries));
        }
        let route = |role: ModelRole| -> crate::Result<Route> {
            let r = models.role(role);
            let mut targets = Vec::new();
            for m in std::iter::once(&r.primary).chain(&r.fallback) {
                let Some((provider, tokens, max_retries)) = providers.get(&m.provider) else {
                    return Err(crate::Error::Other(format!(
                        "role {} names provider {} that is not configured",
                        role.as_str(),
                        m.provider
                    )));
                };
                targets.push(Target {
                    provider: provider.clone(),
                    model: m.model.clone(),
                    max_tokens: r.max_tokens,
                    temperature: r.temperature,
                    tokens: tokens.clone(),
                    max_retries: *max_retries,
                });
            }
            Ok(Route { targets })
        };
        let routes = Routes {
            planner: route(ModelRole::Planner)?,
            worker: route(ModelRole::Worker)?,
            fixer: route(ModelRole::Fixer)?,
        };
        let redactor = Redactor::new(models.key_values());
        Ok(Self {
            inner: Arc::new(Inner {
                router: Router::new(limiter.clone(), RetryPolicy::default()),
                quota: Mutex::new(BTreeMap::new()),
                agent_quota: Mutex::new(BTreeMap::new()),
                limiter,
                metrics: Arc::new(Metrics::new()),
                routes,
                models,
                store,
                redactor,
                tape,
                missing_keys,
                accounts: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Masks every configured key and key-shaped string in `text`.
    pub fn redactor(&self) -> &Redactor {
        &self.inner.redactor
    }

    /// The built-in agent's bounds for `role`'s model (its context window,
    /// the size of tool results), carried to the worker in its start message.
    pub fn agent_settings(&self, role: ModelRole) -> swarm_protocol::worker::AgentSettings {
        self.inner.models.role(role).agent.clone()
    }

    /// The providers out of quota now, until their reset (an entry whose
    /// reset has passed is dropped here: work resumes by itself).
    pub fn quota_blocks(&self) -> Vec<QuotaBlock> {
        let now = SystemTime::now();
        let Ok(mut q) = self.inner.quota.lock() else {
            return Vec::new();
        };
        q.retain(|_, b| b.until > now);
        q.values().cloned().collect()
    }

    /// The providers out of quota and the outside agents out of their usage
    /// limit now (for the status, the dashboard and `/metrics`).
    pub fn all_holds(&self) -> Vec<QuotaBlock> {
        let mut all = self.quota_blocks();
        let now = SystemTime::now();
        if let Ok(mut q) = self.inner.agent_quota.lock() {
            q.retain(|_, b| b.until > now);
            all.extend(q.values().cloned());
        }
        all
    }

    /// Whether `role`'s calls cannot go out: every model of its route (the
    /// model and its fallbacks) is served by a provider out of quota. The
    /// block that ends first: from then on the role can be served again.
    pub fn quota_block_for(&self, role: ModelRole) -> Option<QuotaBlock> {
        let blocks = self.quota_blocks();
        let route = self.inner.routes.of(role);
        let mut first: Option<QuotaBlock> = None;
        for t in &route.targets {
            let b = blocks.iter().find(|b| b.provider == t.provider.name())?;
            if first.as_ref().is_none_or(|f| b.until < f.until) {
                first = Some(b.clone());
            }
        }
        first
    }

    /// Whether worker attempts should wait: the worker role's providers
    /// are all out of quota (see [`Gateway::quota_block_for`]). The
    /// dispatcher asks this before it starts an attempt, and
    /// `quota_block_for(Planner)` / `(Fixer)` before it plans.
    pub fn quota_block(&self) -> Option<QuotaBlock> {
        self.quota_block_for(ModelRole::Worker)
    }

    /// An outside agent on its own credentials (its vendor's quota, which
    /// this gateway does not see) said its usage limit is reached: no task
    /// goes to it, in any project, until `until`.
    pub fn hold_agent(&self, agent: &str, until: SystemTime, reason: &str) {
        let reason = self.inner.redactor.redact(reason).into_owned();
        tracing::warn!(%agent, %reason, "an agent's usage limit is reached: it gets no task until its reset");
        if let Ok(mut q) = self.inner.agent_quota.lock() {
            let e = q.entry(agent.to_owned()).or_insert_with(|| QuotaBlock {
                provider: format!("agent {agent}"),
                until,
                reason: reason.clone(),
            });
            if until >= e.until {
                e.until = until;
                e.reason = reason;
            }
        }
    }

    /// `agent`'s usage-limit hold, while it lasts (see [`Gateway::hold_agent`]).
    pub fn agent_hold(&self, agent: &str) -> Option<QuotaBlock> {
        let now = SystemTime::now();
        let mut q = self.inner.agent_quota.lock().ok()?;
        q.retain(|_, b| b.until > now);
        q.get(agent).cloned()
    }

    /// Records a quota answer: the provider is left alone until its reset.
    fn note_quota(&self, f: &Failed) {
        let until = SystemTime::now() + f.error.retry_after().unwrap_or(DEFAULT_QUOTA_BLOCK);
        let reason = self
            .inner
            .redactor
            .redact(&f.error.to_string())
            .into_owned();
        tracing::warn!(
            provider = %f.provider,
            resets_in_s = until
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .as_secs(),
            %reason,
            "a provider's quota is used up: its calls wait for the reset"
        );
        if let Ok(mut q) = self.inner.quota.lock() {
            let entry = q.entry(f.provider.clone()).or_insert_with(|| QuotaBlock {
                provider: f.provider.clone(),
                until,
                reason: reason.clone(),
            });
            if until >= entry.until {
                entry.until = until;
                entry.reason = reason;
            }
        }
    }

    /// The shared model-request limiter (`API_RATE_LIMIT_RPM`) now.
    pub fn rate_limit(&self) -> LimiterSnapshot {
        self.inner.limiter.snapshot()
    }

    /// The metrics this gateway counts its calls in; the engine built on
    /// it renders them.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// What to say when a provider some role uses needs a key it lacks (the
    /// first by name); a run checks this before it makes any call.
    pub fn missing_key(&self) -> Option<String> {
        if matches!(self.inner.tape, Tape::Replay(_)) {
            return None;
        }
        self.inner.missing_keys.values().next().cloned()
    }

    /// Opens `project`'s account for a run: its budget from `limits`, what
    /// it has spent from the store. `stop` is cancelled if it halts.
    pub fn open(
        &self,
        project: &ProjectId,
        limits: &RunLimits,
        stop: CancellationToken,
    ) -> crate::Result<Arc<Account>> {
        let spent = self.inner.store.spent(project)?;
        let account = Arc::new(Account {
            max_cost_usd: limits.max_cost_usd,
            max_tokens: limits.max_tokens,
            spent: Mutex::new(spent),
            halt: Mutex::new(None),
            stop,
        });
        if let Ok(mut a) = self.inner.accounts.lock() {
            a.insert(project.clone(), account.clone());
        }
        Ok(account)
    }

    pub fn close(&self, project: &ProjectId) {
        if let Ok(mut a) = self.inner.accounts.lock() {
            a.remove(project);
        }
    }

    fn account(&self, project: &ProjectId) -> Option<Arc<Account>> {
        self.inner.accounts.lock().ok()?.get(project).cloned()
    }

    pub async fn complete(
        &self,
        caller: Caller<'_>,
        mut messages: Vec<ChatMessage>,
        tools: Vec<ToolSpec>,
    ) -> Result<Served, CallError> {
        let inner = &self.inner;
        // A configured key that a command or a file tool read (or that the
        // model repeated) never reaches the endpoint: the worker cannot mask
        // it (it never holds the keys), so the gateway does, before any
        // provider request, recording or replay is built from the messages.
        let masked = inner.redactor.redact_messages(&mut messages);
        if masked > 0 {
            tracing::warn!(
                masked,
                role = caller.role.as_str(),
                task = caller.task.map(|t| t.to_string()).unwrap_or_default(),
                "a configured API key was in the conversation; masked it before the model call"
            );
        }
        let account = self.account(caller.project);
        if let Some(a) = &account {
            if let Some(h) = a.halted() {
                return Err(CallError::Halted(h));
            }
            if let Some(msg) = a.over_budget() {
                return Err(CallError::Halted(a.halt(Halt::Budget(msg))));
            }
        }
        let route = inner.routes.of(caller.role);
        let meta = CallMeta {
            role: caller.role.as_str().to_owned(),
            task: caller.task.map(|t| t.to_string()),
            attempt: caller.attempt,
            turn: caller.turn,
        };
        let result = match &inner.tape {
            Tape::Replay(r) => {
                let model = route
                    .targets
                    .first()
                    .map(|t| t.model.clone())
                    .unwrap_or_default();
                let request = ModelRequest {
                    model: model.clone(),
                    messages,
                    tools,
                    max_tokens: None,
                    temperature: None,
                };
                let started = std::time::Instant::now();
                match r.answer(&meta, &request) {
                    Ok(reply) => Ok(Served {
                        reply,
                        provider: "replay".into(),
                        model,
                        retries: 0,
                        waited: Duration::ZERO,
                        latency: started.elapsed(),
                    }),
                    Err(error) => Err(Failed {
                        error,
                        provider: "replay".into(),
                        model,
                        retries: 0,
                        waited: Duration::ZERO,
                        latency: started.elapsed(),
                    }),
                }
            }
            Tape::Live | Tape::Record(_) => {
                let for_tape = match &inner.tape {
                    Tape::Record(_) => Some((messages.clone(), tools.clone())),
                    Tape::Live | Tape::Replay(_) => None,
                };
                // A quota answer holds this call (and every other call of
                // the role) until the reset, then it goes out again.
                let r = loop {
                    if let Some(b) = self.quota_block_for(caller.role) {
                        let wait = b
                            .until
                            .duration_since(SystemTime::now())
                            .unwrap_or_default();
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    let r = inner
                        .router
                        .call(route, &meta, messages.clone(), tools.clone())
                        .await;
                    match &r {
                        Err(f) if f.error.is_quota() => {
                            self.note_quota(f);
                            if self.quota_block_for(caller.role).is_none() {
                                // Another model of the route failed otherwise.
                                break r;
                            }
                            self.account_for(&caller, &r, account.as_deref());
                        }
                        Ok(_) | Err(_) => break r,
                    }
                };
                if let (Tape::Record(rec), Some((messages, tools)), Ok(s)) =
                    (&inner.tape, for_tape, &r)
                {
                    let request = ModelRequest {
                        model: s.model.clone(),
                        messages,
                        tools,
                        max_tokens: None,
                        temperature: None,
                    };
                    if let Err(e) = rec.record(&meta, &s.provider, &request, &s.reply) {
                        tracing::warn!(error = %e, "could not write the recording");
                    }
                }
                r
            }
        };
        self.account_for(&caller, &result, account.as_deref());
        match result {
            Ok(s) => Ok(s),
            Err(f) => {
                if let Some(a) = &account {
                    use swarm_llm::Error as E;
                    let msg = || inner.redactor.redact(&f.error.to_string()).into_owned();
                    let halt = match &f.error {
                        E::Auth { .. } => Some(Halt::Auth(msg())),
                        E::ReplayMiss(_) => Some(Halt::Replay(msg())),
                        E::Http { .. }
                        | E::ModelNotFound { .. }
                        | E::ContextLength { .. }
                        | E::Timeout { .. }
                        | E::Connect { .. }
                        | E::InvalidResponse { .. }
                        | E::Setup { .. } => None,
                    };
                    if let Some(h) = halt {
                        return Err(CallError::Halted(a.halt(h)));
                    }
                }
                Err(CallError::Model(f))
            }
        }
    }

    /// Stores the call and adds it to the project's spending.
    fn account_for(
        &self,
        caller: &Caller<'_>,
        result: &Result<Served, Failed>,
        account: Option<&Account>,
    ) {
        let inner = &self.inner;
        let (provider, model, input, output, latency, retries, waited, outcome) = match result {
            Ok(s) => (
                &s.provider,
                &s.model,
                s.reply.usage.prompt_tokens,
                s.reply.usage.completion_tokens,
                s.latency,
                s.retries,
                s.waited,
                "ok".to_owned(),
            ),
            Err(f) => (
                &f.provider,
                &f.model,
                0,
                0,
                f.latency,
                f.retries,
                f.waited,
                f.error.kind(),
            ),
        };
        let (cache_write, cache_read) = match result {
            Ok(s) => (
                s.reply.usage.cache_write_tokens,
                s.reply.usage.cache_read_tokens,
            ),
            Err(_) => (0, 0),
        };
        let cost_usd =
            inner
                .models
                .cost_cached(provider, model, input, output, cache_write, cache_read);
        inner.metrics.model_call(&ModelCall {
            role: caller.role.as_str(),
            provider,
            model,
            outcome: &outcome,
            input_tokens: input,
            output_tokens: output,
            cost_usd,
            retries,
            waited,
        });
        if let Some(a) = account {
            if let Ok(mut s) = a.spent.lock() {
                s.tokens += input + output;
                s.cost_usd += cost_usd.unwrap_or(0.0);
            }
        }
        let record = ModelCallRecord {
            project_id: caller.project.clone(),
            task_id: caller.task.cloned(),
            attempt: caller.attempt,
            role: caller.role.as_str().to_owned(),
            provider: provider.clone(),
            model: model.clone(),
            input_tokens: input,
            output_tokens: output,
            latency_ms: latency.as_millis() as u64,
            retries,
            waited_ms: waited.as_millis() as u64,
            cost_usd,
            outcome,
            ts_ms: swarm_store::now_ms(),
        };
        if let Err(e) = inner.store.record_model_call(&record) {
            tracing::warn!(error = %e, "could not record a model call");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn gateway(toml: &str) -> Gateway {
        let path = PathBuf::from("/x/agentswarm.toml");
        let file = swarm_config::FileConfig::parse(toml, Path::new(&path)).unwrap();
        let config = Config::resolve(Some((file, path)), &|_| None, &Default::default()).unwrap();
        let store = Arc::new(swarm_store::SqliteStore::in_memory().unwrap());
        Gateway::from_config(&config, store, Tape::Live).unwrap()
    }

    #[test]
    fn a_recorded_call_is_counted_in_the_metrics_too() {
        let gw = gateway(
            "[providers.local]\nbase_url = \"http://127.0.0.1:1/v1\"\n\
             [models.worker]\nprovider = \"local\"\nmodel = \"m\"\n\
             [prices.m]\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\n",
        );
        let project = ProjectId::new("p");
        let task = TaskId::new("t");
        let caller = Caller {
            project: &project,
            task: Some(&task),
            attempt: Some(1),
            role: ModelRole::Worker,
            turn: 1,
        };
        let served = Served {
            reply: swarm_llm::Reply {
                message: ChatMessage::assistant("hi"),
                usage: swarm_protocol::chat::Usage {
                    prompt_tokens: 1000,
                    completion_tokens: 500,
                    total_tokens: 1500,
                    ..Default::default()
                },
            },
            provider: "local".into(),
            model: "m".into(),
            retries: 1,
            waited: Duration::from_millis(250),
            latency: Duration::from_millis(40),
        };
        gw.account_for(&caller, &Ok(served), None);
        let failed = Failed {
            error: swarm_llm::Error::Timeout {
                provider: "local".into(),
                after: Duration::from_secs(1),
            },
            provider: "local".into(),
            model: "m".into(),
            retries: 3,
            waited: Duration::ZERO,
            latency: Duration::from_secs(1),
        };
        gw.account_for(&caller, &Err(failed), None);
        let t = gw.metrics().render(crate::MetricsFormat::Prometheus).body;
        let who = r#"role="worker",provider="local",model="m""#;
        for line in [
            format!(r#"agentswarm_model_calls_total{{{who},outcome="ok"}} 1"#),
            format!(r#"agentswarm_model_calls_total{{{who},outcome="timeout"}} 1"#),
            format!(r#"agentswarm_model_tokens_total{{{who},direction="input"}} 1000"#),
            format!(r#"agentswarm_model_tokens_total{{{who},direction="output"}} 500"#),
            format!("agentswarm_model_cost_usd_total{{{who}}} 0.002"),
            r#"agentswarm_model_retries_total{provider="local",model="m"} 4"#.to_owned(),
            "agentswarm_rate_limit_wait_seconds_total 0.25".to_owned(),
        ] {
            assert!(t.lines().any(|l| l == line), "{line} missing in:\n{t}");
        }
        // The store holds the same call.
        let usage = gw.inner.store.usage(&project).unwrap();
        assert_eq!(usage[0].calls, 2);
        assert_eq!(usage[0].input_tokens, 1000);
        assert_eq!(gw.rate_limit().limit, 20);
    }

    #[test]
    fn only_the_keys_of_providers_in_use_are_required() {
        let providers = "[providers.local]\nbase_url = \"http://127.0.0.1:1/v1\"\n\
                         [providers.spare]\nkind = \"anthropic\"\n";
        let unused = gateway(&format!(
            "{providers}[models.worker]\nprovider = \"local\"\nmodel = \"m\"\n"
        ));
        assert_eq!(unused.missing_key(), None);
        let fallback = gateway(&format!(
            "{providers}[models.worker]\nprovider = \"local\"\nmodel = \"m\"\n\
             fallback = [{{ provider = \"spare\", model = \"c\" }}]\n"
        ));
        let msg = fallback.missing_key().unwrap();
        assert!(
            msg.contains("spare") && msg.contains("ANTHROPIC_API_KEY"),
            "{msg}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quota_answer_holds_every_call_of_the_role_until_the_reset() {
        let scenario = swarm_testkit::Scenario::from_json_str(
            r#"{"default_task": {"turns": [{"content": "done"}]},
                "errors": [{"kind": "worker", "status": 429, "insufficient_quota": true, "retry_after_secs": 2}]}"#,
        )
        .unwrap();
        let server = swarm_testkit::ScriptedServer::start(scenario)
            .await
            .unwrap();
        let gw = gateway(&format!(
            "[providers.local]\nbase_url = \"{}\"\nmax_retries = 0\n\
             [models.worker]\nprovider = \"local\"\nmodel = \"m\"\n",
            server.base_url()
        ));
        let project = ProjectId::new("p");
        let (t1, t2) = (TaskId::new("t1"), TaskId::new("t2"));
        let caller = |task| Caller {
            project: &project,
            task: Some(task),
            attempt: Some(1),
            role: ModelRole::Worker,
            turn: 1,
        };
        let ask = |id: &str| {
            vec![
                ChatMessage::system("s"),
                ChatMessage::user(format!("Task {id}: x\nAttempt: 1")),
            ]
        };
        assert!(gw.quota_block().is_none());
        let started = std::time::Instant::now();
        let first = gw.complete(caller(&t1), ask("t1"), Vec::new());
        let second = async {
            // Once the quota answer is in, a new call waits too.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while gw.quota_block().is_none() {
                assert!(std::time::Instant::now() < deadline, "no quota block");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let b = gw.quota_block().unwrap();
            assert_eq!(b.provider, "local");
            assert!(b.reason.contains("quota"), "{}", b.reason);
            assert!(b.until > SystemTime::now());
            assert_eq!(
                gw.quota_block_for(ModelRole::Planner).map(|b| b.provider),
                Some("local".into())
            );
            assert_eq!(gw.quota_blocks().len(), 1);
            gw.complete(caller(&t2), ask("t2"), Vec::new()).await
        };
        let (a, b) = tokio::join!(first, second);
        // Neither call failed for it: both were answered after the reset.
        assert!(a.is_ok() && b.is_ok(), "{:?} {:?}", a.err(), b.err());
        assert!(
            started.elapsed() >= Duration::from_millis(1900),
            "{:?}",
            started.elapsed()
        );
        assert!(gw.quota_block().is_none(), "the block ends at the reset");
        let statuses: Vec<u16> = server.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [429, 200, 200], "no call went out while blocked");
        assert!(server.violations().is_empty(), "{:?}", server.violations());
    }
}

//! The store as the engine sees it: every free text written through it —
//! errors, attempt reasons, why tasks wait, task summaries, event data —
//! has the configured API keys and key-shaped strings masked first, so no
//! secret reaches the store, `status`, the event stream or the manifest.

use std::sync::Arc;
use swarm_llm::redact::Redactor;
use swarm_protocol::{Plan, ProjectId, ProjectState, TaskId};
use swarm_store::{
    AttemptEnd, AttemptRecord, EventRecord, ModelCallRecord, NewProject, NewTask, ProjectRecord,
    Result, Spent, Store, TaskRecord, TaskUpdate, UsageTotals,
};

pub struct RedactedStore {
    inner: Arc<dyn Store>,
    redactor: Redactor,
}

impl RedactedStore {
    pub fn new(inner: Arc<dyn Store>, redactor: Redactor) -> Self {
        Self { inner, redactor }
    }

    fn r(&self, s: &str) -> String {
        self.redactor.redact(s).into_owned()
    }
}

impl Store for RedactedStore {
    fn create_project(&self, project: &NewProject) -> Result<()> {
        let mut p = project.clone();
        p.goal = self.r(&p.goal);
        self.inner.create_project(&p)
    }
    fn project(&self, id: &ProjectId) -> Result<ProjectRecord> {
        self.inner.project(id)
    }
    fn list_projects(&self) -> Result<Vec<ProjectRecord>> {
        self.inner.list_projects()
    }
    fn set_project_state(
        &self,
        id: &ProjectId,
        from: &[ProjectState],
        to: ProjectState,
        error: Option<&str>,
    ) -> Result<bool> {
        let error = error.map(|e| self.r(e));
        self.inner.set_project_state(id, from, to, error.as_deref())
    }
    fn set_project_waiting(&self, id: &ProjectId, waiting: Option<&str>) -> Result<()> {
        self.inner.set_project_waiting(id, waiting)
    }
    fn cancel_project(&self, id: &ProjectId) -> Result<bool> {
        self.inner.cancel_project(id)
    }
    fn set_planner_calls(&self, id: &ProjectId, calls: u32) -> Result<()> {
        self.inner.set_planner_calls(id, calls)
    }
    fn set_project_source(&self, id: &ProjectId, source: &serde_json::Value) -> Result<()> {
        self.inner.set_project_source(id, source)
    }
    fn set_project_options(&self, id: &ProjectId, options: &serde_json::Value) -> Result<()> {
        self.inner.set_project_options(id, options)
    }
    fn set_final(
        &self,
        id: &ProjectId,
        final_commit: Option<&str>,
        delivery: Option<&str>,
    ) -> Result<()> {
        self.inner.set_final(id, final_commit, delivery)
    }
    fn save_plan(&self, id: &ProjectId, plan: &Plan, tasks: &[NewTask]) -> Result<()> {
        self.inner.save_plan(id, plan, tasks)
    }
    fn add_fix_tasks(
        &self,
        id: &ProjectId,
        round: u32,
        tasks: &[NewTask],
        verify_task: &TaskId,
    ) -> Result<()> {
        self.inner.add_fix_tasks(id, round, tasks, verify_task)
    }
    fn tasks(&self, id: &ProjectId) -> Result<Vec<TaskRecord>> {
        self.inner.tasks(id)
    }
    fn task(&self, id: &ProjectId, task: &TaskId) -> Result<Option<TaskRecord>> {
        self.inner.task(id, task)
    }
    fn update_task(&self, id: &ProjectId, task: &TaskId, update: &TaskUpdate) -> Result<bool> {
        let mut u = update.clone();
        if let Some(Some(e)) = &u.last_error {
            u.last_error = Some(Some(self.r(e)));
        }
        if let Some(s) = &u.summary {
            u.summary = Some(self.r(s));
        }
        self.inner.update_task(id, task, &u)
    }
    fn start_attempt(
        &self,
        id: &ProjectId,
        task: &TaskId,
        attempt: u32,
        started_ms: i64,
    ) -> Result<()> {
        self.inner.start_attempt(id, task, attempt, started_ms)
    }
    fn finish_attempt(&self, id: &ProjectId, end: &AttemptEnd) -> Result<()> {
        let end = AttemptEnd {
            reason: end.reason.as_deref().map(|e| self.r(e)),
            ..end.clone()
        };
        self.inner.finish_attempt(id, &end)
    }
    fn attempts(&self, id: &ProjectId, task: &TaskId) -> Result<Vec<AttemptRecord>> {
        self.inner.attempts(id, task)
    }
    fn append_event(
        &self,
        id: &ProjectId,
        task: Option<&TaskId>,
        kind: &str,
        data: &serde_json::Value,
    ) -> Result<i64> {
        let mut data = data.clone();
        self.redactor.redact_json(&mut data);
        self.inner.append_event(id, task, kind, &data)
    }
    fn events(&self, id: &ProjectId, after: i64, limit: usize) -> Result<Vec<EventRecord>> {
        self.inner.events(id, after, limit)
    }
    fn events_of_kind(&self, id: &ProjectId, kind: &str, limit: usize) -> Result<Vec<EventRecord>> {
        self.inner.events_of_kind(id, kind, limit)
    }
    fn last_event_id(&self, project: Option<&ProjectId>) -> Result<i64> {
        self.inner.last_event_id(project)
    }
    fn all_events(&self, after: i64, limit: usize) -> Result<Vec<EventRecord>> {
        self.inner.all_events(after, limit)
    }
    fn record_model_call(&self, call: &ModelCallRecord) -> Result<()> {
        self.inner.record_model_call(call)
    }
    fn usage(&self, id: &ProjectId) -> Result<Vec<UsageTotals>> {
        self.inner.usage(id)
    }
    fn spent(&self, id: &ProjectId) -> Result<Spent> {
        self.inner.spent(id)
    }
}

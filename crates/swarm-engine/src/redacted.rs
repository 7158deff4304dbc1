//! The store as the engine sees it: the free text written through it that
//! can hold what a model or a provider said — the goal, project and task
//! errors, attempt reasons, why tasks wait, task summaries, event data —
//! has the configured API keys and key-shaped strings masked first, so no
//! secret reaches the store, `status`, the event stream or the manifest.
//! Plans are stored as given.

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
        let waiting = waiting.map(|w| self.r(w));
        self.inner.set_project_waiting(id, waiting.as_deref())
    }
    fn delete_project(&self, id: &ProjectId) -> Result<bool> {
        self.inner.delete_project(id)
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
        if let Some(Some(c)) = &u.review_comment {
            u.review_comment = Some(Some(self.r(c)));
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
    fn decide_review(
        &self,
        id: &ProjectId,
        task: &TaskId,
        attempt: u32,
        decision: &swarm_store::ReviewDecision,
    ) -> Result<bool> {
        let decision = match decision {
            swarm_store::ReviewDecision::Approve => swarm_store::ReviewDecision::Approve,
            swarm_store::ReviewDecision::Reject { comment } => {
                swarm_store::ReviewDecision::Reject {
                    comment: self.r(comment),
                }
            }
        };
        self.inner.decide_review(id, task, attempt, &decision)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_masked_in_what_it_says_it_masks() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Store> =
            Arc::new(swarm_store::SqliteStore::open(&dir.path().join("s.db")).unwrap());
        let key = "fake-key-for-redaction-test-0123456789";
        let store = RedactedStore::new(inner.clone(), Redactor::new(vec![key.to_owned()]));
        let id = ProjectId::new("p1");
        store
            .create_project(&NewProject {
                id: id.clone(),
                goal: format!("goal with {key}"),
                options: serde_json::json!({}),
                source: None,
            })
            .unwrap();
        store
            .set_project_waiting(&id, Some(&format!("waiting: provider said {key}")))
            .unwrap();
        store
            .set_project_state(
                &id,
                &[],
                ProjectState::Failed,
                Some(&format!("error {key}")),
            )
            .unwrap();
        store
            .append_event(&id, None, "note", &serde_json::json!({"message": key}))
            .unwrap();
        let p = inner.project(&id).unwrap();
        let events = inner.events(&id, 0, 10).unwrap();
        let stored = format!("{} {:?} {:?} {:?}", p.goal, p.waiting, p.error, events);
        assert!(!stored.contains(key), "{stored}");
        assert!(p
            .waiting
            .as_deref()
            .unwrap()
            .starts_with("waiting: provider said "));
    }
}

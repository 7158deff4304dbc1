//! The model gateway: every model call of the planner and of every worker
//! goes through here, and each one is recorded in the store (`model_calls`).
//! It is the only code that talks to the provider; workers ask it over IPC.
//! (Rate limiting, per-role models and budgets arrive with the gateway issue.)

use std::sync::Arc;
use swarm_llm::{CallError, Completion, CompletionRequest, ModelClient};
use swarm_protocol::chat::{ChatMessage, ToolSpec};
use swarm_protocol::{ProjectId, TaskId};
use swarm_store::{ModelCallRecord, Store};

#[derive(Clone)]
pub struct Gateway {
    client: Arc<dyn ModelClient>,
    store: Arc<dyn Store>,
}

/// Who is asking, for accounting.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub project: &'a ProjectId,
    pub task: Option<&'a TaskId>,
    pub attempt: Option<u32>,
    pub role: &'static str,
}

impl Gateway {
    pub fn new(client: Arc<dyn ModelClient>, store: Arc<dyn Store>) -> Self {
        Self { client, store }
    }

    pub async fn complete(
        &self,
        caller: Caller<'_>,
        messages: Vec<ChatMessage>,
        tools: Vec<ToolSpec>,
    ) -> Result<Completion, CallError> {
        let result = self
            .client
            .complete(CompletionRequest { messages, tools })
            .await;
        let (input, output, latency, retries, outcome) = match &result {
            Ok(c) => (
                c.usage.prompt_tokens,
                c.usage.completion_tokens,
                c.latency,
                c.retries,
                "ok".to_owned(),
            ),
            Err(e) => (0, 0, e.latency, e.retries, e.error.kind()),
        };
        let record = ModelCallRecord {
            project_id: caller.project.clone(),
            task_id: caller.task.cloned(),
            attempt: caller.attempt,
            role: caller.role.to_owned(),
            model: self.client.model().to_owned(),
            input_tokens: input,
            output_tokens: output,
            latency_ms: latency.as_millis() as u64,
            retries,
            outcome,
            ts_ms: swarm_store::now_ms(),
        };
        if let Err(e) = self.store.record_model_call(&record) {
            tracing::warn!(error = %e, "could not record a model call");
        }
        result
    }
}

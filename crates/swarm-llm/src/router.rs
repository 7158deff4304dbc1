//! A role's route through the providers: its model first, then each
//! fallback in order. Around every HTTP request: the shared request limiter
//! (`API_RATE_LIMIT_RPM`), the provider's tokens-per-minute window, bounded
//! retries with backoff (at least the server's `retry-after`), and the
//! context-length shrink. A retry is a new request and waits for the
//! limiter like any other.

use crate::ratelimit::{RequestLimiter, TokenWindow};
use crate::{CallMeta, Error, ModelRequest, Provider, Reply, RetryPolicy};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm_protocol::chat::{ChatMessage, Role, ToolSpec};

/// One model at one provider, with the role's generation settings.
#[derive(Clone)]
pub struct Target {
    pub provider: Arc<dyn Provider>,
    pub model: String,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    /// The provider's tokens-per-minute window, when it has one.
    pub tokens: Option<Arc<TokenWindow>>,
    /// Retries of a failed request before falling back (the provider's `max_retries`).
    pub max_retries: u32,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.provider.name(), self.model)
    }
}

/// A role's model and its fallbacks, tried in order.
#[derive(Debug, Clone)]
pub struct Route {
    pub targets: Vec<Target>,
}

/// A finished call: the answer and what it took.
#[derive(Debug, Clone)]
pub struct Served {
    pub reply: Reply,
    /// The provider and model that answered.
    pub provider: String,
    pub model: String,
    /// HTTP requests sent beyond the first (retries, shrinks, fallbacks).
    pub retries: u32,
    /// Time spent waiting for the rate limits.
    pub waited: Duration,
    pub latency: Duration,
}

/// A call that failed for good, with what it took (for accounting).
#[derive(Debug)]
pub struct Failed {
    pub error: Error,
    pub provider: String,
    pub model: String,
    pub retries: u32,
    pub waited: Duration,
    pub latency: Duration,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.retries > 0 {
            write!(f, "{} (after {} retries)", self.error, self.retries)
        } else {
            write!(f, "{}", self.error)
        }
    }
}

/// Sends a role's calls; shared by every worker and project of a supervisor.
pub struct Router {
    limiter: Arc<dyn RequestLimiter>,
    retry: RetryPolicy,
}

/// What replaces a tool output dropped to fit the context window.
pub const SHRUNK_NOTE: &str = "[output dropped to fit the model's context window";

impl Router {
    pub fn new(limiter: Arc<dyn RequestLimiter>, retry: RetryPolicy) -> Self {
        Self { limiter, retry }
    }

    /// One call along `route`.
    pub async fn call(
        &self,
        route: &Route,
        meta: &CallMeta,
        mut messages: Vec<ChatMessage>,
        tools: Vec<ToolSpec>,
    ) -> Result<Served, Failed> {
        let started = Instant::now();
        let mut requests = 0u32;
        let mut waited = Duration::ZERO;
        let fail = |error, target: &Target, requests: u32, waited| Failed {
            error,
            provider: target.provider.name().to_owned(),
            model: target.model.clone(),
            retries: requests.saturating_sub(1),
            waited,
            latency: started.elapsed(),
        };
        let Some(last) = route.targets.last() else {
            return Err(Failed {
                error: Error::Setup {
                    provider: String::new(),
                    message: format!("no model is configured for the {} role", meta.role),
                },
                provider: String::new(),
                model: String::new(),
                retries: 0,
                waited,
                latency: started.elapsed(),
            });
        };
        for (i, target) in route.targets.iter().enumerate() {
            let mut retries = 0u32;
            loop {
                waited += self.limiter.acquire().await;
                if let Some(t) = &target.tokens {
                    waited += t.acquire().await;
                }
                requests += 1;
                let request = ModelRequest {
                    model: target.model.clone(),
                    messages: messages.clone(),
                    tools: tools.clone(),
                    max_tokens: target.max_tokens,
                    temperature: target.temperature,
                };
                let error = match target.provider.send(&request).await {
                    Ok(reply) => {
                        if let Some(t) = &target.tokens {
                            t.record(reply.usage.prompt_tokens + reply.usage.completion_tokens);
                        }
                        return Ok(Served {
                            reply,
                            provider: target.provider.name().to_owned(),
                            model: target.model.clone(),
                            retries: requests - 1,
                            waited,
                            latency: started.elapsed(),
                        });
                    }
                    Err(e) => e,
                };
                if let Error::ContextLength { .. } = error {
                    if let Some(bytes) = shrink_oldest_tool_output(&mut messages) {
                        tracing::warn!(role = %meta.role, task = ?meta.task, turn = meta.turn, bytes,
                            "the conversation exceeds the context window; dropped the oldest tool output and trying again");
                        continue;
                    }
                }
                if error.is_retryable() && retries < target.max_retries {
                    retries += 1;
                    let retry_after = match &error {
                        Error::Http { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    let delay = self.retry.delay(retries, retry_after);
                    tracing::warn!(role = %meta.role, task = ?meta.task, turn = meta.turn, error = %error,
                        retry = retries, delay_ms = delay.as_millis() as u64, "model request failed; retrying");
                    tokio::time::sleep(delay).await;
                    continue;
                }
                if error.wants_fallback() && i + 1 < route.targets.len() {
                    let next = &route.targets[i + 1];
                    tracing::warn!(role = %meta.role, task = ?meta.task, error = %error,
                        from = ?target, to = ?next, "model keeps failing; falling back");
                    break;
                }
                return Err(fail(error, target, requests, waited));
            }
        }
        // Every target broke out to the next one; the last never does.
        Err(fail(
            Error::Setup {
                provider: last.provider.name().to_owned(),
                message: "no model of the route answered".into(),
            },
            last,
            requests,
            waited,
        ))
    }
}

/// Replaces the oldest tool output that is still whole with a short note.
/// Returns the bytes dropped, or `None` when nothing is left to drop.
pub fn shrink_oldest_tool_output(messages: &mut [ChatMessage]) -> Option<usize> {
    let m = messages.iter_mut().find(|m| {
        m.role == Role::Tool
            && m.content
                .as_deref()
                .is_some_and(|c| c.len() > 200 && !c.starts_with(SHRUNK_NOTE))
    })?;
    let bytes = m.content.as_ref().map_or(0, String::len);
    m.content = Some(format!("{SHRUNK_NOTE}: {bytes} bytes]"));
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::SlidingWindow;
    use std::sync::Mutex;
    use swarm_protocol::chat::Usage;

    /// Answers from a list of results, recording the requests.
    struct Scripted {
        name: &'static str,
        answers: Mutex<Vec<crate::Result<Reply>>>,
        seen: Mutex<Vec<ModelRequest>>,
    }

    impl Scripted {
        fn new(name: &'static str, answers: Vec<crate::Result<Reply>>) -> Arc<Self> {
            Arc::new(Self {
                name,
                answers: Mutex::new(answers.into_iter().rev().collect()),
                seen: Mutex::new(Vec::new()),
            })
        }
        fn seen(&self) -> Vec<ModelRequest> {
            self.seen.lock().unwrap().clone()
        }
    }

    #[async_trait::async_trait]
    impl Provider for Scripted {
        fn name(&self) -> &str {
            self.name
        }
        async fn send(&self, request: &ModelRequest) -> crate::Result<Reply> {
            self.seen.lock().unwrap().push(request.clone());
            self.answers
                .lock()
                .unwrap()
                .pop()
                .unwrap_or_else(|| Ok(ok()))
        }
    }

    fn ok() -> Reply {
        Reply {
            message: ChatMessage::assistant("done"),
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                total_tokens: 15,
                ..Usage::default()
            },
        }
    }

    fn http(status: u16, retry_after: Option<Duration>) -> crate::Result<Reply> {
        Err(Error::Http {
            provider: "p".into(),
            status,
            message: "scripted".into(),
            retry_after,
        })
    }

    fn target(p: &Arc<Scripted>, model: &str, max_retries: u32) -> Target {
        Target {
            provider: p.clone(),
            model: model.into(),
            max_tokens: Some(100),
            temperature: None,
            tokens: None,
            max_retries,
        }
    }

    fn router() -> Router {
        Router::new(
            Arc::new(SlidingWindow::new(0, Duration::from_secs(60))),
            RetryPolicy {
                base_delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(1),
            },
        )
    }

    fn meta() -> CallMeta {
        CallMeta {
            role: "worker".into(),
            task: Some("t1".into()),
            attempt: Some(1),
            turn: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_and_honours_retry_after() {
        let p = Scripted::new(
            "p",
            vec![
                http(429, Some(Duration::from_secs(2))),
                http(429, Some(Duration::from_secs(2))),
                Ok(ok()),
            ],
        );
        let route = Route {
            targets: vec![target(&p, "m", 4)],
        };
        let t0 = tokio::time::Instant::now();
        let served = router()
            .call(&route, &meta(), vec![ChatMessage::user("hi")], vec![])
            .await
            .unwrap();
        assert_eq!(served.retries, 2);
        assert_eq!(p.seen().len(), 3);
        assert!(t0.elapsed() >= Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_are_not_retried_and_fallback_serves() {
        let p = Scripted::new(
            "p",
            vec![Err(Error::Auth {
                provider: "p".into(),
                status: 401,
                message: "bad key".into(),
                hint: "Check K".into(),
            })],
        );
        let route = Route {
            targets: vec![target(&p, "m", 4)],
        };
        let failed = router()
            .call(&route, &meta(), vec![ChatMessage::user("hi")], vec![])
            .await
            .unwrap_err();
        assert_eq!((failed.retries, p.seen().len()), (0, 1));
        assert!(failed.to_string().contains("Check K"), "{failed}");

        // The primary keeps answering 503: after its retries the fallback serves.
        let primary = Scripted::new("a", (0..3).map(|_| http(503, None)).collect());
        let backup = Scripted::new("b", vec![]);
        let route = Route {
            targets: vec![target(&primary, "big", 2), target(&backup, "small", 2)],
        };
        let served = router()
            .call(&route, &meta(), vec![ChatMessage::user("hi")], vec![])
            .await
            .unwrap();
        assert_eq!(
            (served.provider.as_str(), served.model.as_str()),
            ("b", "small")
        );
        assert_eq!((primary.seen().len(), backup.seen().len()), (3, 1));
        assert_eq!(served.retries, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn context_length_shrinks_the_oldest_tool_output() {
        let too_long = || {
            Err(Error::ContextLength {
                provider: "p".into(),
                message: "too long".into(),
            })
        };
        let p = Scripted::new("p", vec![too_long(), Ok(ok())]);
        let route = Route {
            targets: vec![target(&p, "m", 0)],
        };
        let messages = vec![
            ChatMessage::user("Task t1: x"),
            ChatMessage::tool_result("c1", "a".repeat(5000)),
            ChatMessage::tool_result("c2", "b".repeat(5000)),
        ];
        router()
            .call(&route, &meta(), messages, vec![])
            .await
            .unwrap();
        let seen = p.seen();
        assert_eq!(seen.len(), 2);
        let second = &seen[1].messages;
        assert!(second[1]
            .content
            .as_deref()
            .unwrap()
            .starts_with(SHRUNK_NOTE));
        assert_eq!(second[2].content.as_deref().unwrap().len(), 5000);

        // Nothing left to drop: the error is final.
        let p = Scripted::new("p", vec![too_long()]);
        let route = Route {
            targets: vec![target(&p, "m", 3)],
        };
        let failed = router()
            .call(&route, &meta(), vec![ChatMessage::user("hi")], vec![])
            .await
            .unwrap_err();
        assert_eq!(failed.error.kind(), "context_length");
        assert_eq!(p.seen().len(), 1);
    }
}

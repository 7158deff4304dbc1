//! The CLI's side of the HTTP API: a running `serve` advertises its address
//! in `<data dir>/serve.json`; `status`, `submit`, `cancel` and `logs` use
//! the API when that daemon answers, and the store directly otherwise.
//! `AGENTSWARM_API_URL` names a daemon explicitly (then there is no
//! fallback: an unreachable daemon is an error).

use anyhow::{anyhow, Context, Result};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use swarm_config::Config;

const ADVERT: &str = "serve.json";

/// The daemon's advertisement; removed when dropped (a clean stop).
pub struct Endpoint {
    path: PathBuf,
}

impl Endpoint {
    /// Holds `<data dir>/serve.lock` (a `flock`, released when the process
    /// ends, however it ends) for as long as the value lives, or says which
    /// daemon holds it.
    pub fn claim(data_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let path = data_dir.join("serve.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(lock),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let who = match advertised(data_dir) {
                    Some((url, pid)) => format!(" (pid {pid}, {url})"),
                    None => String::new(),
                };
                Err(anyhow!(
                    "another `agentswarm serve`{who} is running on the data directory {}; \
                     stop it first (`systemctl stop agentswarm`, or kill that pid), or give this one \
                     another data directory (AGENTSWARM_HOME)",
                    data_dir.display()
                ))
            }
            Err((_, e)) => Err(anyhow!("cannot lock {}: {e}", path.display())),
        }
    }

    /// Writes `{"url", "pid"}` for clients on this machine. An address on
    /// every interface is advertised as loopback.
    pub fn advertise(data_dir: &Path, address: SocketAddr) -> Result<Endpoint> {
        let mut local = address;
        if local.ip().is_unspecified() {
            local.set_ip(match local {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let path = data_dir.join(ADVERT);
        let body = serde_json::json!({"url": format!("http://{local}"), "pid": std::process::id()});
        let tmp = data_dir.join(format!("{ADVERT}.tmp"));
        std::fs::write(&tmp, body.to_string())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Endpoint { path })
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // Only our own: a second `serve` may have advertised itself since.
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["pid"].as_u64() == Some(u64::from(std::process::id())));
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A client of a running daemon's API.
pub struct Client {
    base: String,
    local: bool,
    token: Option<SecretString>,
    http: reqwest::Client,
}

/// An error answer of the API: its status and message.
#[derive(Debug, thiserror::Error)]
#[error("{message} (HTTP {status})")]
pub struct ApiFailure {
    pub status: u16,
    pub message: String,
}

impl Client {
    /// The daemon for this config's data directory, if one is up:
    /// `AGENTSWARM_API_URL`, else the advertisement of a live `serve`.
    pub async fn discover(config: &Config) -> Result<Option<Client>> {
        let explicit = std::env::var("AGENTSWARM_API_URL")
            .ok()
            .filter(|u| !u.trim().is_empty());
        let (base, advertised_pid) = match explicit {
            Some(url) => (url.trim().trim_end_matches('/').to_owned(), None),
            None => match advertised(&config.data_dir) {
                Some((url, pid)) => (url, Some(pid)),
                None => return Ok(None),
            },
        };
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(2));
        if advertised_pid.is_some() {
            // A daemon on this machine: never through a proxy (the token
            // would go to it).
            http = http.no_proxy();
        }
        let http = http.build().context("cannot build the HTTP client")?;
        let client = Client {
            base,
            local: advertised_pid.is_some(),
            token: config.api_token.clone(),
            http,
        };
        match client.get::<serde_json::Value>("/api/v1/status").await {
            // The process that advertised itself, not another daemon that
            // took its port after it died.
            Ok(s)
                if advertised_pid.is_some_and(|pid| s["pid"].as_u64() != Some(u64::from(pid))) =>
            {
                tracing::warn!(
                    "{}/serve.json is stale; using the store directly",
                    config.data_dir.display()
                );
                Ok(None)
            }
            Ok(_) => Ok(Some(client)),
            Err(e) if !client.local => Err(e.context(format!(
                "the daemon at AGENTSWARM_API_URL={} does not answer",
                client.base
            ))),
            Err(e) => {
                // A daemon we cannot use (a token we lack, a stale file):
                // the store is on this machine, so carry on through it.
                tracing::warn!(error = %format!("{e:#}"), "the daemon's API is not usable; using the store directly");
                Ok(None)
            }
        }
    }

    /// The daemon advertised itself in this data directory (it runs here).
    pub fn is_local(&self) -> bool {
        self.local
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t.expose_secret()),
            None => r,
        }
    }

    async fn answer<T: DeserializeOwned>(r: reqwest::Response) -> Result<T> {
        let status = r.status();
        let bytes = r.bytes().await.context("reading the daemon's answer")?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .context("the daemon's answer is not the expected JSON");
        }
        let message = serde_json::from_slice::<swarm_protocol::api::ApiError>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        Err(anyhow!(ApiFailure {
            status: status.as_u16(),
            message
        }))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let r = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .with_context(|| format!("cannot reach the daemon at {}", self.base))?;
        Self::answer(r).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T> {
        let r = self
            .request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the daemon at {}", self.base))?;
        Self::answer(r).await
    }
}

/// `/api/v1/projects/<id>`, refusing an id that is not one (it would
/// change the path).
pub fn project_path(id: &str) -> Result<String> {
    let ok = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with('.');
    if !ok {
        anyhow::bail!("{id:?} is not a project id; `agentswarm status` lists them");
    }
    Ok(format!("/api/v1/projects/{id}"))
}

/// The URL and pid a live daemon advertised for this data directory.
pub(crate) fn advertised(data_dir: &Path) -> Option<(String, u32)> {
    let text = std::fs::read_to_string(data_dir.join(ADVERT)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let pid = i32::try_from(v["pid"].as_u64()?).ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    let url = v["url"].as_str()?.to_owned();
    alive.then(|| (url, pid.unsigned_abs()))
}

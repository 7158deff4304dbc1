//! The relay in front of an outside agent (docs/agents.md, docs/security.md).
//!
//! An agent speaks HTTP over TCP to its model endpoint, but a confined
//! agent has no network: its namespace holds only its own loopback. The
//! gateway's per-attempt endpoint is a UNIX socket in the attempt's private
//! directory, which the sandbox can see. This relay is the first process in
//! the sandbox: it listens on `127.0.0.1:0` of the agent's namespace,
//! replaces `{gateway}` in the agent's arguments and environment with that
//! address, starts the agent (which inherits its stdio: an ACP agent's
//! JSON-RPC passes straight through) and copies every TCP connection to
//! the socket and back. It exits with the agent's status.
//!
//! Hand-written (about sixty lines of tokio): the byte copy is
//! `tokio::io::copy_bidirectional`; no crate does "listen here, start that".

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::net::{TcpListener, UnixStream};

/// What `agentswarm agent-relay` is given.
#[derive(Debug, Clone)]
pub struct RelaySpec {
    /// The gateway's UNIX socket.
    pub socket: PathBuf,
    /// The agent's program and arguments (`{gateway}` replaced).
    pub command: Vec<OsString>,
    /// Names of environment variables whose `{gateway}` is replaced.
    pub templated: Vec<String>,
}

/// The placeholder of the agent's endpoint.
pub const GATEWAY_PLACEHOLDER: &str = "{gateway}";

fn fill(s: &std::ffi::OsStr, url: &str) -> OsString {
    match s.to_str() {
        Some(t) if t.contains(GATEWAY_PLACEHOLDER) => t.replace(GATEWAY_PLACEHOLDER, url).into(),
        _ => s.to_owned(),
    }
}

/// Runs the relay until the agent exits; returns its exit code (128 +
/// signal when it was killed).
pub async fn run(spec: RelaySpec) -> std::io::Result<i32> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let Some((program, args)) = spec.command.split_first() else {
        return Err(std::io::Error::other("agent-relay: no agent command"));
    };
    let mut cmd = tokio::process::Command::new(fill(program, &url));
    cmd.args(args.iter().map(|a| fill(a, &url)))
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for name in &spec.templated {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, fill(&v, &url));
        }
    }
    let mut child = cmd.spawn()?;
    let socket = spec.socket.clone();
    let accept = async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            let socket = socket.clone();
            tokio::spawn(async move {
                if let Ok(mut unix) = UnixStream::connect(&socket).await {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                }
            });
        }
    };
    let status = tokio::select! {
        s = child.wait() => s?,
        _ = accept => unreachable_accept(),
    };
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// The accept loop never ends by itself.
fn unreachable_accept() -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    std::process::ExitStatus::from_raw(1 << 8)
}

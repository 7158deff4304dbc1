//! `[agents.NAME]`: outside coding agents that can do a task instead of the
//! built-in agent (docs/agents.md).

use crate::{Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
pub use swarm_protocol::agent::{
    AgentKind, AgentSpec, AgentWire, Credentials, HomeFile, OutputFormat,
};

/// The name that always means the built-in agent.
pub const BUILTIN: &str = "builtin";

/// One `[agents.NAME]` table as written.
#[derive(Debug, Default, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileAgent {
    /// `builtin`, `acp` (Agent Client Protocol on stdio) or `command` (a
    /// non-interactive CLI).
    pub kind: Option<String>,
    /// The program and its arguments, e.g. `["claude-code-acp"]` or
    /// `["aider", "--yes-always", "--message", "{prompt}"]`. `{prompt}` is
    /// the task's prompt (`command` agents), `{gateway}` the agent's model
    /// endpoint and `{token}` its per-attempt token.
    pub command: Option<Vec<String>>,
    /// Added to the agent's environment; values may hold `{gateway}` and
    /// `{token}`.
    pub env: Option<BTreeMap<String, String>>,
    /// The model API the agent speaks: `anthropic` (Messages),
    /// `openai_chat` (Chat Completions), `openai_responses` (Responses) or
    /// `gemini` (generateContent).
    pub speaks: Option<String>,
    /// `command` agents: how stdout is read: `text` (default),
    /// `claude_stream_json` or `codex_json`.
    pub output: Option<String>,
    /// More trees the agent may read and execute in the sandbox (where it
    /// is installed); `~/` is the home directory.
    pub read_paths: Option<Vec<PathBuf>>,
    /// `gateway` (default: the swarm's providers, keys stay in the
    /// supervisor) or `own` (the agent's own login; opens the network).
    pub credentials: Option<String>,
    /// With `credentials = "own"`: directories or files copied into the
    /// attempt's private HOME, e.g. `["~/.claude", "~/.claude.json"]`.
    pub home_files: Option<Vec<PathBuf>>,
}

/// A configured agent: the built-in one, or an outside one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentChoice {
    Builtin,
    External(AgentSpec),
}

fn bad(name: &str, message: impl Into<String>) -> Error {
    Error::Agent {
        name: name.to_owned(),
        message: message.into(),
    }
}

fn expand(p: &Path, home: Option<&Path>) -> PathBuf {
    match (p.strip_prefix("~"), home) {
        (Ok(rest), Some(h)) => h.join(rest),
        _ => p.to_owned(),
    }
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Resolves the `[agents]` tables. `home` is what `~/` means.
pub(crate) fn resolve_agents(
    file: Option<&BTreeMap<String, FileAgent>>,
    home: Option<&Path>,
) -> Result<BTreeMap<String, AgentChoice>> {
    let mut out = BTreeMap::new();
    out.insert(BUILTIN.to_owned(), AgentChoice::Builtin);
    for (name, a) in file.into_iter().flatten() {
        if !is_valid_name(name) {
            return Err(bad(
                name,
                "the name must be lowercase letters, digits, '-' and '_' (at most 64)",
            ));
        }
        let kind = match a.kind.as_deref() {
            Some("builtin") => {
                if a.command.is_some() || a.env.is_some() || a.speaks.is_some() {
                    return Err(bad(
                        name,
                        "kind = \"builtin\" takes no command, env or speaks; remove them",
                    ));
                }
                out.insert(name.clone(), AgentChoice::Builtin);
                continue;
            }
            Some("acp") => AgentKind::Acp,
            Some("command") => AgentKind::Command,
            Some(other) => {
                return Err(bad(
                    name,
                    format!("kind {other:?} is unknown; use \"builtin\", \"acp\" or \"command\""),
                ))
            }
            None => {
                return Err(bad(
                    name,
                    "`kind` is missing; set kind = \"acp\", \"command\" or \"builtin\"",
                ))
            }
        };
        if name == BUILTIN {
            return Err(bad(
                name,
                "`builtin` is the built-in agent's name; choose another",
            ));
        }
        let command = a.command.clone().unwrap_or_default();
        if command.is_empty() || command[0].trim().is_empty() {
            return Err(bad(
                name,
                match kind {
                    AgentKind::Acp => "`command` is missing: the program that speaks ACP on stdio, e.g. command = [\"gemini\", \"--acp\"]",
                    AgentKind::Command => "`command` is missing: the CLI and its arguments with {prompt}, e.g. command = [\"aider\", \"--yes-always\", \"--message\", \"{prompt}\"]",
                },
            ));
        }
        if kind == AgentKind::Command && !command.iter().any(|c| c.contains("{prompt}")) {
            return Err(bad(
                name,
                "a `command` agent gets the task in its arguments: put {prompt} in `command`",
            ));
        }
        let speaks = match a.speaks.as_deref() {
            Some("anthropic") => AgentWire::Anthropic,
            Some("openai_chat" | "openai") => AgentWire::OpenaiChat,
            Some("gemini") => AgentWire::Gemini,
            Some("openai_responses" | "responses") => AgentWire::OpenaiResponses,
            Some(other) => {
                return Err(bad(
                    name,
                    format!(
                        "speaks {other:?} is not served by the gateway; use \"anthropic\" (Messages), \"openai_chat\" (Chat Completions), \"openai_responses\" or \"gemini\""
                    ),
                ))
            }
            None => {
                return Err(bad(
                    name,
                    "`speaks` is missing: the model API the agent uses, \"anthropic\", \"openai_chat\", \"openai_responses\" or \"gemini\" (docs/agents.md lists it per agent)",
                ))
            }
        };
        let output = match a.output.as_deref() {
            None | Some("text") => OutputFormat::Text,
            Some("claude_stream_json") => OutputFormat::ClaudeStreamJson,
            Some("codex_json") => OutputFormat::CodexJson,
            Some(other) => {
                return Err(bad(
                    name,
                    format!("output {other:?} is unknown; use \"text\", \"claude_stream_json\" or \"codex_json\""),
                ))
            }
        };
        if kind == AgentKind::Acp && a.output.is_some() {
            return Err(bad(
                name,
                "`output` is for `command` agents; an ACP agent's output is its protocol",
            ));
        }
        let credentials = match a.credentials.as_deref() {
            None | Some("gateway") => Credentials::Gateway,
            Some("own") => Credentials::Own,
            Some(other) => {
                return Err(bad(
                    name,
                    format!(
                    "credentials {other:?} is unknown; use \"gateway\" (the default) or \"own\""
                ),
                ))
            }
        };
        let paths = |list: &Option<Vec<PathBuf>>, what: &str| -> Result<Vec<PathBuf>> {
            let mut v = Vec::new();
            for p in list.iter().flatten() {
                let p = expand(p, home);
                if !p.is_absolute() {
                    return Err(bad(
                        name,
                        format!(
                            "{what}: {} is not absolute; use an absolute path or ~/…",
                            p.display()
                        ),
                    ));
                }
                v.push(p);
            }
            Ok(v)
        };
        let read_paths = paths(&a.read_paths, "read_paths")?;
        let home_files: Vec<HomeFile> = paths(&a.home_files, "home_files")?
            .into_iter()
            .zip(a.home_files.iter().flatten())
            .map(|(from, written)| HomeFile {
                to: written
                    .strip_prefix("~")
                    .map(Path::to_path_buf)
                    .ok()
                    .or_else(|| from.file_name().map(PathBuf::from))
                    .unwrap_or_default(),
                from,
            })
            .collect();
        if credentials == Credentials::Gateway && !home_files.is_empty() {
            return Err(bad(
                name,
                "home_files copies a login into the sandbox; it needs credentials = \"own\"",
            ));
        }
        let env = a.env.clone().unwrap_or_default();
        for k in env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(bad(name, format!("env: {k:?} is not a variable name")));
            }
        }
        out.insert(
            name.clone(),
            AgentChoice::External(AgentSpec {
                name: name.clone(),
                kind,
                command,
                env,
                speaks,
                output,
                read_paths,
                credentials,
                home_files,
            }),
        );
    }
    Ok(out)
}

/// What keeps `spec` from starting on this machine: its program is not
/// there, or a `read_paths` or `home_files` entry is missing. `path` is the
/// `PATH` a bare program name is looked up in.
pub fn check_agent(spec: &AgentSpec, path: Option<&std::ffi::OsStr>) -> Vec<String> {
    let mut problems = Vec::new();
    let program = Path::new(&spec.command[0]);
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if program.components().count() > 1 {
        executable(program)
    } else {
        path.map(std::env::split_paths)
            .into_iter()
            .flatten()
            .any(|d| executable(&d.join(program)))
    };
    if !found {
        problems.push(format!(
            "agent {}: its program {} is not an executable file{}; install it or fix `command` under [agents.{}] (docs/agents.md)",
            spec.name,
            program.display(),
            if program.components().count() > 1 { "" } else { " on PATH" },
            spec.name
        ));
    }
    for p in spec
        .read_paths
        .iter()
        .chain(spec.home_files.iter().map(|h| &h.from))
    {
        if !p.exists() {
            problems.push(format!(
                "agent {}: {} does not exist (read_paths or home_files under [agents.{}])",
                spec.name,
                p.display(),
                spec.name
            ));
        }
    }
    problems
}

/// What the operator is told about an agent that uses its own credentials.
pub fn own_credentials_notice(spec: &AgentSpec) -> Option<String> {
    (spec.credentials == Credentials::Own).then(|| {
        format!(
            "agent {} uses its own credentials: its model calls go to its vendor with the network open, and their rate limits and costs are the vendor's — the swarm's rate limit, budget and accounting do not see them",
            spec.name
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BTreeMap<String, AgentChoice>> {
        #[derive(Deserialize)]
        struct F {
            agents: BTreeMap<String, FileAgent>,
        }
        let f: F = toml::from_str(text).unwrap();
        resolve_agents(Some(&f.agents), Some(Path::new("/home/u")))
    }

    #[test]
    fn an_acp_agent_resolves_with_its_env_and_paths() {
        let a = parse(
            "[agents.claude]\nkind = \"acp\"\ncommand = [\"claude-code-acp\"]\nspeaks = \"anthropic\"\nread_paths = [\"~/agents\"]\n[agents.claude.env]\nANTHROPIC_BASE_URL = \"{gateway}\"\n",
        )
        .unwrap();
        let AgentChoice::External(s) = &a["claude"] else {
            panic!("{a:?}")
        };
        assert_eq!(s.kind, AgentKind::Acp);
        assert_eq!(s.speaks, AgentWire::Anthropic);
        assert_eq!(s.read_paths, vec![PathBuf::from("/home/u/agents")]);
        assert_eq!(s.env["ANTHROPIC_BASE_URL"], "{gateway}");
        assert_eq!(s.credentials, Credentials::Gateway);
        assert_eq!(a["builtin"], AgentChoice::Builtin);
    }

    #[test]
    fn a_missing_program_is_named() {
        let a = parse("[agents.x]\nkind = \"acp\"\ncommand = [\"no-such-agent-cli\"]\nspeaks = \"anthropic\"\n").unwrap();
        let AgentChoice::External(s) = &a["x"] else {
            panic!()
        };
        let p = check_agent(s, Some(std::ffi::OsStr::new("/usr/bin:/bin")));
        assert!(
            p[0].contains("no-such-agent-cli is not an executable file on PATH"),
            "{p:?}"
        );
        let mut sh = s.clone();
        sh.command = vec!["sh".into()];
        assert!(check_agent(&sh, Some(std::ffi::OsStr::new("/usr/bin:/bin"))).is_empty());
        sh.command = vec!["/nope/sh".into()];
        assert_eq!(check_agent(&sh, None).len(), 1);
    }

    #[test]
    fn bad_entries_say_what_to_do() {
        for (text, says) in [
            ("[agents.x]\ncommand = [\"a\"]\n", "`kind` is missing"),
            ("[agents.x]\nkind = \"ssh\"\n", "kind \"ssh\" is unknown"),
            ("[agents.x]\nkind = \"acp\"\nspeaks = \"anthropic\"\n", "`command` is missing"),
            ("[agents.x]\nkind = \"command\"\ncommand = [\"aider\"]\nspeaks = \"openai_chat\"\n", "put {prompt}"),
            ("[agents.x]\nkind = \"acp\"\ncommand = [\"g\"]\n", "`speaks` is missing"),
            ("[agents.x]\nkind = \"acp\"\ncommand = [\"g\"]\nspeaks = \"ollama\"\n", "not served by the gateway"),
            ("[agents.X]\nkind = \"acp\"\ncommand = [\"g\"]\nspeaks = \"anthropic\"\n", "lowercase"),
            ("[agents.builtin]\nkind = \"acp\"\ncommand = [\"g\"]\nspeaks = \"anthropic\"\n", "built-in agent's name"),
            ("[agents.x]\nkind = \"acp\"\ncommand = [\"g\"]\nspeaks = \"anthropic\"\nhome_files = [\"~/.g\"]\n", "needs credentials = \"own\""),
            ("[agents.x]\nkind = \"acp\"\ncommand = [\"g\"]\nspeaks = \"anthropic\"\nread_paths = [\"rel\"]\n", "not absolute"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
            assert!(e.starts_with("[agents."), "{e}");
        }
    }
}

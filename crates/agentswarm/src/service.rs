//! `agentswarm service install`: the systemd unit for `agentswarm serve`,
//! written with this machine's paths (packaging/agentswarm.service is the
//! same template with the default paths).

use crate::cli::{Cli, LimitArgs};
use crate::commands::load_config;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The unit. `{exe}`, `{user}`, `{data}`, `{outputs}`, `{env_file}`,
/// `{read_write}` and `{stop_timeout}` are filled in.
const TEMPLATE: &str = include_str!("../../../packaging/agentswarm.service.in");

pub struct UnitParams<'a> {
    pub exe: &'a Path,
    pub user: &'a str,
    pub data_dir: &'a Path,
    pub outputs_dir: &'a Path,
    pub env_file: &'a Path,
    pub shutdown_grace_secs: u64,
}

/// The unit text for `p`.
pub fn render(p: &UnitParams<'_>) -> String {
    let mut rw = vec![p.data_dir.display().to_string()];
    if !p.outputs_dir.starts_with(p.data_dir) {
        rw.push(p.outputs_dir.display().to_string());
    }
    // systemd waits this long for a stop before it kills the whole cgroup:
    // the grace, plus time to reap, record the state and close the store.
    let stop_timeout = p.shutdown_grace_secs + 20;
    TEMPLATE
        .replace("{exe}", &p.exe.display().to_string())
        .replace("{user}", p.user)
        .replace("{data}", &p.data_dir.display().to_string())
        .replace("{outputs}", &p.outputs_dir.display().to_string())
        .replace("{env_file}", &p.env_file.display().to_string())
        .replace("{read_write}", &rw.join(" "))
        .replace("{grace}", &p.shutdown_grace_secs.to_string())
        .replace("{stop_timeout}", &stop_timeout.to_string())
}

pub fn install(
    cli: &Cli,
    output: &Path,
    user: &str,
    data_dir: Option<&Path>,
    env_file: &Path,
) -> Result<ExitCode> {
    let config = load_config(cli, &LimitArgs::default(), None, None)?;
    let exe = std::env::current_exe().context("cannot find the agentswarm executable")?;
    let data: PathBuf = data_dir
        .map(Path::to_owned)
        .or_else(|| cli.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("/var/lib/agentswarm"));
    let outputs = cli
        .outputs_dir
        .clone()
        .unwrap_or_else(|| data.join("outputs"));
    for p in [&data, &outputs] {
        if p.starts_with("/home") || p.starts_with("/root") {
            anyhow::bail!(
                "{} is under /home or /root, which the service cannot see (ProtectHome=yes); pick a directory such as /var/lib/agentswarm with --service-data-dir",
                p.display()
            );
        }
    }
    let text = render(&UnitParams {
        exe: &exe,
        user,
        data_dir: &data,
        outputs_dir: &outputs,
        env_file,
        shutdown_grace_secs: config.shutdown_grace_secs,
    });
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(output, text).with_context(|| {
        format!(
            "cannot write {} (run as root, or pass --output FILE)",
            output.display()
        )
    })?;
    println!("wrote {}", output.display());
    println!();
    println!("To enable it (as root):");
    println!(
        "  useradd --system --home-dir {} --shell /usr/sbin/nologin {user}",
        data.display()
    );
    println!(
        "  install -d -o {user} -g {user} -m 0750 {}",
        data.display()
    );
    if let Some(dir) = env_file.parent() {
        println!("  install -d -m 0755 {}", dir.display());
    }
    println!(
        "  install -m 0640 -g {user} /dev/null {}   # then put OPENAI_BASE_URL, OPENAI_API_KEY, AGENTSWARM_MODEL and limits in it",
        env_file.display()
    );
    println!("  systemctl daemon-reload");
    println!("  systemctl enable --now agentswarm.service");
    println!("  systemctl status agentswarm.service    # STATUS= shows running/queued/gated");
    println!("  journalctl -u agentswarm.service -f");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_unit() -> String {
        render(&UnitParams {
            exe: Path::new("/usr/local/bin/agentswarm"),
            user: "agentswarm",
            data_dir: Path::new("/var/lib/agentswarm"),
            outputs_dir: Path::new("/var/lib/agentswarm/outputs"),
            env_file: Path::new("/etc/agentswarm/agentswarm.env"),
            shutdown_grace_secs: 10,
        })
    }

    #[test]
    fn shipped_unit_is_the_template_with_default_paths() {
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/agentswarm.service"),
        )
        .unwrap();
        assert_eq!(
            shipped,
            default_unit(),
            "packaging/agentswarm.service is stale: regenerate it (see CONTRIBUTING.md)"
        );
    }

    #[test]
    fn unit_has_what_the_operator_relies_on() {
        let unit = default_unit();
        for line in [
            "Type=notify",
            "KillMode=mixed",
            "TimeoutStopSec=30s",
            "Restart=on-failure",
            "RestartSec=5s",
            "OOMPolicy=continue",
            "Delegate=yes",
            "User=agentswarm",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ReadWritePaths=/var/lib/agentswarm",
            "PrivateTmp=yes",
            "ProtectHome=yes",
            "ExecStart=/usr/local/bin/agentswarm serve",
        ] {
            assert!(unit.lines().any(|l| l == line), "missing {line}");
        }
        assert!(!unit.contains('{'), "unfilled placeholder in:\n{unit}");
    }
}

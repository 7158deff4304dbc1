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

/// What `service install` was asked for.
pub struct Target<'a> {
    pub output: Option<&'a Path>,
    pub exe: Option<&'a Path>,
    pub user: &'a str,
    pub data_dir: Option<&'a Path>,
    pub env_file: &'a Path,
}

/// Where the unit goes by default.
const SYSTEM_UNIT: &str = "/etc/systemd/system/agentswarm.service";
/// Where the binary belongs when it is not installed yet.
const INSTALLED_EXE: &str = "/usr/local/bin/agentswarm";
/// Where the keys go (docs/operations.md): never the environment file.
const SECRETS_FILE: &str = "/etc/agentswarm/secrets.env";

/// Whether this host runs systemd as its init (what `sd_booted()` checks).
fn systemd_booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

pub fn install(cli: &Cli, t: Target<'_>) -> Result<ExitCode> {
    let config = load_config(cli, &LimitArgs::default(), None, None)?;
    let booted = systemd_booted();
    let output = match t.output {
        Some(o) => o.to_owned(),
        None if booted => PathBuf::from(SYSTEM_UNIT),
        None => anyhow::bail!(
            "this host's init is not systemd (no /run/systemd/system), so a unit in {SYSTEM_UNIT} \
             would never run; start `agentswarm serve` with your init system instead \
             (docs/operations.md), or write the unit for another host with --output FILE"
        ),
    };
    // The unit must start an installed binary: a build tree may go away, and
    // under ProtectHome=yes one in /home or /root cannot be run at all.
    let running = std::env::current_exe().context("cannot find the agentswarm executable")?;
    let installed = |p: &Path| p.starts_with("/usr") || p.starts_with("/opt");
    let (exe, copy_from) = match t.exe {
        Some(e) => (e.to_owned(), None),
        None if installed(&running) => (running.clone(), None),
        None => (PathBuf::from(INSTALLED_EXE), Some(running.clone())),
    };
    let data: PathBuf = t
        .data_dir
        .map(Path::to_owned)
        .or_else(|| cli.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("/var/lib/agentswarm"));
    let outputs = cli
        .outputs_dir
        .clone()
        .unwrap_or_else(|| data.join("outputs"));
    for p in [&data, &outputs, &exe] {
        if p.starts_with("/home") || p.starts_with("/root") {
            anyhow::bail!(
                "{} is under /home or /root, which the service cannot see (ProtectHome=yes); pick a \
                 directory such as /var/lib/agentswarm with --service-data-dir, and install the \
                 binary to {INSTALLED_EXE}",
                p.display()
            );
        }
    }
    let user = t.user;
    let text = render(&UnitParams {
        exe: &exe,
        user,
        data_dir: &data,
        outputs_dir: &outputs,
        env_file: t.env_file,
        shutdown_grace_secs: config.shutdown_grace_secs,
    });
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&output, text).with_context(|| {
        format!(
            "cannot write {} (run as root, or pass --output FILE)",
            output.display()
        )
    })?;
    println!("wrote {}", output.display());
    if !booted {
        println!("note: this host's init is not systemd; the unit is for a host whose init is");
    }
    println!();
    println!("To enable it (as root):");
    if let Some(from) = copy_from {
        println!(
            "  install -m 0755 {} {}   # the unit starts this path",
            from.display(),
            exe.display()
        );
    }
    println!(
        "  useradd --system --home-dir {} --shell /usr/sbin/nologin {user}",
        data.display()
    );
    println!(
        "  install -d -o {user} -g {user} -m 0750 {}",
        data.display()
    );
    let env_file = t.env_file;
    if let Some(dir) = env_file.parent() {
        println!("  install -d -m 0755 {}", dir.display());
    }
    println!(
        "  install -m 0640 -g {user} /dev/null {}   # AGENTSWARM_MODEL, OPENAI_BASE_URL, limits: no keys here",
        env_file.display()
    );
    println!(
        "  install -m 0600 -o {user} -g {user} /dev/null {SECRETS_FILE}   # the keys (OPENAI_API_KEY=…), only here"
    );
    println!(
        "  echo AGENTSWARM_SECRETS_FILE={SECRETS_FILE} >> {}",
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

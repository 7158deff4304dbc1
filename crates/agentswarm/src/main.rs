//! The `agentswarm` binary: parses flags, resolves the config and calls the
//! engine. `agentswarm worker` (internal) runs one task attempt and starts no
//! async runtime, to stay small.

mod bench;
mod bench_nodes;
mod bench_repo;
mod bench_soak;
mod cli;
mod client;
mod commands;
mod daemon;
mod doctor;
mod live;
mod logs;
mod malloc;
mod node;
mod output;
mod review;
mod service;

use clap::Parser;

fn main() -> std::process::ExitCode {
    malloc::limit_arenas();
    // A worker is started for every task, always as `<exe> worker`: it
    // skips clap, whose command tree (every subcommand's flags and help)
    // would bring in pages of the binary for nothing.
    if is_worker_invocation(std::env::args_os()) {
        return commands::worker();
    }
    let cli = cli::Cli::parse();
    if matches!(cli.command, cli::Command::Worker) {
        return commands::worker();
    }
    if let cli::Command::AgentRelay {
        socket,
        templated,
        command,
    } = cli.command
    {
        return commands::agent_relay(socket, templated, command);
    }
    // Commands that only print end quietly when their reader goes away
    // (`status | head -n1`), as Unix tools do, instead of panicking in
    // `println!`. Not the ones that run workers: a worker that died must not
    // take its supervisor with it through a pipe.
    if matches!(
        cli.command,
        cli::Command::Status { .. }
            | cli::Command::Doctor { .. }
            | cli::Command::Logs { .. }
            | cli::Command::Completions { .. }
            | cli::Command::Man
    ) {
        // SAFETY: restoring a signal's default disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // The daemon logs what it does (to the journal under systemd).
    let verbose = match cli.command {
        cli::Command::Serve { .. } => cli.verbose.max(1),
        _ => cli.verbose,
    };
    init_tracing(verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // The store's calls run in `block_in_place`, which hands the
        // worker's tasks to another thread of the blocking pool each time;
        // with tokio's 10 s keep-alive the pool held as many threads as
        // the busiest 10 s had needed (17 growing to 29 over an 800-task
        // soak of `serve`), each with its stack's touched pages. Idle for
        // a second, a thread goes.
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            if disk_full(&e) {
                eprintln!(
                    "hint: a disk is full: the one holding the data directory or OUTPUTS_DIR \
                     (`agentswarm doctor` shows both; `df -h` how full each is). Nothing that \
                     finished is lost: free some space, then `agentswarm resume PROJECT` carries \
                     on where the run stopped (`agentswarm status` lists the projects)."
                );
            }
            std::process::ExitCode::from(1)
        }
    }
}

/// Exactly `<exe> worker`, as the engine starts workers.
fn is_worker_invocation(mut args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    args.nth(1).is_some_and(|a| a == "worker") && args.next().is_none()
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTSWARM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a terminal, and never with NO_COLOR (no-color.org):
    // a log file or the journal gets plain text.
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        // Every line masks the configured keys and key-shaped strings.
        .with_writer(|| swarm_llm::redact::RedactingWriter::new(std::io::stderr()))
        .with_target(false)
        .init();
}

/// An error and its causes on one line, each said once: a cause whose text
/// an earlier part already holds is left out, and one that repeats the last
/// part and adds to it replaces it (`cannot open X: cannot open X: why`
/// reads `cannot open X: why`).
fn error_text(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if parts.iter().any(|p| p.contains(&text)) {
            continue;
        }
        match parts.last_mut() {
            Some(last) if text.contains(last.as_str()) => *last = text,
            _ => parts.push(text),
        }
    }
    parts.join(": ")
}

/// Whether `e` comes from a full disk: an I/O error saying so, or SQLite's
/// "database or disk is full".
fn disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
            || {
                let t = c.to_string();
                t.contains("database or disk is full") || t.contains("No space left on device")
            }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_bare_worker_command_skips_clap() {
        let args = |a: &[&str]| a.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert!(super::is_worker_invocation(
            args(&["/usr/bin/agentswarm", "worker"]).into_iter()
        ));
        for other in [
            &["agentswarm"][..],
            &["agentswarm", "worker", "--help"],
            &["agentswarm", "-v", "worker"],
            &["agentswarm", "node", "worker"],
        ] {
            assert!(
                !super::is_worker_invocation(args(other).into_iter()),
                "{other:?}"
            );
        }
    }

    #[test]
    fn a_full_disk_is_recognised() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert!(super::disk_full(
            &anyhow::Error::new(full).context("cannot write the archive")
        ));
        let sqlite = anyhow::anyhow!("store database error: database or disk is full");
        assert!(super::disk_full(&sqlite.context("cannot record the task")));
        assert!(!super::disk_full(&anyhow::anyhow!("connection refused")));
    }

    #[test]
    fn every_argument_of_every_command_is_described() {
        use clap::CommandFactory;
        let cmd = crate::cli::Cli::command();
        let mut undocumented = Vec::new();
        let mut stack = vec![(cmd.get_name().to_owned(), cmd.clone())];
        while let Some((path, c)) = stack.pop() {
            for a in c.get_arguments() {
                let builtin = matches!(a.get_id().as_str(), "help" | "version");
                if !builtin && a.get_help().is_none() && a.get_long_help().is_none() {
                    undocumented.push(format!("{path} {}", a.get_id()));
                }
            }
            for sub in c.get_subcommands() {
                if !sub.is_hide_set() {
                    stack.push((format!("{path} {}", sub.get_name()), sub.clone()));
                }
            }
        }
        assert!(undocumented.is_empty(), "no help text: {undocumented:?}");
    }

    #[test]
    fn an_error_says_each_cause_once() {
        let io = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "No such file or directory (os error 2)",
        );
        let e = anyhow::Error::new(io)
            .context("cannot read /x: No such file or directory (os error 2)");
        assert_eq!(
            super::error_text(&e),
            "cannot read /x: No such file or directory (os error 2)"
        );
        let inner = anyhow::anyhow!("cannot open the store at /d: locked");
        let e = inner.context("cannot open the store at /d");
        assert_eq!(super::error_text(&e), "cannot open the store at /d: locked");
        let e = anyhow::anyhow!("disk full").context("cannot write the plan");
        assert_eq!(super::error_text(&e), "cannot write the plan: disk full");
    }
}

//! The `sloguard` command: `run` a policy, `check` policy files, or start the `demo`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sloguard::{demo, server, Policy};

/// mimalloc rather than glibc malloc: see the note on the dependency in Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sloguard",
    version,
    about = "Reverse-proxy sidecar with a latency SLO guard"
)]
struct Cli {
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a policy until SIGTERM (graceful) or SIGINT.
    Run {
        #[arg(long, short, default_value = "config/sloguard.toml")]
        config: PathBuf,
    },
    /// Validate policy files; exit 1 naming file, line, column and key of the first error in each.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Start the analytics backend (worker 3 blocking its event loop) and sloguard in front.
    Demo {
        #[arg(long, short, default_value = "config/sloguard.toml")]
        config: PathBuf,
        /// The analytics-backend binary; default: the one built beside this binary.
        #[arg(long)]
        backend: Option<PathBuf>,
    },
}

fn init_logs(format: LogFormat) {
    sloguard::logging::init(match format {
        LogFormat::Text => sloguard::logging::Format::Text,
        LogFormat::Json => sloguard::logging::Format::Json,
    });
}

/// Raises the open-file limit to the hard limit and says what it is (the proxy's default
/// connection cap is derived from it).
fn raise_fd_limit() {
    match sloguard::resources::raise_fd_limit() {
        Ok(l) => tracing::info!(
            was = l.was,
            now = l.now,
            hard = l.hard,
            default_max_connections = sloguard::resources::default_max_connections(Some(l.now)),
            "open-file limit"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// Ends the process (status 101) on a panic in any thread. Pingora runs each service in
/// its own threads, and a panic there (its listener setup, say) ended only that service:
/// the process stayed up with `/healthz` answering 200 and no proxy. A panic is a bug, and
/// the state it leaves (a lease never released, a lock poisoned) cannot be trusted, so
/// sloguard stops and lets its supervisor (the kubelet) start it afresh.
#[allow(clippy::disallowed_methods)] // process::exit: ending the process is the point.
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let thread = std::thread::current();
        eprintln!(
            "sloguard: panic in thread `{}`; exiting",
            thread.name().unwrap_or("unnamed")
        );
        std::process::exit(101);
    }));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Check { files } => {
            let mut failed = false;
            for file in files {
                match Policy::load(&file) {
                    Ok(p) => println!(
                        "{}: ok (version {}, workers: {}, routes: {})",
                        file.display(),
                        p.version,
                        p.upstream.workers.len(),
                        p.routes.iter().count()
                    ),
                    Err(e) => {
                        eprintln!("{e}");
                        failed = true;
                    }
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Run { config } => match Policy::load(&config) {
            Ok(policy) => {
                exit_on_panic();
                raise_fd_limit();
                sloguard::shutdown::arm_watchdog(policy.listen.drain_timeout);
                // Read the Redis credentials now: a Secret that is not mounted, or an unset
                // variable, fails the start with its key rather than limiting in-process.
                if let Err(e) = policy.ratelimit.redis_auth.resolve() {
                    eprintln!("{}: {e}", config.display());
                    return ExitCode::FAILURE;
                }
                tracing::info!(file = %config.display(), version = %policy.version, proxy = %policy.listen.proxy, admin = %policy.listen.admin, "serving");
                match server::run(policy) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("{e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Demo { config, backend } => {
            exit_on_panic();
            raise_fd_limit();
            demo_exit(demo::run(&config, backend))
        }
    }
}

/// The exit status of `sloguard demo`.
fn demo_exit(result: Result<(), demo::DemoError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

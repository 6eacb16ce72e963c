//! `analytics-backend`: starts the workers, prints one `worker N listening on
//! ADDR` line each on stdout, and runs until SIGINT or SIGTERM.

use std::net::IpAddr;

use analytics_backend::fault::parse_worker_fault;
use analytics_backend::{Backend, BackendConfig, FaultSpec};
use anyhow::Context;
use clap::Parser;

/// An analytics API that behaves like the incident's service.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Number of workers (each its own event loop and port).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Port of worker 1; worker N listens on base-port + N - 1 (0: ephemeral ports).
    #[arg(long, default_value_t = 8001)]
    base_port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// A fault from the start, as WORKER:SPEC, e.g. `3:block=250ms,every=4`.
    /// Keys: block, cpu, stall, query_block, trickle (a delay per byte of the
    /// answer) take durations; status an HTTP status; reset=true resets the
    /// connection after handling instead of answering; close_keepalive=N
    /// closes each connection after its Nth answer (no `Connection: close`;
    /// with close_late=true, only when the next request arrives, unread);
    /// every=N hits 1 request in N. See `FaultSpec` for the details. Repeatable.
    #[arg(long = "fault", value_name = "WORKER:SPEC", value_parser = parse_worker_fault)]
    faults: Vec<(usize, FaultSpec)>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(tracing::Level::INFO)
        .init();
    let args = Args::parse();

    // Signal handlers go in before the workers start, so an early SIGTERM
    // still means a clean exit rather than the default kill.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the signal runtime")?;
    let signals = {
        let _in_runtime = runtime.enter();
        Signals::new()?
    };

    let backend = Backend::start(BackendConfig {
        workers: args.workers,
        bind: args.bind,
        base_port: args.base_port,
        faults: args.faults,
    })
    .context("starting the workers")?;
    // Stable format: scripts and benchmarks read these lines.
    for (i, addr) in backend.addrs().iter().enumerate() {
        println!("worker {} listening on {addr}", i + 1);
    }

    let signal = runtime.block_on(signals.recv());
    tracing::info!(signal, "shutting down");
    backend.shutdown();
    Ok(())
}

#[cfg(unix)]
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    /// Resolves on SIGINT or SIGTERM, naming which.
    async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> anyhow::Result<Signals> {
        Ok(Signals)
    }

    async fn recv(self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "ctrl-c"
    }
}

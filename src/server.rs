//! Builds the Pingora server from a policy: the proxy service and the admin service; and
//! checks, before handing them to Pingora, that both listener addresses can be bound.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::Opt;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::Policy;
use crate::monitor::Monitor;
use crate::proxy::{ConnGuard, SloGuard};
use crate::state::State;

/// A server ready to run, and the state it serves from.
pub struct Built {
    pub server: Server,
    pub state: Arc<State>,
}

/// Builds the server for `policy` without binding yet (Pingora binds in `run`).
pub fn build_server(policy: Policy) -> Built {
    let mut conf = ServerConf {
        threads: policy.listen.threads,
        // Retries only go to workers not yet tried, so one try per worker is the bound.
        max_retries: policy.upstream.workers.len(),
        upstream_keepalive_pool_size: policy.upstream.keepalive_pool_size,
        // On SIGTERM Pingora stops accepting, then waits this long before tearing its
        // runtimes down (which drops whatever is still running). The monitor exits the
        // process as soon as nothing is in flight, so this is the drain timeout's upper bound.
        grace_period_seconds: Some(policy.listen.drain_timeout.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        work_stealing: false,
        ..ServerConf::default()
    };
    // No pid file or upgrade socket in /tmp shared by parallel test processes.
    conf.pid_file = String::new();
    let mut server = Server::new_with_opt_and_conf(None::<Opt>, conf);
    server.bootstrap();

    let proxy_addr = policy.listen.proxy.to_string();
    let admin_addr = policy.listen.admin.to_string();
    let state = Arc::new(State::new(policy));

    // Pingora's HTTP proxy, run per connection by our connection guards (the head deadline
    // and the per-client cap) rather than by `http_proxy_service` directly.
    let http = pingora::proxy::http_proxy(&server.configuration, SloGuard::new(state.clone()));
    let mut proxy = Service::new(
        "sloguard proxy".to_string(),
        ConnGuard::new(http, state.clone()),
    );
    // No L4 buffers on a client connection: they are allocated for the connection's whole
    // life, idle included. Pingora reads each request head into a buffer of its own anyway
    // (the default 64 KiB read buffer was allocated and zeroed for every connection: most
    // of a connection's memory, and most of the CPU of a burst of new connections), and
    // `proxy::head_io` gathers small writes into a buffer that lives only until the flush.
    proxy.add_listener(ListenerConfig::tcp(&proxy_addr).l4_buffer(L4BufferSettings::unbuffered()));

    let mut admin = Service::new("sloguard admin".to_string(), AdminApp::new(state.clone()));
    admin.add_tcp(&admin_addr);
    admin.threads = Some(1);

    let monitor = pingora::services::background::background_service(
        "sloguard guard",
        Monitor::new(state.clone()),
    );

    server.add_service(monitor);
    server.add_service(proxy);
    server.add_service(admin);
    Built { server, state }
}

/// sloguard could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address cannot be bound: in use past `listen.bind_retry_ms`, not an
    /// address of this host, or a privileged port.
    #[error("{listener} listener {addr}: {reason}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        reason: String,
    },
}

/// Time between two tries of an address in use.
const BIND_RETRY_STEP: Duration = Duration::from_millis(100);

/// Binds `addr` once to see that it can be (then lets it go for Pingora to bind), retrying
/// while it is in use for up to `retry`. Pingora's own bind retries an address in use for
/// 30 s, then panics in its service thread while the process and its other listener stay
/// up: a pod would be Live and Ready with nothing on its proxy port. So we find out first.
/// The gap between this probe and Pingora's bind is a few microseconds; a port taken in it
/// is the panic case, and `main` ends the process on any panic.
pub fn check_bind(
    listener: &'static str,
    addr: SocketAddr,
    retry: Duration,
) -> Result<(), StartError> {
    let started = Instant::now();
    let mut warned = false;
    loop {
        let err = match TcpListener::bind(addr) {
            Ok(_probe) => return Ok(()),
            Err(e) => e,
        };
        let in_use = err.kind() == std::io::ErrorKind::AddrInUse;
        if !in_use || started.elapsed() + BIND_RETRY_STEP > retry {
            let reason = if in_use {
                "address in use".to_string()
            } else {
                err.to_string().to_lowercase()
            };
            return Err(StartError::Bind {
                listener,
                addr,
                reason,
            });
        }
        if !warned {
            tracing::warn!(%addr, retry_ms = retry.as_millis() as u64, "{listener} listener: address in use; retrying");
            warned = true;
        }
        std::thread::sleep(BIND_RETRY_STEP);
    }
}

/// Runs until SIGTERM (graceful: in-flight requests finish within the drain timeout) or
/// SIGINT (fast). Fails at once, before serving anything, when a listener cannot be bound.
pub fn run(policy: Policy) -> Result<(), StartError> {
    let l = &policy.listen;
    check_bind("proxy", l.proxy, l.bind_retry)?;
    check_bind("admin", l.admin, l.bind_retry)?;
    let built = build_server(policy);
    built.server.run(RunArgs::default());
    Ok(())
}

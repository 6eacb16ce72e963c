//! Builds the Pingora server from a policy: the proxy service and the admin service, each
//! our own accept loop (`listener`) on a listener bound before Pingora starts.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use pingora::prelude::Opt;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};

use crate::admin::AdminApp;
use crate::config::Policy;
use crate::listener::{bind_listener, AcceptLoop};
use crate::monitor::Monitor;
use crate::proxy::{ConnectionApp, SloGuard};
use crate::shutdown::StopOnSignal;
use crate::state::State;

/// The proxy and admin listeners, bound.
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: TcpListener,
}

/// Builds the server for `policy` on listeners already bound, and the state it serves from
/// (which the signal watch drains).
pub fn build_server(policy: Policy, listeners: Listeners) -> (Server, Arc<State>) {
    let mut conf = ServerConf {
        threads: policy.listen.threads,
        // Retries only go to workers not yet tried, so one try per worker is the bound.
        max_retries: policy.upstream.workers.len(),
        upstream_keepalive_pool_size: policy.upstream.keepalive_pool_size,
        // The drain happens before Pingora hears of the stop (`shutdown::StopOnSignal`
        // returns once nothing is in flight), so Pingora's own fixed grace period, a sleep
        // whatever is in flight, has nothing left to wait for.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        work_stealing: false,
        ..ServerConf::default()
    };
    // No pid file or upgrade socket in /tmp shared by parallel test processes.
    conf.pid_file = String::new();
    let mut server = Server::new_with_opt_and_conf(None::<Opt>, conf);
    server.bootstrap();

    let state = Arc::new(State::new(policy));

    // Pingora's HTTP proxy, run per connection by our connection app (the head deadline
    // and the per-client cap) rather than by `http_proxy_service` directly. A client
    // connection has no L4 buffers (`From<TcpStream>` builds it unbuffered): they would be
    // allocated for the connection's whole life, idle included. Pingora reads each request
    // head into a buffer of its own anyway (the default 64 KiB read buffer was allocated and
    // zeroed for every connection: most of a connection's memory, and most of the CPU of a
    // burst of new connections), and `proxy::head_io` gathers small writes into a buffer
    // that lives only until the flush.
    let http = pingora::proxy::http_proxy(&server.configuration, SloGuard::new(state.clone()));
    let proxy = AcceptLoop::new(
        "sloguard proxy",
        listeners.proxy,
        ConnectionApp::new(http, state.clone()),
    )
    .stopping_on(state.lifecycle.stop_watch());
    let admin = AcceptLoop::new(
        "sloguard admin",
        listeners.admin,
        AdminApp::new(state.clone()),
    )
    .with_threads(1);

    let monitor = pingora::services::background::background_service(
        "sloguard guard",
        Monitor::new(state.clone()),
    );

    server.add_service(monitor);
    server.add_service(proxy);
    server.add_service(admin);
    (server, state)
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

/// Binds one listener, naming it in the error.
fn bind(
    listener: &'static str,
    addr: SocketAddr,
    policy: &Policy,
) -> Result<TcpListener, StartError> {
    bind_listener(listener, addr, policy.listen.bind_retry).map_err(|e| StartError::Bind {
        listener,
        addr,
        reason: e.reason,
    })
}

/// Runs until SIGTERM (graceful: in-flight requests finish within the drain timeout) or
/// SIGINT (fast). Fails at once, before serving anything, when a listener cannot be bound.
pub fn run(policy: Policy) -> Result<(), StartError> {
    let listeners = Listeners {
        proxy: bind("proxy", policy.listen.proxy, &policy)?,
        admin: bind("admin", policy.listen.admin, &policy)?,
    };
    let (server, state) = build_server(policy, listeners);
    server.run(RunArgs {
        shutdown_signal: Box::new(StopOnSignal::new(state)),
    });
    Ok(())
}

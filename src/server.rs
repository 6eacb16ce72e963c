//! Builds the Pingora server from a policy: the proxy service and the admin service.

use std::sync::Arc;

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
    // No read buffer in front of a client connection: Pingora reads each request head into
    // a buffer of its own anyway, and the default 64 KiB one was allocated (and zeroed)
    // for every connection, idle ones included: most of a connection's memory, and most of
    // the CPU of a burst of new connections.
    proxy.add_listener(
        ListenerConfig::tcp(&proxy_addr).l4_buffer(L4BufferSettings::default().read(0)),
    );

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

/// Runs until SIGTERM (graceful: in-flight requests finish within the drain timeout) or
/// SIGINT (fast).
pub fn run(policy: Policy) {
    let built = build_server(policy);
    built.server.run(RunArgs::default());
}

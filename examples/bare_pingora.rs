//! The floor under sloguard's throughput: a Pingora proxy with none of sloguard's logic
//! (round-robin over the workers, keep-alive upstream connections, one thread, the same
//! server settings as sloguard), so the benchmark can tell what Pingora itself costs per
//! request from what sloguard adds.
//!
//! `cargo run --release --example bare_pingora -- LISTEN WORKER...`

// Not the proxy: a benchmark harness that reads the clock as it needs to.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use pingora::prelude::{HttpPeer, Opt};
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct RoundRobin {
    workers: Vec<SocketAddr>,
    next: AtomicUsize,
}

#[async_trait]
impl ProxyHttp for RoundRobin {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        Ok(Box::new(HttpPeer::new(
            self.workers[i],
            false,
            String::new(),
        )))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bare_pingora LISTEN WORKER...";
    let listen = args.next().expect(usage);
    let workers: Vec<SocketAddr> = args.map(|a| a.parse().expect(usage)).collect();
    assert!(!workers.is_empty(), "{usage}");
    let mut conf = ServerConf {
        threads: 1,
        work_stealing: false,
        // As every proxy in the bench (`sloguard-bench`'s `configs::UPSTREAM_POOL`).
        upstream_keepalive_pool_size: 1024,
        ..ServerConf::default()
    };
    conf.pid_file = String::new();
    let mut server = Server::new_with_opt_and_conf(None::<Opt>, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        RoundRobin {
            workers,
            next: AtomicUsize::new(0),
        },
    );
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run(RunArgs::default());
}

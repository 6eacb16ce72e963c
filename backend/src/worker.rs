//! One worker: an OS thread running a single-threaded tokio runtime (its own
//! event loop, like one uvicorn process), its own listener, its lag timer and
//! its fault switch.
//!
//! Stopping a worker (kill or shutdown) flips its [`StopSwitch`]: a handler
//! blocked by a fault returns at once, the accept loop ends, and dropping the
//! runtime drops every connection task, which closes the listener and all
//! its sockets. The port is closed when [`Worker::stop`] returns.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;

use crate::conn::{ConnFaults, FaultIo};
use crate::error::BackendError;
use crate::fault::{FaultActions, FaultSpec, FaultState, RequestKind};
use crate::lag::{self, LagWindow};
use crate::stats::Stats;
use crate::stop::StopSwitch;
use crate::store::Store;

/// State of one worker that its handlers, its lag task and the
/// [`crate::Backend`] handle all see.
#[derive(Debug)]
pub(crate) struct WorkerShared {
    /// 1-based worker id.
    pub(crate) id: usize,
    pub(crate) addr: SocketAddr,
    pub(crate) store: Arc<Store>,
    pub(crate) stats: Stats,
    pub(crate) stop: StopSwitch,
    lag: Arc<Mutex<LagWindow>>,
    fault: Mutex<FaultState>,
    /// Where a runtime-set stall is spawned; `None` in handler unit tests.
    runtime: Option<Handle>,
}

impl WorkerShared {
    pub(crate) fn new(
        id: usize,
        addr: SocketAddr,
        store: Arc<Store>,
        fault: FaultSpec,
        runtime: Option<Handle>,
    ) -> Self {
        WorkerShared {
            id,
            addr,
            store,
            stats: Stats::default(),
            stop: StopSwitch::default(),
            lag: Arc::new(Mutex::new(LagWindow::new(Instant::now()))),
            fault: Mutex::new(FaultState::at_start(fault)),
            runtime,
        }
    }

    /// Worst loop lag in the last second (or the overdue tick, if larger).
    pub(crate) fn lag_now(&self) -> Duration {
        lag::lock(&self.lag).worst(Instant::now())
    }

    /// Worst loop lag since start.
    pub(crate) fn lag_max(&self) -> Duration {
        lag::lock(&self.lag).max_ever()
    }

    /// Decides this request's faults (the lock is released before any block).
    pub(crate) fn fault_actions(&self, kind: RequestKind) -> FaultActions {
        self.fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .on_request(kind)
    }

    /// Replaces the fault. A stall in it starts now: it is armed, and a task
    /// spawned on this worker's loop starts it unless the worker's next
    /// request does first (a request arriving as the stall is set can be
    /// polled before the task). When asked through `POST /admin/fault` the
    /// admin answer is written first and the stall begins right after.
    pub(crate) fn set_fault(self: &Arc<Self>, spec: FaultSpec) {
        tracing::info!(worker = self.id, ?spec, "fault set");
        let armed = self
            .fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(spec);
        if let (true, Some(rt)) = (armed, &self.runtime) {
            if self.stop.is_stopped() {
                return;
            }
            let w = Arc::clone(self);
            rt.spawn(async move {
                let stall = w
                    .fault
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take_stall();
                if let Some(stall) = stall {
                    tracing::info!(worker = w.id, ?stall, "stall fault: blocking the loop");
                    w.stop.block_for(stall);
                }
            });
        }
    }
}

/// A running worker, as held by [`crate::Backend`].
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) shared: Arc<WorkerShared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Worker {
    /// Binds a worker's listener (synchronously: the port accepts
    /// connections from here on, queued until the loop runs).
    pub(crate) fn bind(id: usize, addr: SocketAddr) -> Result<std::net::TcpListener, BackendError> {
        let bind_err = |source| BackendError::Bind {
            worker: id,
            addr,
            source,
        };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(listener)
    }

    /// Starts the worker's thread and loop on an already bound listener.
    pub(crate) fn spawn(
        id: usize,
        listener: std::net::TcpListener,
        store: Arc<Store>,
        fault: FaultSpec,
    ) -> Result<Worker, BackendError> {
        let io_err = |source| BackendError::Start { worker: id, source };
        let addr = listener.local_addr().map_err(io_err)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err)?;
        let listener = {
            let _in_runtime = runtime.enter();
            TcpListener::from_std(listener).map_err(io_err)?
        };
        let shared = Arc::new(WorkerShared::new(
            id,
            addr,
            store,
            fault,
            Some(runtime.handle().clone()),
        ));
        let w = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("analytics-worker-{id}"))
            .spawn(move || {
                runtime.block_on(accept_loop(listener, w));
                // Dropping the runtime drops every connection task: sockets close.
                drop(runtime);
            })
            .map_err(io_err)?;
        Ok(Worker {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops the worker and waits until its port and connections are closed.
    /// Idempotent.
    pub(crate) fn stop(&self) {
        self.shared.stop.stop();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!(worker = self.shared.id, "worker thread panicked");
            }
            tracing::info!(worker = self.shared.id, "worker stopped");
        }
    }
}

async fn accept_loop(listener: TcpListener, w: Arc<WorkerShared>) {
    tokio::spawn(lag::run(Arc::clone(&w.lag)));
    loop {
        tokio::select! {
            biased;
            _ = w.stop.stopped() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, Arc::clone(&w)));
                }
                Err(e) => {
                    // e.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(worker = w.id, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

/// Serves HTTP/1.1 with keep-alive on one connection. Idle keep-alive
/// connections stay open until the client closes them (no header read
/// timeout): the proxy in front owns its pool. The connection faults
/// (`trickle`, `reset`, `close_keepalive`) act through its [`FaultIo`]; when
/// one of them ends the connection, dropping it here closes the socket (with
/// an RST after a reset).
async fn serve_connection(stream: TcpStream, w: Arc<WorkerShared>) {
    let _ = stream.set_nodelay(true);
    let faults = Arc::new(ConnFaults::default());
    let io = FaultIo::new(stream, Arc::clone(&faults));
    let conn = Arc::clone(&faults);
    let service = service_fn(move |req| crate::api::serve(Arc::clone(&w), Arc::clone(&conn), req));
    let connection = http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(io), service);
    tokio::select! {
        biased;
        _ = faults.ended() => {
            tracing::debug!(reset = faults.is_reset(), "connection ended by a fault");
        }
        result = connection => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
    }
}

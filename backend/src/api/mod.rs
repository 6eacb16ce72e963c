//! The HTTP API of one worker: route, read the body, suffer the configured
//! faults, run the handler, and stamp every answer with the worker's id and
//! loop lag. The connection faults (trickle, reset, close after the answer)
//! are handed to the connection through its [`ConnFaults`].
//!
//! Handlers are synchronous on purpose: this is the loop of a single-threaded
//! worker, and the faults (a blocking sleep, a CPU spin) must hold that loop
//! exactly like the incident's sync ORM write did.

pub mod echo;
mod error;
mod route;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use serde_json::json;

pub use error::{json_response, ApiError};
pub use route::Route;

use crate::conn::ConnFaults;
use crate::event::{self, FieldError};
use crate::fault::{FaultActions, FaultBody, RequestKind};
use crate::query::parse_query;
use crate::worker::WorkerShared;

/// Largest request body read (16 MiB); larger ones get 413. The real caps
/// belong to the proxy in front; this only keeps a worker's memory bounded.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// Header carrying the worst loop lag of the last second, in whole ms.
pub const LAG_HEADER: &str = "x-loop-lag-ms";
/// Header carrying the 1-based worker id.
pub const WORKER_HEADER: &str = "x-worker-id";

/// Serves one request on worker `w`, arriving on the connection `conn`.
/// Never fails: every error becomes a JSON response, so hyper only sees
/// `Ok`. Under a `reset` fault it never resolves: the connection is reset
/// and drops it.
pub(crate) async fn serve<B>(
    w: Arc<WorkerShared>,
    conn: Arc<ConnFaults>,
    req: Request<B>,
) -> Result<Response<Full<Bytes>>, Infallible>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _in_flight = w.stats.enter();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let route = Route::from_path(path);
    let allowed = route.method();
    let method_ok = allowed.as_ref() == Some(&parts.method);

    // An armed stall fires on the next request, whatever it is; the other
    // faults only on requests their handler will serve.
    let kind = if method_ok {
        route.fault_kind()
    } else {
        RequestKind::Other
    };
    let actions = w.fault_actions(kind);
    if let Some(stall) = actions.stall {
        tracing::info!(worker = w.id, ?stall, "stall fault: blocking the loop");
        w.stop.block_for(stall);
        if w.stop.is_stopped() {
            // Killed or shut down during the stall: the request dies with the worker,
            // as one caught in a stall that started on its own would.
            conn.reset();
            return std::future::pending().await;
        }
    }

    let result = match allowed {
        None if path.starts_with(echo::ECHO_PREFIX) => read_body(body).await.map(|body| {
            let doc = echo::describe(&parts, &body);
            json_response(StatusCode::OK, &doc)
        }),
        None => Err(ApiError::NotFound { path: path.into() }),
        Some(allow) if !method_ok => Err(ApiError::MethodNotAllowed {
            method: parts.method.clone(),
            path: path.into(),
            allow,
        }),
        Some(method) => {
            let body = if method == Method::POST {
                read_body(body).await
            } else {
                Ok(Bytes::new())
            };
            body.and_then(|body| handle(&w, route, parts.uri.query(), &body, actions))
        }
    };
    if actions.reset {
        // The handler ran (an event is stored); the answer is never sent.
        tracing::debug!(worker = w.id, "reset fault: resetting the connection");
        w.stats.fault("reset");
        conn.reset();
        return std::future::pending().await;
    }
    let mut response = result.unwrap_or_else(ApiError::into_response);
    stamp(&w, &mut response);
    w.stats.answered(route, response.status().as_u16());
    conn.set_trickle(actions.trickle);
    if actions.trickle.is_some() {
        w.stats.fault("trickle");
    }
    if conn.answering(actions.close_keepalive, actions.close_late) {
        w.stats.fault("close_keepalive");
    }
    Ok(response)
}

async fn read_body<B>(body: B) -> Result<Bytes, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::BodyTooLarge { limit: MAX_BODY })
        }
        Err(e) => Err(ApiError::BodyRead(e.to_string())),
    }
}

/// Adds the headers every response carries, with the lag measured now,
/// after the handler ran (so a blocked handler reports its own block).
fn stamp(w: &WorkerShared, response: &mut Response<Full<Bytes>>) {
    let headers = response.headers_mut();
    headers.insert(
        LAG_HEADER,
        HeaderValue::from(w.lag_now().as_millis() as u64),
    );
    headers.insert(WORKER_HEADER, HeaderValue::from(w.id as u64));
}

/// Runs a route's handler, after its block/cpu/status faults.
fn handle(
    w: &Arc<WorkerShared>,
    route: Route,
    query: Option<&str>,
    body: &[u8],
    actions: FaultActions,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if let Some(d) = actions.block {
        w.stop.block_for(d);
    }
    if let Some(d) = actions.cpu {
        w.stop.spin_for(d);
    }
    if let Some(status) = actions.status {
        return Err(ApiError::Injected { status });
    }
    match route {
        Route::Events => {
            let e = event::parse_one(body)?;
            w.store.ingest(&e);
            w.stats.accepted(1);
            Ok(json_response(
                StatusCode::ACCEPTED,
                &json!({ "accepted": 1 }),
            ))
        }
        Route::EventsBatch => {
            let events = event::parse_batch(body)?;
            w.store.ingest_batch(&events);
            w.stats.accepted(events.len());
            let accepted = events.len();
            Ok(json_response(
                StatusCode::ACCEPTED,
                &json!({ "accepted": accepted }),
            ))
        }
        Route::MetricsQuery => {
            let query = parse_query(query.unwrap_or(""))?;
            Ok(json_response(StatusCode::OK, &w.store.query(&query)))
        }
        Route::Healthz => Ok(json_response(
            StatusCode::OK,
            &json!({
                "worker": w.id,
                "port": w.addr.port(),
                "status": "ok",
                "loop_lag_ms": w.lag_now().as_millis() as u64,
                "in_flight": w.stats.in_flight(),
            }),
        )),
        Route::Prometheus => {
            let text = w.stats.render(w.id, w.lag_now(), w.lag_max());
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            Ok(response)
        }
        Route::AdminFault => {
            let body = if body.iter().all(u8::is_ascii_whitespace) {
                b"{}".as_slice()
            } else {
                body
            };
            let parsed: FaultBody = serde_json::from_slice(body).map_err(|e| FieldError {
                field: None,
                message: format!("invalid fault JSON: {e}"),
            })?;
            let spec = parsed.into_spec().map_err(|field| FieldError {
                field: Some(field.into()),
                message: match field {
                    "status" => "`status` must be an HTTP status (100-599)",
                    "close_keepalive" => "`close_keepalive` must be at least 1",
                    "close_late" => "`close_late` only applies with `close_keepalive`",
                    _ => "invalid fault field",
                }
                .to_string(),
            })?;
            let shown = FaultBody::from(&spec);
            w.set_fault(spec);
            Ok(json_response(StatusCode::OK, &shown))
        }
        // `serve` answers unknown paths before calling a handler.
        Route::NotFound => Err(ApiError::NotFound { path: "?".into() }),
    }
}

#[cfg(test)]
mod tests;

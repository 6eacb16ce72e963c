//! The shared limiter: GCRA in Redis, by a Lua script, with time from Redis itself (`TIME`)
//! so replicas with skewed clocks agree. Keys carry a prefix and expire when replenished.
//!
//! Concurrent requests share one script call ([`super::batch`]): a request that finds no
//! call under way is sent at once; those arriving while one is under way leave together in
//! the next. The script decides a batch's requests one after the other, in arrival order,
//! exactly as separate calls would, so batching changes what Redis does per request (one
//! `TIME` and one script run per batch instead of per request), not a single verdict.
//!
//! For each request the script checks every rule first and only then records the request,
//! and only if no enforced rule denied it: a request refused by one rule does not use up the
//! others. On a Redis Cluster the rules' keys live on different slots, so each rule is
//! decided by its own call (sent together, not batched): there, a request refused by one
//! rule still counts against the others.
//!
//! The clients themselves (credentials, TLS) are built in `client`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio::sync::{oneshot, OnceCell};

use super::batch::CallQueue;
use super::gcra::{Gcra, GcraDecision};

/// ARGV: the number of requests, then per request its number of rules, then per rule
/// interval_us, tau_us, enforce (1/0). KEYS: every rule's key, request after request.
/// Returns per rule, in the same order: allowed (1/0), remaining, retry_after_us, reset_us.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out, a, k = {}, 2, 0
for _ = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a])
  a = a + 1
  local tats, blocked, base = {}, false, #out
  for i = 1, n do
    local interval = tonumber(ARGV[a])
    local tau = tonumber(ARGV[a + 1])
    local enforce = ARGV[a + 2] == '1'
    a = a + 3
    local tat = tonumber(redis.call('GET', KEYS[k + i]) or now) or now
    if tat < now then tat = now end
    local new_tat = tat + interval
    local allow_at = new_tat - (tau + interval)
    local o = base + 4 * i
    if now < allow_at then
      out[o - 3], out[o - 2], out[o - 1], out[o] = 0, 0, allow_at - now, tat - now
      tats[i] = false
      if enforce then blocked = true end
    else
      out[o - 3], out[o - 2], out[o - 1], out[o] =
        1, math.floor((now - allow_at) / interval), 0, new_tat - now
      tats[i] = new_tat
    end
  end
  if not blocked then
    for i = 1, n do
      if tats[i] then
        redis.call('SET', KEYS[k + i], string.format('%.0f', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1)
      end
    end
  end
  k = k + n
end
return out
"#;

/// Why a Redis call did not give a verdict.
#[derive(Debug, thiserror::Error)]
pub enum RedisCallError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis returned {0} values for {1} rules")]
    Shape(usize, usize),
    /// The call this request was batched into failed, and another request of that call
    /// reports it (see [`RedisCallError::is_shared`]).
    #[error("{0}")]
    Shared(Arc<RedisCallError>),
    /// The call this request was batched into failed; this request reports it.
    #[error("{0}")]
    Call(Arc<RedisCallError>),
    #[error("the call to redis was abandoned")]
    Abandoned,
}

impl RedisCallError {
    /// The failure of a call that carried several requests is given to each, but only one
    /// of them reports it: the breaker counts failed calls, so a slow moment of Redis that
    /// failed one call of twenty requests is one failure, not twenty.
    pub fn is_shared(&self) -> bool {
        matches!(self, RedisCallError::Shared(_))
    }
}

/// Where the limiter's state lives.
enum Conn {
    /// One Redis (or a primary behind a proxy): all of a request's rules in one script call,
    /// shared with the requests batched with it.
    Single(Arc<Single>),
    /// A Redis Cluster: keys live on different slots, so each rule is its own script call,
    /// all sent at once (one round trip in time). A rule's key is one hash tag, so its state
    /// stays on one slot. Connected on first use; the client follows slot moves itself.
    Cluster(Box<ClusterClient>, Arc<OnceCell<ClusterConnection>>),
}

/// A handle on the shared limiter (the connection is multiplexed).
pub struct RedisStore {
    conn: Conn,
    script: redis::Script,
    timeout: Duration,
}

/// One Redis: its connection and the requests waiting for the next call to it.
struct Single {
    conn: ConnectionManager,
    script: redis::Script,
    timeout: Duration,
    /// `ratelimit.batch_calls`: off, each request is its own call (still sent at once on
    /// the multiplexed connection, as many in flight as there are requests).
    batch: bool,
    queue: Mutex<CallQueue<Waiter>>,
}

/// A request waiting for its verdicts.
struct Waiter {
    keys: Vec<String>,
    rules: Vec<(Gcra, bool)>,
    reply: oneshot::Sender<Result<Vec<GcraDecision>, RedisCallError>>,
}

/// Adds one request's rules to a script call.
fn add_request(
    invocation: &mut redis::ScriptInvocation<'_>,
    keys: &[String],
    rules: &[(Gcra, bool)],
) {
    invocation.arg(keys.len());
    for (key, (gcra, enforce)) in keys.iter().zip(rules) {
        invocation.key(key);
        invocation
            .arg(gcra.interval_us)
            .arg(gcra.tau_us)
            .arg(u8::from(*enforce));
    }
}

/// The script's answer for `rules` rules, four values each.
fn verdicts(values: &[i64], rules: usize) -> Result<Vec<GcraDecision>, RedisCallError> {
    if values.len() != rules * 4 {
        return Err(RedisCallError::Shape(values.len(), rules));
    }
    Ok(values
        .chunks(4)
        .map(|v| GcraDecision {
            allowed: v[0] == 1,
            remaining: v[1].max(0) as u64,
            retry_after_us: v[2].max(0) as u64,
            reset_us: v[3].max(0) as u64,
            tat_us: 0,
        })
        .collect())
}

impl Single {
    /// Sends the waiting requests, a batch per call, until none is left.
    async fn send_batches(self: Arc<Self>) {
        // Should a call panic, the next request starts a new sender (the waiters of the
        // lost batch time out and fall back).
        struct Restart<'a>(&'a Mutex<CallQueue<Waiter>>);
        impl Drop for Restart<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .abandon();
                }
            }
        }
        let _restart = Restart(&self.queue);
        loop {
            let next = self
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .next_batch();
            let Some(batch) = next else {
                return;
            };
            match self.call(&batch).await {
                Ok(decisions) => {
                    let mut decisions = decisions.into_iter();
                    for w in batch {
                        let mine = decisions.by_ref().take(w.keys.len()).collect();
                        let _ = w.reply.send(Ok(mine));
                    }
                }
                Err(e) => {
                    let e = Arc::new(e);
                    let mut reporter = true;
                    for w in batch {
                        let shared = if std::mem::take(&mut reporter) {
                            RedisCallError::Call(e.clone())
                        } else {
                            RedisCallError::Shared(e.clone())
                        };
                        // The reporter may have gone (its client left): then nobody
                        // reports this call, and the breaker misses one failure.
                        let _ = w.reply.send(Err(shared));
                    }
                }
            }
        }
    }

    /// One script call for `batch`, one round trip.
    async fn call(&self, batch: &[Waiter]) -> Result<Vec<GcraDecision>, RedisCallError> {
        let requests = batch.iter().map(|w| (&w.keys[..], &w.rules[..]));
        self.call_for(batch.len(), requests).await
    }

    /// One script call for `n` requests (their keys and rules), one round trip.
    async fn call_for<'a>(
        &self,
        n: usize,
        requests: impl Iterator<Item = (&'a [String], &'a [(Gcra, bool)])>,
    ) -> Result<Vec<GcraDecision>, RedisCallError> {
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(n);
        let mut rules = 0;
        for (keys, rules_of) in requests {
            add_request(&mut invocation, keys, rules_of);
            rules += keys.len();
        }
        let mut conn = self.conn.clone();
        let values =
            tokio::time::timeout(self.timeout, invocation.invoke_async::<Vec<i64>>(&mut conn))
                .await
                .map_err(|_| RedisCallError::Timeout(self.timeout))??;
        verdicts(&values, rules)
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisStore {
    /// Connects lazily: a Redis that is down at start is a fallback, not a failure to start.
    /// Reconnection backs off from 10 ms up to 1 s. Must be called inside a Tokio runtime.
    pub fn new(
        client: redis::Client,
        timeout: Duration,
        batch: bool,
    ) -> Result<RedisStore, redis::RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(usize::MAX)
            .set_connection_timeout(Some(Duration::from_millis(250)))
            .set_response_timeout(Some(timeout.max(Duration::from_millis(1))));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        let script = redis::Script::new(SCRIPT);
        Ok(RedisStore {
            conn: Conn::Single(Arc::new(Single {
                conn,
                script: script.clone(),
                timeout,
                batch,
                queue: Mutex::default(),
            })),
            script,
            timeout,
        })
    }

    /// A Redis Cluster (see `client::cluster_client`); connected on first use.
    pub fn cluster(client: ClusterClient, timeout: Duration) -> RedisStore {
        RedisStore {
            conn: Conn::Cluster(Box::new(client), Arc::new(OnceCell::new())),
            script: redis::Script::new(SCRIPT),
            timeout,
        }
    }

    async fn cluster_conn(
        client: &ClusterClient,
        cell: &OnceCell<ClusterConnection>,
    ) -> redis::RedisResult<ClusterConnection> {
        cell.get_or_try_init(|| client.get_async_connection())
            .await
            .cloned()
    }

    /// Decides one request for `keys[i]` under `rules[i]` (gcra, enforce): one round trip,
    /// after the call under way if there is one (see [`super::batch`]). Each call is bounded
    /// by the timeout, so a request waits at most twice it: the call under way, then its own.
    pub async fn decide(
        &self,
        keys: Vec<String>,
        rules: Vec<(Gcra, bool)>,
    ) -> Result<Vec<GcraDecision>, RedisCallError> {
        match &self.conn {
            Conn::Single(single) if !single.batch => {
                single
                    .call_for(1, std::iter::once((&keys[..], &rules[..])))
                    .await
            }
            Conn::Single(single) => {
                let (reply, answer) = oneshot::channel();
                let start = single
                    .queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Waiter { keys, rules, reply });
                if start {
                    tokio::spawn(single.clone().send_batches());
                }
                // The calls answer or time out themselves; this bound only guards against a
                // sender that stopped.
                let bound = self.timeout.saturating_mul(2);
                match tokio::time::timeout(bound, answer).await {
                    Err(_) => Err(RedisCallError::Timeout(bound)),
                    Ok(Err(_)) => Err(RedisCallError::Abandoned),
                    Ok(Ok(verdicts)) => verdicts,
                }
            }
            Conn::Cluster(client, cell) => {
                let call = async {
                    let conn = Self::cluster_conn(client, cell).await?;
                    let calls = keys.iter().zip(&rules).map(|(key, rule)| {
                        let mut conn = conn.clone();
                        let mut invocation = self.script.prepare_invoke();
                        invocation.arg(1);
                        add_request(
                            &mut invocation,
                            std::slice::from_ref(key),
                            std::slice::from_ref(rule),
                        );
                        async move { invocation.invoke_async::<Vec<i64>>(&mut conn).await }
                    });
                    let parts = futures_util::future::try_join_all(calls).await?;
                    Ok::<_, RedisCallError>(parts.into_iter().flatten().collect::<Vec<i64>>())
                };
                let values = tokio::time::timeout(self.timeout, call)
                    .await
                    .map_err(|_| RedisCallError::Timeout(self.timeout))??;
                verdicts(&values, keys.len())
            }
        }
    }

    /// Whether Redis answers a PING within the timeout (the breaker's health check).
    pub async fn ping(&self) -> bool {
        let wait = self.timeout.max(Duration::from_millis(50));
        let ping = async {
            let cmd = redis::cmd("PING");
            match &self.conn {
                Conn::Single(single) => cmd.query_async::<String>(&mut single.conn.clone()).await,
                Conn::Cluster(client, cell) => {
                    let mut conn = Self::cluster_conn(client, cell).await?;
                    cmd.query_async::<String>(&mut conn).await
                }
            }
        };
        matches!(tokio::time::timeout(wait, ping).await, Ok(Ok(_)))
    }
}

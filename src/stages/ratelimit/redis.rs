//! The shared limiter: GCRA in Redis, by one Lua script per request (all of a request's
//! rules in one EVALSHA, so one round trip), with time from Redis itself (`TIME`) so replicas
//! with skewed clocks agree. Keys carry a prefix and expire when replenished.
//!
//! The script checks every rule first and only then records the request, and only if no
//! enforced rule denied it: a request refused by one rule does not use up the others. On a
//! Redis Cluster the rules' keys live on different slots, so each rule is decided by its own
//! call (sent together): there, a request refused by one rule still counts against the others.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::IntoConnectionInfo;
use tokio::sync::OnceCell;

use super::gcra::{Gcra, GcraDecision};
use super::secret::Credentials;

/// KEYS: one per rule. ARGV: per rule, interval_us, tau_us, enforce (1/0).
/// Returns per rule: allowed (1/0), remaining, retry_after_us, reset_us.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out, tats, blocked = {}, {}, false
for i = 1, #KEYS do
  local interval = tonumber(ARGV[3 * i - 2])
  local tau = tonumber(ARGV[3 * i - 1])
  local enforce = ARGV[3 * i] == '1'
  local tat = tonumber(redis.call('GET', KEYS[i]) or now) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - (tau + interval)
  if now < allow_at then
    out[4 * i - 3], out[4 * i - 2], out[4 * i - 1], out[4 * i] = 0, 0, allow_at - now, tat - now
    tats[i] = false
    if enforce then blocked = true end
  else
    out[4 * i - 3], out[4 * i - 2], out[4 * i - 1], out[4 * i] =
      1, math.floor((now - allow_at) / interval), 0, new_tat - now
    tats[i] = new_tat
  end
end
if not blocked then
  for i = 1, #KEYS do
    if tats[i] then
      redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1)
    end
  end
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
}

/// Where the limiter's state lives.
enum Conn {
    /// One Redis (or a primary behind a proxy): all of a request's rules in one script call.
    Single(ConnectionManager),
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

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A client for one Redis at `url` (`redis://` or `rediss://`), with `creds` applied: the
/// username and password replace any in the URL, and a CA file, when given, is the only
/// root a `rediss://` server's certificate is verified against.
pub fn single_client(url: &str, creds: &Credentials) -> redis::RedisResult<redis::Client> {
    install_crypto_provider();
    let mut info = url.into_connection_info()?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &creds.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &creds.password {
        settings = settings.set_password(password.expose());
    }
    info = info.set_redis_settings(settings);
    match &creds.ca_pem {
        Some(ca) => redis::Client::build_with_tls(info, tls_roots(ca)),
        None => redis::Client::open(info),
    }
}

/// A Redis Cluster client from its seed nodes, with `creds` applied to every node.
pub fn cluster_client(
    nodes: &[String],
    creds: &Credentials,
    timeout: Duration,
) -> redis::RedisResult<ClusterClient> {
    install_crypto_provider();
    let mut builder = ClusterClient::builder(nodes.to_vec())
        .connection_timeout(Duration::from_millis(250))
        .response_timeout(timeout.max(Duration::from_millis(1)))
        .retries(1);
    if let Some(user) = &creds.username {
        builder = builder.username(user);
    }
    if let Some(password) = &creds.password {
        builder = builder.password(password.expose());
    }
    if let Some(ca) = &creds.ca_pem {
        builder = builder.certs(tls_roots(ca));
    }
    builder.build()
}

fn tls_roots(ca_pem: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca_pem.to_vec()),
    }
}

/// rustls is built with ring only (see Cargo.toml); make it the process default once, so
/// nothing else in the tree enabling another provider can make rustls unable to choose.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl RedisStore {
    /// Connects lazily: a Redis that is down at start is a fallback, not a failure to start.
    /// Reconnection backs off from 10 ms up to 1 s. Must be called inside a Tokio runtime.
    pub fn new(client: redis::Client, timeout: Duration) -> Result<RedisStore, redis::RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(usize::MAX)
            .set_connection_timeout(Some(Duration::from_millis(250)))
            .set_response_timeout(Some(timeout.max(Duration::from_millis(1))));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(RedisStore {
            conn: Conn::Single(conn),
            script: redis::Script::new(SCRIPT),
            timeout,
        })
    }

    /// A Redis Cluster (see [`cluster_client`]); connected on first use.
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

    /// Decides one request for `keys[i]` under `rules[i]` (gcra, enforce); one round trip.
    pub async fn decide(
        &self,
        keys: &[String],
        rules: &[(Gcra, bool)],
    ) -> Result<Vec<GcraDecision>, RedisCallError> {
        let call = async {
            match &self.conn {
                Conn::Single(conn) => {
                    let mut invocation = self.script.prepare_invoke();
                    for (key, (gcra, enforce)) in keys.iter().zip(rules) {
                        invocation.key(key);
                        invocation
                            .arg(gcra.interval_us)
                            .arg(gcra.tau_us)
                            .arg(u8::from(*enforce));
                    }
                    let mut conn = conn.clone();
                    invocation.invoke_async::<Vec<i64>>(&mut conn).await
                }
                Conn::Cluster(client, cell) => {
                    let conn = Self::cluster_conn(client, cell).await?;
                    let calls = keys.iter().zip(rules).map(|(key, (gcra, enforce))| {
                        let mut conn = conn.clone();
                        let mut invocation = self.script.prepare_invoke();
                        invocation.key(key);
                        invocation
                            .arg(gcra.interval_us)
                            .arg(gcra.tau_us)
                            .arg(u8::from(*enforce));
                        async move { invocation.invoke_async::<Vec<i64>>(&mut conn).await }
                    });
                    let parts = futures_util::future::try_join_all(calls).await?;
                    Ok(parts.into_iter().flatten().collect())
                }
            }
        };
        let values = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| RedisCallError::Timeout(self.timeout))??;
        if values.len() != keys.len() * 4 {
            return Err(RedisCallError::Shape(values.len(), keys.len()));
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

    /// Whether Redis answers a PING within the timeout (the breaker's health check).
    pub async fn ping(&self) -> bool {
        let wait = self.timeout.max(Duration::from_millis(50));
        let ping = async {
            let cmd = redis::cmd("PING");
            match &self.conn {
                Conn::Single(conn) => cmd.query_async::<String>(&mut conn.clone()).await,
                Conn::Cluster(client, cell) => {
                    let mut conn = Self::cluster_conn(client, cell).await?;
                    cmd.query_async::<String>(&mut conn).await
                }
            }
        };
        matches!(tokio::time::timeout(wait, ping).await, Ok(Ok(_)))
    }
}

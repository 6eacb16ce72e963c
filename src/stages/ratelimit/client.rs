//! The Redis clients the limiter is built with: one server or a Cluster's seed nodes, with
//! the credentials and CA of `secret` applied. Connecting is lazy (see `redis`).

use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::IntoConnectionInfo;

use super::secret::Credentials;

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

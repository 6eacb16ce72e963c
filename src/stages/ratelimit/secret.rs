//! How sloguard proves itself to a managed Redis: a username, a password read from an
//! environment variable or a file (a mounted Kubernetes Secret), and the CA that signed the
//! server's TLS certificate. The policy names where they are; they are read when the policy
//! is put to use (`sloguard run`, a reload), not by `sloguard check`, which runs where the
//! pod's Secrets are not (CI).
//!
//! The password is held in a [`Secret`], whose `Debug` and `Display` print `<redacted>`, so
//! no log line, error or status document can carry it by accident.

use std::fmt;
use std::path::PathBuf;

/// A password. Compared and handed to the Redis client, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value itself, for the Redis client only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// `redis_password_env`: an environment variable (set from a Secret with `secretKeyRef`).
    Env(String),
    /// `redis_password_file`: a file (a Secret mounted as a volume); one trailing newline
    /// is dropped. The kubelet updates it in place when the Secret changes; a reload
    /// (`POST /reload`, SIGHUP, a policy change) reads it again.
    File(PathBuf),
}

/// `[ratelimit]` credentials and TLS, validated (paths resolved against the policy's
/// directory), not yet read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RedisAuth {
    /// `redis_username`: the ACL user (Redis 6+); none = the `default` user.
    pub username: Option<String>,
    pub password: Option<PasswordSource>,
    /// `redis_ca_file`: PEM CA certificates that verify a `rediss://` server; none = the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
}

/// The credentials, read.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// The CA file's PEM bytes.
    pub ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password)
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| p.len()))
            .finish()
    }
}

/// A credential could not be read. Names the policy key and where it looked, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("key `ratelimit.redis_password_env`: environment variable `{0}` is not set or empty")]
    EnvMissing(String),
    #[error("key `ratelimit.{key}`: cannot read {}: {source}", path.display())]
    Unreadable {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key `ratelimit.redis_password_file`: {} is empty", .0.display())]
    EmptyFile(PathBuf),
    #[error("key `ratelimit.redis_ca_file`: {} holds no PEM certificate", .0.display())]
    NoCertificate(PathBuf),
}

impl RedisAuth {
    /// Whether anything is set.
    pub fn is_empty(&self) -> bool {
        self == &RedisAuth::default()
    }

    /// Reads the password and the CA file.
    pub fn resolve(&self) -> Result<Credentials, SecretError> {
        self.resolve_with(|name| std::env::var(name).ok())
    }

    /// [`RedisAuth::resolve`] with the environment given (for tests).
    pub fn resolve_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Credentials, SecretError> {
        let password = match &self.password {
            None => None,
            Some(PasswordSource::Env(name)) => match env(name) {
                Some(v) if !v.is_empty() => Some(Secret(v)),
                _ => return Err(SecretError::EnvMissing(name.clone())),
            },
            Some(PasswordSource::File(path)) => {
                let text = read(path, "redis_password_file")?;
                let text = String::from_utf8_lossy(&text);
                let value = text.strip_suffix('\n').unwrap_or(&text);
                let value = value.strip_suffix('\r').unwrap_or(value);
                if value.is_empty() {
                    return Err(SecretError::EmptyFile(path.clone()));
                }
                Some(Secret(value.to_string()))
            }
        };
        let ca_pem = match &self.ca_file {
            None => None,
            Some(path) => {
                let pem = read(path, "redis_ca_file")?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(SecretError::NoCertificate(path.clone()));
                }
                Some(pem)
            }
        };
        Ok(Credentials {
            username: self.username.clone(),
            password,
            ca_pem,
        })
    }
}

fn read(path: &PathBuf, key: &'static str) -> Result<Vec<u8>, SecretError> {
    std::fs::read(path).map_err(|source| SecretError::Unreadable {
        key,
        path: path.clone(),
        source,
    })
}

/// `url` with any password in it replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_string()
            };
            format!("{scheme}://{hidden}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        let c = Credentials {
            username: Some("u".into()),
            password: Some(s),
            ca_pem: Some(b"pem".to_vec()),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn passwords_come_from_the_environment_or_a_file_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret\n").unwrap();
        let auth = RedisAuth {
            password: Some(PasswordSource::File(file.clone())),
            ..RedisAuth::default()
        };
        assert_eq!(auth.resolve().unwrap().password.unwrap().expose(), "s3cret");
        let auth = RedisAuth {
            password: Some(PasswordSource::Env("PW".into())),
            ..RedisAuth::default()
        };
        let got = auth.resolve_with(|n| (n == "PW").then(|| "from-env".to_string()));
        assert_eq!(got.unwrap().password.unwrap().expose(), "from-env");
        let err = auth.resolve_with(|_| None).unwrap_err().to_string();
        assert!(err.contains("`PW` is not set"), "{err}");
        std::fs::write(&file, "\n").unwrap();
        let auth = RedisAuth {
            password: Some(PasswordSource::File(file)),
            ..RedisAuth::default()
        };
        assert!(matches!(auth.resolve(), Err(SecretError::EmptyFile(_))));
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.crt");
        std::fs::write(&file, "not a certificate").unwrap();
        let auth = RedisAuth {
            ca_file: Some(file),
            ..RedisAuth::default()
        };
        assert!(matches!(auth.resolve(), Err(SecretError::NoCertificate(_))));
        let auth = RedisAuth {
            ca_file: Some("/nonexistent/ca.crt".into()),
            ..RedisAuth::default()
        };
        let err = auth.resolve().unwrap_err().to_string();
        assert!(err.contains("redis_ca_file") && err.contains("/nonexistent/ca.crt"));
    }

    #[test]
    fn urls_are_redacted_for_messages() {
        assert_eq!(
            redact_url("rediss://user:pw@host:6380/0"),
            "rediss://user:***@host:6380/0"
        );
        assert_eq!(redact_url("redis://:pw@host"), "redis://:***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("redis://tok@host"), "redis://***@host");
    }
}

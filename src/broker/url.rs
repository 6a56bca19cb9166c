//! Celery-style Redis URLs → `redis::Client`.
//!
//! Accepted forms (the ones kombu and Celery's Redis backend accept, plus `unix://`):
//! - `redis://[[user]:password@]host[:port][/db]`
//! - `rediss://…?ssl_cert_reqs=required|optional|none` (also `CERT_REQUIRED`, …); `none`/`optional`
//!   skip certificate verification, like kombu does when the parameter is missing.
//! - `unix:///path/redis.sock?db=N` and Celery's `redis+socket:///path?virtual_host=N`.

use std::fmt;

use url::Url;

/// A parsed broker or backend location: the URL handed to the redis crate and the DB number
/// (kombu's fanout channel names embed it: `/{db}.celeryev/…`).
#[derive(Clone)]
pub struct RedisUrl {
    client_url: String,
    display: String,
    pub db: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("invalid Redis URL {0:?}: {1}")]
    Invalid(String, String),
    #[error("unsupported URL scheme {0:?} (use redis://, rediss://, unix:// or redis+socket://)")]
    Scheme(String),
}

impl RedisUrl {
    pub fn parse(raw: &str) -> Result<Self, UrlError> {
        let invalid = |why: &str| UrlError::Invalid(redact(raw), why.to_string());
        let url = Url::parse(raw).map_err(|e| invalid(&e.to_string()))?;
        match url.scheme() {
            "redis" | "rediss" => Self::from_tcp(url, raw),
            "unix" | "redis+unix" | "redis+socket" | "socket" => Self::from_socket(url, raw),
            other => Err(UrlError::Scheme(other.to_string())),
        }
    }

    fn from_tcp(mut url: Url, raw: &str) -> Result<Self, UrlError> {
        let tls = url.scheme() == "rediss";
        let db = match url.path().trim_start_matches('/') {
            "" => 0,
            s => s
                .parse::<i64>()
                .map_err(|_| UrlError::Invalid(redact(raw), format!("bad database {s:?}")))?,
        };
        let cert_reqs = url
            .query_pairs()
            .find(|(k, _)| k == "ssl_cert_reqs")
            .map(|(_, v)| v.to_ascii_lowercase());
        // The redis crate rejects query parameters it does not know; Celery's TLS options are
        // translated here instead.
        url.set_query(None);
        url.set_fragment(None);
        if tls {
            let insecure = match cert_reqs.as_deref() {
                Some("required" | "cert_required") => false,
                Some("optional" | "cert_optional" | "none" | "cert_none") | None => true,
                Some(other) => {
                    return Err(UrlError::Invalid(
                        redact(raw),
                        format!("unknown ssl_cert_reqs {other:?}"),
                    ));
                }
            };
            if insecure {
                url.set_fragment(Some("insecure"));
            }
        }
        Ok(Self {
            client_url: url.to_string(),
            display: redact(raw),
            db,
        })
    }

    fn from_socket(url: Url, raw: &str) -> Result<Self, UrlError> {
        let path = url.path();
        if path.is_empty() || path == "/" {
            return Err(UrlError::Invalid(redact(raw), "missing socket path".into()));
        }
        let db = url
            .query_pairs()
            .find(|(k, _)| k == "db" || k == "virtual_host")
            .map(|(_, v)| v.parse::<i64>())
            .transpose()
            .map_err(|_| UrlError::Invalid(redact(raw), "bad database number".into()))?
            .unwrap_or(0);
        let mut client_url = Url::parse("unix:///").expect("static URL");
        client_url.set_path(path);
        let mut query = format!("db={db}");
        if !url.password().unwrap_or("").is_empty() {
            query.push_str("&pass=");
            query.push_str(url.password().unwrap_or(""));
        }
        client_url.set_query(Some(&query));
        Ok(Self {
            client_url: client_url.to_string(),
            display: redact(raw),
            db,
        })
    }

    /// Host (or socket path), port, user name and TLS, as kombu reports them in `stats`.
    pub fn parts(&self) -> UrlParts {
        let url = Url::parse(&self.client_url).ok();
        let is_socket = url.as_ref().is_some_and(|u| u.scheme() == "unix");
        UrlParts {
            hostname: url
                .as_ref()
                .map(|u| {
                    if is_socket {
                        u.path().to_string()
                    } else {
                        u.host_str().unwrap_or("localhost").to_string()
                    }
                })
                .unwrap_or_default(),
            port: url
                .as_ref()
                .filter(|_| !is_socket)
                .map(|u| u.port().unwrap_or(6379)),
            userid: url
                .as_ref()
                .map(|u| u.username().to_string())
                .filter(|u| !u.is_empty()),
            ssl: url.as_ref().is_some_and(|u| u.scheme() == "rediss"),
            transport: if is_socket { "redis+socket" } else { "redis" },
        }
    }

    pub fn client(&self) -> Result<redis::Client, redis::RedisError> {
        redis::Client::open(self.client_url.as_str())
    }
}

/// The pieces of a broker URL that `stats` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlParts {
    pub hostname: String,
    pub port: Option<u16>,
    pub userid: Option<String>,
    pub ssl: bool,
    pub transport: &'static str,
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.display)
    }
}

/// The URL with its password replaced by `**`, for logs (Celery prints it the same way).
pub fn redact(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("**"));
            url.to_string()
        }
        _ => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_forms() {
        let u = RedisUrl::parse("redis://:secret@example.org:6380/3").unwrap();
        assert_eq!(u.db, 3);
        assert_eq!(u.client_url, "redis://:secret@example.org:6380/3");
        assert_eq!(u.to_string(), "redis://:**@example.org:6380/3");
        assert_eq!(RedisUrl::parse("redis://localhost").unwrap().db, 0);
        assert!(RedisUrl::parse("redis://localhost/x").is_err());
        let p = RedisUrl::parse("redis://bob:pw@example.org/3")
            .unwrap()
            .parts();
        assert_eq!(p.hostname, "example.org");
        assert_eq!(p.port, Some(6379));
        assert_eq!(p.userid.as_deref(), Some("bob"));
        assert!(!p.ssl);
        let p = RedisUrl::parse("unix:///tmp/r.sock?db=2").unwrap().parts();
        assert_eq!((p.hostname.as_str(), p.port), ("/tmp/r.sock", None));
    }

    #[test]
    fn tls_cert_reqs() {
        let u = RedisUrl::parse("rediss://h:6379/1?ssl_cert_reqs=none").unwrap();
        assert_eq!(u.client_url, "rediss://h:6379/1#insecure");
        let u = RedisUrl::parse("rediss://h:6379/1?ssl_cert_reqs=CERT_REQUIRED").unwrap();
        assert_eq!(u.client_url, "rediss://h:6379/1");
        assert!(RedisUrl::parse("rediss://h/1?ssl_cert_reqs=bogus").is_err());
    }

    #[test]
    fn socket_forms() {
        let u = RedisUrl::parse("redis+socket:///tmp/r.sock?virtual_host=7").unwrap();
        assert_eq!(u.db, 7);
        assert_eq!(u.client_url, "unix:///tmp/r.sock?db=7");
        let u = RedisUrl::parse("unix:///tmp/r.sock?db=2").unwrap();
        assert_eq!(u.db, 2);
        assert!(u.client().is_ok());
        assert!(matches!(
            RedisUrl::parse("amqp://guest@localhost//"),
            Err(UrlError::Scheme(_))
        ));
    }
}

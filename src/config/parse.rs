//! Turning the merged file and environment settings into a validated [`Config`], collecting every
//! problem on the way.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use serde::Deserialize;
use url::Url;

use super::*;
use crate::{domain::RedirectUri, secret::Secret};

/// A value as written in the file: TOML strings, numbers and booleans are all accepted and read
/// as text, so the file and the environment parse the same way.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum RawValue {
    Text(String),
    Int(i64),
    Bool(bool),
    List(Vec<String>),
}

/// The merged, still unparsed settings.
#[derive(Default)]
pub(super) struct Raw {
    pub(super) scalars: BTreeMap<&'static str, String>,
    pub(super) lists: BTreeMap<&'static str, Vec<String>>,
}

impl Raw {
    pub(super) fn scalar(&self, key: &str) -> Option<&str> {
        self.scalars.get(key).map(String::as_str).filter(|s| !s.trim().is_empty())
    }
}

pub(super) fn read_file(text: &str, raw: &mut Raw) -> Result<(), ConfigError> {
    let table: BTreeMap<String, RawValue> = toml::from_str(text)
        .map_err(|e| ConfigError::one("config", format!("the TOML file does not parse: {e}")))?;
    for (key, value) in table {
        let Some((name, kind)) = SETTINGS.iter().find(|(k, _)| *k == key) else {
            return Err(ConfigError::one(
                "config",
                format!("unknown setting `{key}` in the configuration file"),
            ));
        };
        match (kind, value) {
            (Kind::List, RawValue::List(items)) => {
                raw.lists.insert(name, items);
            }
            (Kind::List, RawValue::Text(s)) => {
                raw.lists.insert(name, vec![s]);
            }
            (Kind::Scalar, RawValue::Text(s)) => {
                raw.scalars.insert(name, s);
            }
            (Kind::Scalar, RawValue::Int(i)) => {
                raw.scalars.insert(name, i.to_string());
            }
            (Kind::Scalar, RawValue::Bool(b)) => {
                raw.scalars.insert(name, b.to_string());
            }
            _ => {
                return Err(ConfigError::one(
                    name,
                    "has the wrong type in the configuration file (a list where a single value is expected, or the reverse)",
                ));
            }
        }
    }
    Ok(())
}

/// Collects every problem instead of stopping at the first.
#[derive(Default)]
pub(super) struct Parser {
    problems: Vec<ConfigProblem>,
}

impl Parser {
    pub(super) fn problem(&mut self, setting: &'static str, message: impl Into<String>) {
        self.problems.push(ConfigProblem { setting, message: message.into() });
    }

    pub(super) fn duration(&mut self, raw: &Raw, key: &'static str, default: Duration) -> Duration {
        match raw.scalar(key) {
            None => default,
            Some(text) => match parse_duration(text) {
                Some(d) if !d.is_zero() => d,
                _ => {
                    self.problem(key, format!("`{text}` is not a positive duration; write e.g. `900`, `90s`, `15m`, `12h` or `7d`"));
                    default
                }
            },
        }
    }

    pub(super) fn boolean(&mut self, raw: &Raw, key: &'static str, default: bool) -> bool {
        match raw.scalar(key) {
            None => default,
            Some("true") => true,
            Some("false") => false,
            Some(other) => {
                self.problem(key, format!("`{other}` is not true or false"));
                default
            }
        }
    }

    /// A duration that may be zero, at most `max`.
    pub(super) fn duration_up_to(
        &mut self,
        raw: &Raw,
        key: &'static str,
        default: Duration,
        max: Duration,
    ) -> Duration {
        match raw.scalar(key) {
            None => default,
            Some(text) => match parse_duration(text) {
                Some(d) if d <= max => d,
                _ => {
                    self.problem(
                        key,
                        format!(
                            "`{text}` is not a duration from 0 to {}s; write e.g. `0`, `2s` or `1m`",
                            max.as_secs()
                        ),
                    );
                    default
                }
            },
        }
    }

    fn url(&mut self, raw: &Raw, key: &'static str) -> Option<Url> {
        let text = raw.scalar(key)?;
        match Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(url)
            }
            _ => {
                self.problem(key, format!("`{text}` is not an absolute http(s) URL"));
                None
            }
        }
    }

    fn secret(
        &mut self,
        raw: &Raw,
        key: &'static str,
        file_key: &'static str,
    ) -> Option<Secret<String>> {
        match (raw.scalar(key), raw.scalar(file_key)) {
            (Some(_), Some(_)) => {
                self.problem(key, format!("set either {key} or {file_key}, not both"));
                None
            }
            (Some(value), None) => Some(Secret::new(value.trim().to_string())),
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(value) if !value.trim().is_empty() => {
                    Some(Secret::new(value.trim().to_string()))
                }
                Ok(_) => {
                    self.problem(file_key, format!("the file {path} is empty"));
                    None
                }
                Err(e) => {
                    self.problem(file_key, format!("cannot read {path}: {e}"));
                    None
                }
            },
            (None, None) => None,
        }
    }

    pub(super) fn parse(mut self, raw: &Raw) -> Result<Config, ConfigError> {
        let listen_addr = match raw.scalar("listen_addr").unwrap_or("127.0.0.1:8080").parse() {
            Ok(addr) => addr,
            Err(_) => {
                self.problem("listen_addr", "must be an IP address and port, e.g. `0.0.0.0:8080`");
                SocketAddr::from(([127, 0, 0, 1], 8080))
            }
        };

        let public_url = self.url(raw, "public_url").or_else(|| {
            let host = if listen_addr.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                listen_addr.ip().to_string()
            };
            Url::parse(&format!("http://{host}:{}", listen_addr.port())).ok()
        });

        let database = match raw.scalar("database_url") {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Some(DatabaseConfig::Postgres(Secret::new(url.to_string())))
            }
            Some(url) if url.starts_with("sqlite:") => {
                let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
                Some(DatabaseConfig::Sqlite(PathBuf::from(path)))
            }
            Some(_) => {
                self.problem(
                    "database_url",
                    "must start with postgres:// (or sqlite:); unset it to use the embedded SQLite file",
                );
                None
            }
            None => Some(DatabaseConfig::Sqlite(PathBuf::from(
                raw.scalar("sqlite_path").unwrap_or("authgate.db"),
            ))),
        };

        let issuer_url = match self.url(raw, "issuer_url") {
            Some(url) => {
                if url.scheme() != "https" && !is_loopback(&url) {
                    self.problem(
                        "issuer_url",
                        format!("`{url}` must use https (plain http is only accepted for a provider on localhost)"),
                    );
                }
                raw.scalar("issuer_url").map(|s| s.trim().to_string())
            }
            None => {
                if raw.scalar("issuer_url").is_none() {
                    self.problem(
                        "issuer_url",
                        "is required: the provider's issuer, e.g. https://dev-123.okta.com/oauth2/default",
                    );
                }
                None
            }
        };
        let client_id = raw.scalar("client_id").map(str::to_string);
        if client_id.is_none() {
            self.problem(
                "client_id",
                "is required: the OAuth client id registered at the provider",
            );
        }
        let client_secret = self.secret(raw, "client_secret", "client_secret_file");
        if client_secret.is_none()
            && raw.scalar("client_secret").is_none()
            && raw.scalar("client_secret_file").is_none()
        {
            self.problem(
                "client_secret",
                "is required (or client_secret_file): authgate is a confidential client",
            );
        }
        let client_auth_method =
            match raw.scalar("client_auth_method").unwrap_or("client_secret_basic") {
                "client_secret_basic" => ClientAuthMethod::ClientSecretBasic,
                "client_secret_post" => ClientAuthMethod::ClientSecretPost,
                other => {
                    self.problem(
                    "client_auth_method",
                    format!(
                        "`{other}` is not supported; use client_secret_basic or client_secret_post"
                    ),
                );
                    ClientAuthMethod::ClientSecretBasic
                }
            };
        let mut scopes = raw
            .lists
            .get("scopes")
            .cloned()
            .unwrap_or_else(|| vec!["openid".into(), "profile".into(), "email".into()]);
        if let Some(bad) = scopes.iter().find(|s| !crate::domain::is_scope_token(s)) {
            self.problem("scopes", format!("`{bad}` is not a valid scope token"));
        }
        if !scopes.iter().any(|s| s == "openid") {
            scopes.insert(0, "openid".into());
        }

        let base = public_url.as_ref().map(|u| u.as_str().trim_end_matches('/').to_string());
        let http_callback_url = match (raw.scalar("http_callback_url"), &base) {
            (Some(text), _) => RedirectUri::parse(text)
                .map_err(|e| self.problem("http_callback_url", format!("`{text}`: {e}")))
                .ok(),
            (None, Some(base)) => {
                let url = format!("{base}/authorization-code/callback");
                RedirectUri::parse(&url)
                    .map_err(|e| {
                        self.problem(
                            "public_url",
                            format!("the HTTP callback derived from it, `{url}`, {e}"),
                        )
                    })
                    .ok()
            }
            (None, None) => None,
        };
        let mut redirect_uris: Vec<RedirectUri> = Vec::new();
        for u in raw.lists.get("redirect_uris").into_iter().flatten() {
            match RedirectUri::parse(u) {
                Ok(uri) => redirect_uris.push(uri),
                Err(e) => self.problem("redirect_uris", format!("`{u}`: {e}")),
            }
        }
        if let Some(callback) = &http_callback_url
            && !redirect_uris.contains(callback)
        {
            redirect_uris.push(callback.clone());
        }
        let mut post_logout_redirect_uris = Vec::new();
        for u in raw.lists.get("post_logout_redirect_uris").into_iter().flatten() {
            match RedirectUri::parse(u) {
                Ok(uri) => post_logout_redirect_uris.push(uri.as_str().to_string()),
                Err(e) => self.problem("post_logout_redirect_uris", format!("`{u}`: {e}")),
            }
        }
        let access = AccessRules {
            allowed_groups: raw.lists.get("allowed_groups").cloned().unwrap_or_default(),
            allowed_email_domains: raw
                .lists
                .get("allowed_email_domains")
                .into_iter()
                .flatten()
                .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
                .collect(),
        };
        if let Some(bad) = access.allowed_email_domains.iter().find(|d| {
            d.is_empty() || !d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }) {
            self.problem("allowed_email_domains", format!("`{bad}` is not a domain name"));
        }
        let identity_header_prefix =
            raw.scalar("identity_header_prefix").unwrap_or("x-authgate-").to_ascii_lowercase();
        if identity_header_prefix.is_empty()
            || !identity_header_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            self.problem(
                "identity_header_prefix",
                "must be letters, digits and dashes, e.g. `x-authgate-`",
            );
        }
        let otlp_endpoint = self.url(raw, "otlp_endpoint").map(|u| u.to_string());
        let refresh_at_provider = self.boolean(raw, "refresh_at_provider", true);
        let csrf_all_methods = self.boolean(raw, "csrf_all_methods", false);
        let refresh_cookie = self.boolean(raw, "refresh_cookie", false);
        let refresh_grace = self.duration_up_to(
            raw,
            "refresh_grace",
            Duration::from_secs(5),
            Duration::from_secs(60),
        );
        let provider_refresh_min_interval = self.duration_up_to(
            raw,
            "provider_refresh_min_interval",
            Duration::from_secs(60),
            Duration::from_secs(3600),
        );
        let mut post_login_redirect_urls = Vec::new();
        for u in raw.lists.get("post_login_redirect_urls").into_iter().flatten() {
            match RedirectUri::parse(u) {
                Ok(uri) => post_login_redirect_urls.push(uri.as_str().to_string()),
                Err(e) => self.problem("post_login_redirect_urls", format!("`{u}`: {e}")),
            }
        }
        if post_login_redirect_urls.is_empty()
            && let Some(base) = &base
        {
            post_login_redirect_urls.push(format!("{base}/"));
        }

        let mut cors_allowed_origins = Vec::new();
        for origin in raw.lists.get("cors_allowed_origins").into_iter().flatten() {
            match Url::parse(origin) {
                Ok(url)
                    if matches!(url.scheme(), "http" | "https")
                        && url.path() == "/"
                        && url.query().is_none()
                        && !origin.ends_with('/') =>
                {
                    cors_allowed_origins.push(origin.clone());
                }
                _ => self.problem(
                    "cors_allowed_origins",
                    format!("`{origin}` is not an origin; write scheme://host[:port] with no path or trailing slash"),
                ),
            }
        }

        let algorithm =
            match SigningAlgorithm::parse(raw.scalar("signing_algorithm").unwrap_or("ES256")) {
                Some(a) => a,
                None => {
                    self.problem("signing_algorithm", "must be ES256, EdDSA or RS256");
                    SigningAlgorithm::Es256
                }
            };
        let key_file = raw.scalar("signing_key_file").map(PathBuf::from);
        if let Some(path) = &key_file {
            if !path.is_file() {
                self.problem("signing_key_file", format!("{} does not exist", path.display()));
            }
        } else if algorithm == SigningAlgorithm::Rs256 {
            self.problem(
                "signing_key_file",
                "is required with RS256 (authgate generates ES256 and EdDSA keys itself); give a PKCS#8 PEM RSA key of at least 2048 bits",
            );
        }
        let tokens = TokenConfig {
            ttl: self.duration(raw, "token_ttl", Duration::from_secs(900)),
            audience: raw.scalar("token_audience").unwrap_or("authgate").to_string(),
            algorithm,
            key_file,
            key_rotation_interval: self.duration(
                raw,
                "key_rotation_interval",
                Duration::from_secs(30 * 86_400),
            ),
            key_publish_ahead: self.duration(raw, "key_publish_ahead", Duration::from_secs(600)),
            key_reload_interval: self.duration(raw, "key_reload_interval", Duration::from_secs(30)),
            leeway: self.duration_up_to(
                raw,
                "token_leeway",
                Duration::from_secs(2),
                Duration::from_secs(60),
            ),
            max_groups: self.count(raw, "max_token_groups", 100, 0, 1_000),
        };
        if tokens.key_rotation_interval <= tokens.key_publish_ahead {
            self.problem("key_rotation_interval", "must be longer than key_publish_ahead");
        }
        if tokens.ttl > Duration::from_secs(24 * 3600) {
            self.problem(
                "token_ttl",
                "must be at most 24h: authgate's tokens are meant to be short-lived",
            );
        }

        let development_mode = self.boolean(raw, "development_mode", false);
        let encryption_key = self.encryption_key(raw, database.as_ref(), development_mode);

        let log_format = match raw.scalar("log_format").unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                self.problem("log_format", format!("`{other}` is not text or json"));
                LogFormat::Text
            }
        };

        let provider_timeout = self.duration(raw, "provider_timeout", Duration::from_secs(10));
        let provider_max_response_bytes =
            self.size(raw, "provider_max_response_bytes", 256 * 1024, 16 * 1024, 16 * 1024 * 1024);
        let transport = self.transport(raw);
        if transport.internal_listen_addr == Some(listen_addr) {
            self.problem(
                "internal_listen_addr",
                "must differ from listen_addr: the internal listener is a second port",
            );
        }
        let clock_skew = self.duration(raw, "clock_skew", Duration::from_secs(60));
        let provider_discovery_interval =
            self.duration(raw, "provider_discovery_interval", Duration::from_secs(3600));
        let provider_jwks_min_refresh_interval =
            self.duration(raw, "provider_jwks_min_refresh_interval", Duration::from_secs(60));
        let attempt_ttl = self.duration(raw, "attempt_ttl", Duration::from_secs(600));
        let session_max_age = match (raw.scalar("session_max_age"), raw.scalar("session_ttl")) {
            (Some(_), Some(_)) => {
                self.problem(
                    "session_max_age",
                    "set session_max_age or its older name session_ttl, not both",
                );
                Duration::from_secs(24 * 3600)
            }
            (None, Some(_)) => self.duration(raw, "session_ttl", Duration::from_secs(24 * 3600)),
            _ => self.duration(raw, "session_max_age", Duration::from_secs(24 * 3600)),
        };
        let session_idle_timeout =
            self.duration(raw, "session_idle_timeout", Duration::from_secs(8 * 3600));
        if session_idle_timeout <= tokens.ttl {
            self.problem(
                "session_idle_timeout",
                format!(
                    "must be longer than token_ttl ({}s): a client refreshes when its token expires, so a shorter idle timeout would end every session between refreshes",
                    tokens.ttl.as_secs()
                ),
            );
        }
        let revocation_sync_interval =
            self.duration(raw, "revocation_sync_interval", Duration::from_secs(1));
        let health_check_interval =
            self.duration(raw, "health_check_interval", Duration::from_secs(1));
        let database_max_connections = match raw.scalar("database_max_connections") {
            None => 16,
            Some(text) => match text.parse::<u32>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => {
                    self.problem(
                        "database_max_connections",
                        "must be a whole number from 1 to 1000",
                    );
                    16
                }
            },
        };

        match (
            public_url,
            database,
            issuer_url,
            client_id,
            client_secret,
            encryption_key,
            http_callback_url,
        ) {
            (
                Some(public_url),
                Some(database),
                Some(issuer_url),
                Some(client_id),
                Some(client_secret),
                Some(encryption_key),
                Some(http_callback_url),
            ) if self.problems.is_empty() => Ok(Config {
                listen_addr,
                public_url,
                database,
                provider: ProviderConfig {
                    issuer: issuer_url,
                    client_id,
                    client_secret,
                    client_auth_method,
                    scopes,
                    timeout: provider_timeout,
                    clock_skew,
                    max_response_bytes: provider_max_response_bytes,
                    discovery_interval: provider_discovery_interval,
                    jwks_min_refresh_interval: provider_jwks_min_refresh_interval,
                },
                redirect_uris,
                http_callback_url,
                post_login_redirect_urls,
                post_logout_redirect_uris,
                access,
                identity_header_prefix,
                cors_allowed_origins,
                csrf_all_methods,
                development_mode,
                tokens,
                attempt_ttl,
                session_max_age,
                session_idle_timeout,
                encryption_key,
                log_format,
                health_check_interval,
                database_max_connections,
                refresh_at_provider,
                refresh_cookie,
                refresh_grace,
                provider_refresh_min_interval,
                revocation_sync_interval,
                otlp_endpoint,
                transport,
            }),
            _ => Err(ConfigError { problems: self.problems }),
        }
    }

    fn encryption_key(
        &mut self,
        raw: &Raw,
        database: Option<&DatabaseConfig>,
        development_mode: bool,
    ) -> Option<EncryptionKey> {
        const HOW: &str = "generate one with `openssl rand -base64 32`";
        if let Some(value) = self.secret(raw, "encryption_key", "encryption_key_file") {
            return match decode_key(value.expose()) {
                Some(key) if is_published_key(&key) && !development_mode => {
                    self.problem(
                        "encryption_key",
                        format!(
                            "is a key published in authgate's repository (the tests, the benchmark or docker-compose.yml) or a trivially guessable one, so anyone can decrypt what it protects; {HOW}, or set development_mode = true (AUTHGATE_DEVELOPMENT_MODE) for a throwaway local setup"
                        ),
                    );
                    None
                }
                Some(key) => Some(EncryptionKey { key: Secret::new(key), generated_at: None }),
                None => {
                    self.problem(
                        "encryption_key",
                        format!("must be 32 bytes encoded in base64; {HOW}"),
                    );
                    None
                }
            };
        }
        if raw.scalar("encryption_key").is_some() || raw.scalar("encryption_key_file").is_some() {
            return None; // already reported
        }
        match database {
            Some(DatabaseConfig::Sqlite(path)) => {
                let mut key_path = path.clone().into_os_string();
                key_path.push(".key");
                let key_path = PathBuf::from(key_path);
                match load_or_generate_key_file(&key_path) {
                    Ok(key) => {
                        Some(EncryptionKey { key: Secret::new(key), generated_at: Some(key_path) })
                    }
                    Err(e) => {
                        self.problem(
                            "encryption_key",
                            format!("{e}; or set the key explicitly ({HOW})"),
                        );
                        None
                    }
                }
            }
            Some(DatabaseConfig::Postgres(_)) => {
                self.problem(
                    "encryption_key",
                    format!("is required with PostgreSQL, and every replica must use the same one; {HOW}"),
                );
                None
            }
            None => None,
        }
    }
}

fn decode_key(text: &str) -> Option<[u8; 32]> {
    STANDARD.decode(text.trim()).ok()?.try_into().ok()
}

/// Encryption keys that have been published — committed to this repository at some point (the
/// tests', the benchmark's, docker-compose.yml's demo key) — and keys with one byte repeated.
/// authgate refuses them outside `development_mode`.
fn is_published_key(key: &[u8; 32]) -> bool {
    const PUBLISHED: &[&str] = &[
        "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=",
        "ZGVtby1vbmx5LWRlbW8tb25seS1kZW1vLW9ubHktZGU=",
    ];
    key.iter().all(|b| *b == key[0])
        || PUBLISHED.iter().filter_map(|k| decode_key(k)).any(|published| published == *key)
}

/// For the embedded SQLite store only: keep the key-encryption key in a file beside the database,
/// created with mode 0600 on first start.
fn load_or_generate_key_file(path: &Path) -> Result<[u8; 32], String> {
    match std::fs::read_to_string(path) {
        Ok(text) => decode_key(&text)
            .ok_or_else(|| format!("{} does not hold a base64 32-byte key", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            write_private_file(path, STANDARD.encode(key).as_bytes())
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        // RFC 6761: `localhost` and every name under it are loopback.
        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Parses `900`, `900s`, `15m`, `12h`, `7d`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

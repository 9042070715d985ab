//! Typed configuration, layered: built-in defaults, then a TOML file, then environment variables
//! (`AUTHGATE_<SETTING>`, plus the conventional `DATABASE_URL`). Everything is validated at start;
//! each problem names the setting (file key and environment variable) and says what to fix.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use url::Url;

use crate::{domain::RedirectUri, secret::Secret};

/// A fully validated configuration. Build it with [`Config::load`] or [`Config::from_sources`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the single gRPC + grpc-web + HTTP listener binds to.
    pub listen_addr: SocketAddr,
    /// authgate's own base URL as clients reach it; the `iss` of the JWTs it mints and the base of
    /// its published JWKS.
    pub public_url: Url,
    pub database: DatabaseConfig,
    pub provider: ProviderConfig,
    /// Exact-match allow-list for `redirect_uri`; the first one is the default. Always contains
    /// `http_callback_url`.
    pub redirect_uris: Vec<RedirectUri>,
    /// The server-side flow's callback (`GET /authorization-code/callback` on this service).
    pub http_callback_url: RedirectUri,
    /// Exact-match allow-list of where the server-side flow may send the browser after login;
    /// the first one is the default.
    pub post_login_redirect_urls: Vec<String>,
    /// Exact-match allow-list for Logout's `post_logout_redirect_uri`; the first is the default.
    pub post_logout_redirect_uris: Vec<String>,
    /// Who may sign in and pass the gateway checks.
    pub access: AccessRules,
    /// Prefix of the identity headers the gateway checks add (`<prefix>sub`, `email`, `groups`).
    pub identity_header_prefix: String,
    /// Browser origins allowed to call authgate over grpc-web / fetch (CORS), and to send
    /// cookie-authenticated unsafe requests (CSRF defence, with the site's own origin).
    pub cors_allowed_origins: Vec<String>,
    /// Apply the CSRF rule to every method, not only unsafe ones.
    pub csrf_all_methods: bool,
    /// Accept the encryption keys published in authgate's repository (throwaway setups only).
    pub development_mode: bool,
    pub tokens: TokenConfig,
    /// How long a login attempt (state, nonce, PKCE verifier) stays redeemable.
    pub attempt_ttl: Duration,
    /// The longest an authgate session lives, however active (`session_max_age`; its older
    /// name `session_ttl` is still read).
    pub session_max_age: Duration,
    /// A session not refreshed (or, for a browser session, not used) for this long ends.
    pub session_idle_timeout: Duration,
    /// Key-encryption key for provider tokens and signing keys at rest (AES-256-GCM).
    pub encryption_key: EncryptionKey,
    pub log_format: LogFormat,
    /// How often readiness (database and provider) is re-checked.
    pub health_check_interval: Duration,
    /// Size of the database connection pool.
    pub database_max_connections: u32,
    /// OTLP/HTTP collector base URL for traces (e.g. `http://otel-collector:4318`); unset, no export.
    pub otlp_endpoint: Option<String>,
    /// Whether RefreshSession also refreshes at the provider (when it issued a refresh token).
    pub refresh_at_provider: bool,
    /// Allow cookie mode: a browser's ExchangeCode over grpc-web may ask for its refresh handle
    /// in an HttpOnly cookie instead of the response body (`refresh_cookie`).
    pub refresh_cookie: bool,
    /// How long a used refresh handle, presented again in the refresh cookie, still gets the
    /// successor already issued for it instead of ending the session (`refresh_grace`; 0: never).
    pub refresh_grace: Duration,
    /// RefreshSession refreshes at the provider at most this often per session (0: every time).
    pub provider_refresh_min_interval: Duration,
    /// How often every replica re-reads recent revocations (the bound on how stale
    /// ValidateToken can be after a logout on another replica).
    pub revocation_sync_interval: Duration,
    /// Listeners, connection and request limits.
    pub transport: TransportConfig,
}

/// Allow-lists applied at login (ExchangeCode, the HTTP callbacks) and at check time (Envoy
/// ext_authz, `/auth/check`). Empty lists allow everyone.
#[derive(Debug, Clone, Default)]
pub struct AccessRules {
    /// The user must be in at least one of these groups.
    pub allowed_groups: Vec<String>,
    /// The user's verified email must be in one of these domains (lower-case, exact).
    pub allowed_email_domains: Vec<String>,
}

#[derive(Clone)]
pub enum DatabaseConfig {
    /// A PostgreSQL URL (may carry a password, hence secret).
    Postgres(Secret<String>),
    /// An embedded SQLite database file.
    Sqlite(PathBuf),
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postgres(url) => write!(f, "Postgres({})", redact_url(url.expose())),
            Self::Sqlite(path) => write!(f, "Sqlite({})", path.display()),
        }
    }
}

impl DatabaseConfig {
    /// A description safe to log: the URL without its password.
    pub fn describe(&self) -> String {
        format!("{self:?}")
    }
}

/// A database URL without its secrets: the password (in the user part or as a `password` /
/// `sslpassword` query parameter) replaced by `redacted`.
fn redact_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("redacted"));
            }
            if url.query().is_some() {
                let pairs: Vec<(String, String)> = url
                    .query_pairs()
                    .map(|(k, v)| {
                        let secret = k.eq_ignore_ascii_case("password")
                            || k.eq_ignore_ascii_case("sslpassword");
                        (k.into_owned(), if secret { "redacted".into() } else { v.into_owned() })
                    })
                    .collect();
                url.query_pairs_mut().clear().extend_pairs(pairs);
            }
            url.to_string()
        }
        Err(_) => "[unparseable url]".to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// The provider's issuer exactly as configured, e.g.
    /// `https://dev-123.okta.com/oauth2/default`; discovery is fetched from
    /// `<issuer>/.well-known/openid-configuration` and the ID token `iss` must equal it
    /// character for character (so it is kept as a string: a URL type would add a `/`).
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret<String>,
    pub client_auth_method: ClientAuthMethod,
    /// Scopes requested on every login (`openid` is always included).
    pub scopes: Vec<String>,
    /// Timeout for each HTTP call to the provider.
    pub timeout: Duration,
    /// Clock skew tolerated when checking `exp`/`iat` of provider tokens.
    pub clock_skew: Duration,
    /// Largest response body read from the provider (discovery, JWKS, token, userinfo).
    pub max_response_bytes: usize,
    /// How often the discovery document is re-read.
    pub discovery_interval: Duration,
    /// The JWKS is fetched again when its `Cache-Control` lifetime runs out, but never sooner
    /// than this after the last fetch (an unknown `kid` from the token endpoint still
    /// refetches at once).
    pub jwks_min_refresh_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
}

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub ttl: Duration,
    /// The `aud` of authgate's JWTs; services verifying them must expect this value.
    pub audience: String,
    pub algorithm: SigningAlgorithm,
    /// A PKCS#8 PEM private key to sign with. When unset, keys are generated and stored
    /// (encrypted) in the database, shared by every replica.
    pub key_file: Option<PathBuf>,
    /// A new key is generated when the newest is this old (database keys only).
    pub key_rotation_interval: Duration,
    /// A new key is published this long before it starts signing, so every replica and every
    /// JWKS cache (max-age 5 min) has it first.
    pub key_publish_ahead: Duration,
    /// How often each replica re-reads the key set.
    pub key_reload_interval: Duration,
    /// How long after its `exp` (and before its `nbf`) a token is still accepted: the clock
    /// difference tolerated between replicas. The same on every path that checks a token.
    pub leeway: Duration,
    /// Most groups carried into a token (and kept in a session's profile); a user with more is
    /// refused at sign-in with a message saying so.
    pub max_groups: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlgorithm {
    Es256,
    EdDsa,
    Rs256,
}

impl SigningAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
            Self::Rs256 => "RS256",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ES256" => Some(Self::Es256),
            "EdDSA" => Some(Self::EdDsa),
            "RS256" => Some(Self::Rs256),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The 32-byte key-encryption key. Where it came from is kept for logs.
#[derive(Clone)]
pub struct EncryptionKey {
    pub key: Secret<[u8; 32]>,
    /// `Some(path)` when the key was generated into this file on first start (SQLite only).
    pub generated_at: Option<PathBuf>,
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey([redacted])")
    }
}

/// One configuration problem, naming the setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub setting: &'static str,
    pub message: String,
}

/// Every problem found in the configuration; start-up stops and prints them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration:")?;
        for p in &self.problems {
            write!(f, "\n  - {} (env {}): {}", p.setting, env_name(p.setting), p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn one(setting: &'static str, message: impl Into<String>) -> Self {
        Self { problems: vec![ConfigProblem { setting, message: message.into() }] }
    }
}

/// Every setting's file key and whether it is a list. The README's configuration table documents
/// each one.
pub const SETTINGS: &[(&str, Kind)] = &[
    ("listen_addr", Kind::Scalar),
    ("public_url", Kind::Scalar),
    ("database_url", Kind::Scalar),
    ("sqlite_path", Kind::Scalar),
    ("issuer_url", Kind::Scalar),
    ("client_id", Kind::Scalar),
    ("client_secret", Kind::Scalar),
    ("client_secret_file", Kind::Scalar),
    ("client_auth_method", Kind::Scalar),
    ("scopes", Kind::List),
    ("provider_timeout", Kind::Scalar),
    ("clock_skew", Kind::Scalar),
    ("provider_discovery_interval", Kind::Scalar),
    ("provider_jwks_min_refresh_interval", Kind::Scalar),
    ("redirect_uris", Kind::List),
    ("http_callback_url", Kind::Scalar),
    ("post_login_redirect_urls", Kind::List),
    ("cors_allowed_origins", Kind::List),
    ("token_ttl", Kind::Scalar),
    ("token_audience", Kind::Scalar),
    ("token_leeway", Kind::Scalar),
    ("signing_algorithm", Kind::Scalar),
    ("signing_key_file", Kind::Scalar),
    ("attempt_ttl", Kind::Scalar),
    ("session_ttl", Kind::Scalar),
    ("session_max_age", Kind::Scalar),
    ("session_idle_timeout", Kind::Scalar),
    ("encryption_key", Kind::Scalar),
    ("encryption_key_file", Kind::Scalar),
    ("log_format", Kind::Scalar),
    ("health_check_interval", Kind::Scalar),
    ("database_max_connections", Kind::Scalar),
    ("post_logout_redirect_uris", Kind::List),
    ("allowed_groups", Kind::List),
    ("otlp_endpoint", Kind::Scalar),
    ("allowed_email_domains", Kind::List),
    ("identity_header_prefix", Kind::Scalar),
    ("refresh_at_provider", Kind::Scalar),
    ("refresh_cookie", Kind::Scalar),
    ("refresh_grace", Kind::Scalar),
    ("provider_refresh_min_interval", Kind::Scalar),
    ("development_mode", Kind::Scalar),
    ("csrf_all_methods", Kind::Scalar),
    ("revocation_sync_interval", Kind::Scalar),
    ("key_rotation_interval", Kind::Scalar),
    ("key_publish_ahead", Kind::Scalar),
    ("key_reload_interval", Kind::Scalar),
    ("max_token_groups", Kind::Scalar),
    ("provider_max_response_bytes", Kind::Scalar),
    ("internal_listen_addr", Kind::Scalar),
    ("internal_realtime_priority", Kind::Scalar),
    ("max_connections", Kind::Scalar),
    ("internal_max_connections", Kind::Scalar),
    ("max_connections_per_ip", Kind::Scalar),
    ("internal_max_connections_per_ip", Kind::Scalar),
    ("max_header_bytes", Kind::Scalar),
    ("internal_max_header_bytes", Kind::Scalar),
    ("http2_max_concurrent_streams", Kind::Scalar),
    ("internal_http2_max_concurrent_streams", Kind::Scalar),
    ("header_read_timeout", Kind::Scalar),
    ("idle_timeout", Kind::Scalar),
    ("request_timeout", Kind::Scalar),
    ("http2_keepalive_interval", Kind::Scalar),
    ("http2_keepalive_timeout", Kind::Scalar),
    ("shutdown_timeout", Kind::Scalar),
    ("shutdown_grace", Kind::Scalar),
    ("max_connection_age", Kind::Scalar),
    ("max_message_bytes", Kind::Scalar),
    ("ext_authz_max_message_bytes", Kind::Scalar),
    ("max_body_bytes", Kind::Scalar),
    ("max_concurrent_logins", Kind::Scalar),
    ("max_concurrent_checks", Kind::Scalar),
    ("login_rate_per_client", Kind::Scalar),
    ("login_burst_per_client", Kind::Scalar),
    ("max_pending_attempts_per_client", Kind::Scalar),
    ("max_pending_attempts", Kind::Scalar),
    ("trusted_proxies", Kind::List),
    ("tls_cert_file", Kind::Scalar),
    ("tls_key_file", Kind::Scalar),
    ("tls_client_ca_file", Kind::Scalar),
    ("tls_client_auth", Kind::Scalar),
    ("tls_client_allowed_names", Kind::List),
    ("internal_tls_cert_file", Kind::Scalar),
    ("internal_tls_key_file", Kind::Scalar),
    ("internal_tls_client_ca_file", Kind::Scalar),
    ("internal_tls_client_auth", Kind::Scalar),
    ("internal_tls_client_allowed_names", Kind::List),
    ("tls_handshake_timeout", Kind::Scalar),
    ("tls_max_handshakes", Kind::Scalar),
    ("tls_reload_interval", Kind::Scalar),
];

/// Where `authgate healthcheck` asks, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub addr: SocketAddr,
    /// The listener speaks TLS.
    pub tls: Option<ProbeTls>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTls {
    /// The certificate and key the probe presents, when the listener asks for one.
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

/// What a command needs from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Everything (`serve`, `check-config`).
    Everything,
    /// The database, the encryption key and the token settings (`migrate`, `keys`): no provider.
    Database,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Scalar,
    List,
}

/// The environment variable for a setting: `AUTHGATE_` + upper-case key.
pub fn env_name(setting: &str) -> String {
    format!("AUTHGATE_{}", setting.to_ascii_uppercase())
}

/// The cookie binding a server-side login attempt to the browser.
pub const LOGIN_COOKIE: &str = "authgate_login";
/// The browser session cookie of the server-side flow.
pub const SESSION_COOKIE: &str = "authgate_session";
/// The refresh cookie of cookie mode (`__Host-authgate_refresh` over https).
pub const REFRESH_COOKIE: &str = "authgate_refresh";

impl Config {
    /// Cookies get `Secure` and the `__Host-` prefix when authgate is served over https.
    pub fn secure_cookies(&self) -> bool {
        self.public_url.scheme() == "https"
    }

    /// A cookie's name: over https with the `__Host-` prefix (Secure, no Domain, Path=/, so no
    /// sibling subdomain can set or overwrite it).
    pub fn cookie_name(&self, base: &str) -> String {
        if self.secure_cookies() { format!("__Host-{base}") } else { base.to_string() }
    }

    /// `Set-Cookie` for the refresh cookie of cookie mode; `None` deletes it. HttpOnly (no
    /// script reads it), SameSite=Strict (only pages of authgate's own site send it), Secure
    /// and `__Host-` over https.
    pub fn refresh_cookie(&self, handle: Option<&str>, max_age_secs: i64) -> String {
        let name = self.cookie_name(REFRESH_COOKIE);
        let secure = if self.secure_cookies() { "; Secure" } else { "" };
        let (value, max_age) = handle.map_or(("", 0), |h| (h, max_age_secs.max(0)));
        format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
    }

    /// Loads the configuration from an optional TOML file and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_for(file, Needs::Everything)
    }

    /// [`Self::load`] for a command that needs only part of the settings.
    pub fn load_for(file: Option<&Path>, needs: Needs) -> Result<Self, ConfigError> {
        let text = match file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                ConfigError::one("config", format!("cannot read {}: {e}", path.display()))
            })?),
            None => None,
        };
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::from_sources_for(text.as_deref(), &env, needs)
    }

    /// What a local health check should ask: the internal listener when there is one
    /// (readiness lives there), else the public one; an unspecified address (`0.0.0.0`, `::`)
    /// is asked on loopback. Reads only the listen and TLS file settings.
    pub fn probe_address(file: Option<&Path>) -> Result<Probe, ConfigError> {
        let mut raw = Raw::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::one("config", format!("cannot read {}: {e}", path.display()))
            })?;
            read_file(&text, &mut raw)?;
        }
        let keys = [
            "listen_addr",
            "internal_listen_addr",
            "tls_cert_file",
            "tls_key_file",
            "tls_client_ca_file",
            "internal_tls_cert_file",
            "internal_tls_key_file",
            "internal_tls_client_ca_file",
        ];
        for key in keys {
            if let Ok(value) = std::env::var(env_name(key)) {
                raw.scalars.insert(key, value);
            }
        }
        let (key, text, prefix) =
            match (raw.scalar("internal_listen_addr"), raw.scalar("listen_addr")) {
                (Some(internal), _) => ("internal_listen_addr", internal, "internal_"),
                (None, Some(public)) => ("listen_addr", public, ""),
                (None, None) => ("listen_addr", "127.0.0.1:8080", ""),
            };
        let mut addr: SocketAddr = text.trim().parse().map_err(|_| {
            ConfigError::one(key, format!("`{text}` is not an address like 127.0.0.1:8080"))
        })?;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let setting = |name: &str| raw.scalar(&format!("{prefix}{name}")).map(PathBuf::from);
        let tls = match (setting("tls_cert_file"), setting("tls_key_file")) {
            (Some(cert), Some(key)) => Some(ProbeTls {
                // With client certificates asked for, the probe presents the listener's own.
                client_identity: setting("tls_client_ca_file").map(|_| (cert, key)),
            }),
            _ => None,
        };
        Ok(Probe { addr, tls })
    }

    /// Builds the configuration from TOML text (if any) and an environment map. Env wins.
    pub fn from_sources(
        file: Option<&str>,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        Self::from_sources_for(file, env, Needs::Everything)
    }

    /// [`Self::from_sources`] for a command that needs only part of the settings: with
    /// [`Needs::Database`], the provider settings may be absent (placeholders stand in; the
    /// command never reaches the provider).
    pub fn from_sources_for(
        file: Option<&str>,
        env: &BTreeMap<String, String>,
        needs: Needs,
    ) -> Result<Self, ConfigError> {
        let mut raw = Raw::default();
        if let Some(text) = file {
            read_file(text, &mut raw)?;
        }
        if let Some(url) = env.get("DATABASE_URL") {
            raw.scalars.insert("database_url", url.clone());
        }
        for (key, kind) in SETTINGS {
            if let Some(value) = env.get(&env_name(key)) {
                match kind {
                    Kind::Scalar => {
                        raw.scalars.insert(key, value.clone());
                    }
                    Kind::List => {
                        let items = value
                            .split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect();
                        raw.lists.insert(key, items);
                    }
                }
            }
        }
        if needs == Needs::Database {
            for (key, placeholder) in [
                ("issuer_url", "https://provider.invalid"),
                ("client_id", "unused-by-this-command"),
                ("client_secret", "unused-by-this-command"),
            ] {
                if raw.scalar(key).is_none()
                    && !(key == "client_secret" && raw.scalar("client_secret_file").is_some())
                {
                    raw.scalars.insert(key, placeholder.to_string());
                }
            }
        }
        Parser::default().parse(&raw)
    }
}

mod parse;
#[cfg(test)]
mod tests;
mod transport;

pub use parse::parse_duration;
use parse::{Parser, Raw, read_file};
pub use transport::{
    AdmissionConfig, ClientAuth, ListenerLimits, TlsSettings, TransportConfig, parse_size,
};

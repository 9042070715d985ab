//! The transport's limits: what each listener accepts before it refuses, and how long it waits.
//! Every default is one an operator running authgate in front of the internet can keep; the
//! README's "Limits" table documents each setting and what it protects.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use super::parse::{Parser, Raw};

/// The limits of one listener (public or internal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Open connections; a new connection beyond this is closed at once.
    pub max_connections: usize,
    /// Open connections from one client address (IPv6 counted by /64); 0 means no such limit.
    pub max_connections_per_ip: usize,
    /// Largest request head: HTTP/1 start line and headers, HTTP/2 header list.
    pub max_header_bytes: usize,
    /// HTTP/2 streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub http2_max_concurrent_streams: u32,
}

/// Whether a TLS listener asks for client certificates (mutual TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    Off,
    /// A client may present a certificate; if it does, it must verify. Clients without one are
    /// served as anonymous.
    Optional,
    /// Every client must present a certificate that verifies against the CA bundle.
    Required,
}

/// TLS on one listener (see `server::tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA bundle client certificates are verified against.
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
    /// When not empty, only clients whose certificate names one of these (subject common name,
    /// or a DNS, URI or e-mail subject alternative name) are served; others are answered
    /// PERMISSION_DENIED / 403.
    pub client_allowed_names: Vec<String>,
}

/// The names of one listener's TLS settings.
struct TlsKeys {
    cert: &'static str,
    key: &'static str,
    ca: &'static str,
    auth: &'static str,
    names: &'static str,
}

const PUBLIC_TLS: TlsKeys = TlsKeys {
    cert: "tls_cert_file",
    key: "tls_key_file",
    ca: "tls_client_ca_file",
    auth: "tls_client_auth",
    names: "tls_client_allowed_names",
};
const INTERNAL_TLS: TlsKeys = TlsKeys {
    cert: "internal_tls_cert_file",
    key: "internal_tls_key_file",
    ca: "internal_tls_client_ca_file",
    auth: "internal_tls_client_auth",
    names: "internal_tls_client_allowed_names",
};

/// Listener, connection and request limits (see the `server` module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// When set, the fleet's checks (Envoy ext_authz, ValidateToken, GetJwks, `/auth/check`),
    /// `/metrics` and readiness are served only on this second listener.
    pub internal_listen_addr: Option<SocketAddr>,
    /// The internal listener's threads run at realtime priority (`SCHED_RR` 1, Linux), so that
    /// the fleet's checks preempt login work and the database on a saturated machine. Needs
    /// CAP_SYS_NICE or an `RLIMIT_RTPRIO` of at least 1; where refused, a warning and normal
    /// priority.
    pub internal_realtime_priority: bool,
    pub public: ListenerLimits,
    pub internal: ListenerLimits,
    /// A request head (or, on a new connection, its first bytes) must arrive within this.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY).
    pub idle_timeout: Duration,
    /// A unary request must complete within this; streaming RPCs are exempt.
    pub request_timeout: Duration,
    /// HTTP/2 PING interval, to find dead peers, and how long to wait for the answer.
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    /// How long a graceful stop waits for in-flight requests before closing connections.
    pub shutdown_timeout: Duration,
    /// On SIGTERM, how long authgate reports not ready while still serving everything, before
    /// it drains (so a load balancer or Kubernetes stops sending first).
    pub shutdown_grace: Duration,
    /// A connection older than this is asked to close once its requests are done (HTTP/2:
    /// GOAWAY), so clients reconnect and load spreads over new replicas. `None`: no limit.
    pub max_connection_age: Option<Duration>,
    /// Largest decoded gRPC message for AuthService, health and reflection.
    pub max_message_bytes: usize,
    /// Largest decoded Envoy CheckRequest (it carries the client's request headers).
    pub ext_authz_max_message_bytes: usize,
    /// Largest request body on the plain HTTP routes.
    pub max_body_bytes: usize,
    /// Admission control and rate limits.
    pub admission: AdmissionConfig,
    /// TLS on the public listener; `None`: plaintext.
    pub public_tls: Option<TlsSettings>,
    /// TLS on the internal listener; `None`: plaintext.
    pub internal_tls: Option<TlsSettings>,
    /// A TLS handshake must complete within this, else the connection is closed.
    pub tls_handshake_timeout: Duration,
    /// TLS handshakes in progress per listener; a connection beyond is closed at once.
    pub tls_max_handshakes: usize,
    /// How often the certificate, key and CA files are checked for changes.
    pub tls_reload_interval: Duration,
}

/// How much work authgate takes on, and from whom (see `server::admission`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Login-class requests (logins, sessions, the browser routes) in flight per listener;
    /// beyond, a request is refused at once with UNAVAILABLE / 503.
    pub max_concurrent_logins: usize,
    /// Check-class requests (ValidateToken, Envoy Check, /auth/check, keys, health, metrics) in
    /// flight per listener: a budget of their own, so a login flood cannot starve them.
    pub max_concurrent_checks: usize,
    /// Login starts and callbacks per second from one client address (0: no limit).
    pub login_rate_per_client: u32,
    /// How many of them may come at once before the rate applies.
    pub login_burst_per_client: u32,
    /// Login attempts one client address may have started within `attempt_ttl` (0: no limit).
    pub max_pending_attempts_per_client: u32,
    /// Login attempts pending on this replica (0: no limit).
    pub max_pending_attempts: u64,
    /// Proxies whose `X-Forwarded-For` / `x-envoy-external-address` name the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

impl Parser {
    pub(super) fn transport(&mut self, raw: &Raw) -> TransportConfig {
        let internal_listen_addr = raw.scalar("internal_listen_addr").and_then(|text| {
            text.parse::<SocketAddr>()
                .map_err(|_| {
                    self.problem(
                        "internal_listen_addr",
                        "must be an IP address and port, e.g. `0.0.0.0:8081`",
                    )
                })
                .ok()
        });
        let public = ListenerLimits {
            max_connections: self.count(raw, "max_connections", 10_000, 1, 1_000_000),
            max_connections_per_ip: self.count(raw, "max_connections_per_ip", 1_000, 0, 1_000_000),
            max_header_bytes: self.size(raw, "max_header_bytes", 16 * KIB, 4 * KIB, MIB),
            http2_max_concurrent_streams: self.count(
                raw,
                "http2_max_concurrent_streams",
                100,
                1,
                10_000,
            ) as u32,
        };
        let internal = ListenerLimits {
            max_connections: self.count(raw, "internal_max_connections", 10_000, 1, 1_000_000),
            max_connections_per_ip: self.count(
                raw,
                "internal_max_connections_per_ip",
                0,
                0,
                1_000_000,
            ),
            // nginx's auth_request forwards the client's whole request head (up to 4 × 8 KiB).
            max_header_bytes: self.size(raw, "internal_max_header_bytes", 64 * KIB, 4 * KIB, MIB),
            http2_max_concurrent_streams: self.count(
                raw,
                "internal_http2_max_concurrent_streams",
                1_000,
                1,
                10_000,
            ) as u32,
        };
        let internal_tls = self.listener_tls(raw, &INTERNAL_TLS);
        if internal_tls.is_some() && internal_listen_addr.is_none() {
            self.problem(
                INTERNAL_TLS.cert,
                "is for the internal listener, which is off: set internal_listen_addr too",
            );
        }
        let internal_realtime_priority = self.boolean(raw, "internal_realtime_priority", false);
        if internal_realtime_priority && internal_listen_addr.is_none() {
            self.problem(
                "internal_realtime_priority",
                "is for the internal listener's threads, and that listener is off: set internal_listen_addr too",
            );
        }
        TransportConfig {
            internal_listen_addr,
            internal_realtime_priority,
            public,
            internal,
            header_read_timeout: self.duration(raw, "header_read_timeout", Duration::from_secs(10)),
            idle_timeout: self.duration(raw, "idle_timeout", Duration::from_secs(90)),
            request_timeout: self.duration(raw, "request_timeout", Duration::from_secs(30)),
            http2_keepalive_interval: self.duration(
                raw,
                "http2_keepalive_interval",
                Duration::from_secs(30),
            ),
            http2_keepalive_timeout: self.duration(
                raw,
                "http2_keepalive_timeout",
                Duration::from_secs(20),
            ),
            shutdown_timeout: self.duration(raw, "shutdown_timeout", Duration::from_secs(20)),
            shutdown_grace: self.duration_up_to(
                raw,
                "shutdown_grace",
                Duration::ZERO,
                Duration::from_secs(300),
            ),
            max_connection_age: raw
                .scalar("max_connection_age")
                .map(|_| self.duration(raw, "max_connection_age", Duration::from_secs(300))),
            max_message_bytes: self.size(raw, "max_message_bytes", 16 * KIB, 4 * KIB, 64 * MIB),
            ext_authz_max_message_bytes: self.size(
                raw,
                "ext_authz_max_message_bytes",
                128 * KIB,
                4 * KIB,
                64 * MIB,
            ),
            max_body_bytes: self.size(raw, "max_body_bytes", 16 * KIB, KIB, 64 * MIB),
            admission: self.admission(raw),
            public_tls: self.listener_tls(raw, &PUBLIC_TLS),
            internal_tls,
            tls_handshake_timeout: self.duration(
                raw,
                "tls_handshake_timeout",
                Duration::from_secs(10),
            ),
            tls_max_handshakes: self.count(raw, "tls_max_handshakes", 256, 1, 100_000),
            tls_reload_interval: self.duration(raw, "tls_reload_interval", Duration::from_secs(10)),
        }
    }

    /// One listener's TLS settings: none at all (plaintext), or a certificate and key, with a
    /// CA bundle when client certificates are asked for.
    fn listener_tls(&mut self, raw: &Raw, keys: &TlsKeys) -> Option<TlsSettings> {
        let path =
            |key: &str| raw.scalar(key).map(str::trim).filter(|p| !p.is_empty()).map(PathBuf::from);
        let (cert, key, ca) = (path(keys.cert), path(keys.key), path(keys.ca));
        let names: Vec<String> = raw
            .lists
            .get(keys.names)
            .into_iter()
            .flatten()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        let auth = match raw.scalar(keys.auth).map(str::trim) {
            None => None,
            Some("none") => Some(ClientAuth::Off),
            Some("optional") => Some(ClientAuth::Optional),
            Some("required") => Some(ClientAuth::Required),
            Some(other) => {
                self.problem(
                    keys.auth,
                    format!("`{other}` is not one of none, optional, required"),
                );
                None
            }
        };
        let (cert_file, key_file) = match (cert, key) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) => {
                for (set, setting) in [
                    (ca.is_some(), keys.ca),
                    (auth.is_some_and(|a| a != ClientAuth::Off), keys.auth),
                    (!names.is_empty(), keys.names),
                ] {
                    if set {
                        self.problem(
                            setting,
                            format!(
                                "needs TLS on this listener: set {} and {}",
                                keys.cert, keys.key
                            ),
                        );
                    }
                }
                return None;
            }
            (Some(_), None) => {
                self.problem(keys.key, format!("must be set with {}", keys.cert));
                return None;
            }
            (None, Some(_)) => {
                self.problem(keys.cert, format!("must be set with {}", keys.key));
                return None;
            }
        };
        // A CA bundle alone means mutual TLS is required: the safe reading.
        let client_auth =
            auth.unwrap_or(if ca.is_some() { ClientAuth::Required } else { ClientAuth::Off });
        if client_auth != ClientAuth::Off && ca.is_none() {
            self.problem(
                keys.ca,
                format!(
                    "must name a CA bundle when {} is {}",
                    keys.auth,
                    if client_auth == ClientAuth::Required { "required" } else { "optional" }
                ),
            );
        }
        if client_auth == ClientAuth::Off && ca.is_some() {
            self.problem(
                keys.auth,
                format!(
                    "is none, so {} would not be used; remove it or ask for client certificates",
                    keys.ca
                ),
            );
        }
        if !names.is_empty() && client_auth == ClientAuth::Off {
            self.problem(
                keys.names,
                format!("needs client certificates: set {} and {}", keys.ca, keys.auth),
            );
        }
        Some(TlsSettings {
            cert_file,
            key_file,
            client_ca_file: ca,
            client_auth,
            client_allowed_names: names,
        })
    }

    fn admission(&mut self, raw: &Raw) -> AdmissionConfig {
        let mut trusted_proxies = Vec::new();
        for text in raw.lists.get("trusted_proxies").into_iter().flatten() {
            let parsed = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => trusted_proxies.push(net.trunc()),
                Err(_) => self.problem(
                    "trusted_proxies",
                    format!("`{text}` is not an IP address or network (e.g. `10.0.0.0/8`, `::1`)"),
                ),
            }
        }
        AdmissionConfig {
            max_concurrent_logins: self.count(raw, "max_concurrent_logins", 128, 1, 1_000_000),
            max_concurrent_checks: self.count(raw, "max_concurrent_checks", 1_024, 1, 1_000_000),
            login_rate_per_client: self.count(raw, "login_rate_per_client", 20, 0, 1_000_000)
                as u32,
            login_burst_per_client: self.count(raw, "login_burst_per_client", 100, 1, 1_000_000)
                as u32,
            max_pending_attempts_per_client: self.count(
                raw,
                "max_pending_attempts_per_client",
                10_000,
                0,
                100_000_000,
            ) as u32,
            max_pending_attempts: self.count(
                raw,
                "max_pending_attempts",
                1_000_000,
                0,
                1_000_000_000,
            ) as u64,
            trusted_proxies,
        }
    }

    /// A whole number in `min..=max`.
    pub(super) fn count(
        &mut self,
        raw: &Raw,
        key: &'static str,
        default: usize,
        min: usize,
        max: usize,
    ) -> usize {
        match raw.scalar(key) {
            None => default,
            Some(text) => match text.trim().parse::<usize>() {
                Ok(n) if (min..=max).contains(&n) => n,
                _ => {
                    self.problem(key, format!("must be a whole number from {min} to {max}"));
                    default
                }
            },
        }
    }

    /// A size in bytes (`16384`, `16KiB`, `4MiB`) in `min..=max`.
    pub(super) fn size(
        &mut self,
        raw: &Raw,
        key: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> usize {
        let value = match raw.scalar(key) {
            None => default,
            Some(text) => match parse_size(text) {
                Some(n) if (min..=max).contains(&n) => n,
                _ => {
                    self.problem(
                        key,
                        format!(
                            "`{text}` is not a size from {} to {}; write bytes, or e.g. `16KiB`, `4MiB`",
                            show_size(min),
                            show_size(max)
                        ),
                    );
                    default
                }
            },
        };
        usize::try_from(value).unwrap_or(usize::MAX)
    }
}

/// Parses `16384`, `16384B`, `16KiB`, `4MiB` (the unit is case-insensitive).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => KIB,
        "mib" => MIB,
        _ => return None,
    };
    n.checked_mul(factor)
}

fn show_size(n: u64) -> String {
    if n.is_multiple_of(MIB) {
        format!("{}MiB", n / MIB)
    } else if n.is_multiple_of(KIB) {
        format!("{}KiB", n / KIB)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units_only() {
        assert_eq!(parse_size("16384"), Some(16384));
        assert_eq!(parse_size("16KiB"), Some(16384));
        assert_eq!(parse_size(" 4 mib "), Some(4 * MIB));
        assert_eq!(parse_size("10B"), Some(10));
        assert_eq!(parse_size("16KB"), None, "KB is ambiguous (1000 or 1024)");
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("99999999999999999999KiB"), None);
        assert_eq!(show_size(16 * KIB), "16KiB");
    }
}

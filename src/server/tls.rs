//! TLS on a listener, with rustls and its `ring` provider:
//!
//! - the certificate chain and key come from PEM files; ALPN offers `h2` and `http/1.1`, so gRPC,
//!   grpc-web and browsers all work; TLS 1.2 and 1.3 with rustls' safe defaults;
//! - the files are read again every `tls_reload_interval`, and a change (a new file, or
//!   Kubernetes swapping the `..data` symlink of a mounted Secret) takes effect for new
//!   handshakes without a restart; open connections keep theirs. A new set that does not load
//!   (half-written, key and certificate that do not match, an unreadable CA bundle) keeps the
//!   old one and is logged with the reason, once per change;
//! - client certificates (mutual TLS) verified against a CA bundle, optional or required per
//!   listener; the verified identity ([`ClientIdentity`]) is put on every request of the
//!   connection, and an allow-list refuses the clients it does not name;
//! - a handshake must finish within `tls_handshake_timeout`, and at most `tls_max_handshakes` run
//!   at once per listener: a slow handshake is a slow connection too.

use std::{
    path::Path,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{RootCertStore, ServerConfig, crypto::CryptoProvider, server::WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    net::TcpStream,
    sync::{Semaphore, watch},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tracing::{debug, info, warn};
use x509_cert::{
    Certificate,
    der::{
        Decode, Tag, Tagged,
        asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef},
    },
    ext::pkix::{SubjectAltName, name::GeneralName},
};

use crate::config::{ClientAuth, TlsSettings};

/// Who is at the other end of a mutual TLS connection: taken from the verified client
/// certificate, and put on every request of the connection as an extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate's subject, RFC 4514 (`CN=checker,O=Example`).
    pub subject: String,
    /// Its subject common name, then its DNS, URI and e-mail subject alternative names: what
    /// `tls_client_allowed_names` is matched against.
    pub names: Vec<String>,
}

impl ClientIdentity {
    /// Reads a certificate the TLS layer has verified.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let cert = Certificate::from_der(der)
            .map_err(|e| format!("the certificate does not parse: {e}"))?;
        let tbs = &cert.tbs_certificate;
        let mut names = Vec::new();
        for rdn in tbs.subject.0.iter() {
            for atv in rdn.0.iter() {
                if atv.oid == x509_cert::der::oid::db::rfc4519::CN
                    && let Some(cn) = text_of(&atv.value)
                {
                    names.push(cn.to_string());
                }
            }
        }
        if let Ok(Some((_, SubjectAltName(sans)))) = tbs.get::<SubjectAltName>() {
            for san in sans {
                match san {
                    GeneralName::DnsName(n) | GeneralName::Rfc822Name(n) => {
                        names.push(n.to_string());
                    }
                    GeneralName::UniformResourceIdentifier(n) => names.push(n.to_string()),
                    _ => {}
                }
            }
        }
        Ok(Self { subject: tbs.subject.to_string(), names })
    }

    /// Whether any of this identity's names is in `allowed`.
    pub fn is_allowed(&self, allowed: &[String]) -> bool {
        self.names.iter().any(|n| allowed.iter().any(|a| a == n))
    }
}

fn text_of(value: &x509_cert::der::Any) -> Option<&str> {
    match value.tag() {
        Tag::Utf8String => Utf8StringRef::try_from(value).ok().map(|s| s.as_str()),
        Tag::PrintableString => PrintableStringRef::try_from(value).ok().map(|s| s.as_str()),
        Tag::Ia5String => Ia5StringRef::try_from(value).ok().map(|s| s.as_str()),
        _ => None,
    }
}

/// What a connection's client is allowed, decided once after its handshake.
#[derive(Debug, Clone, Default)]
pub struct ClientCheck {
    /// The verified client certificate's identity, if the client presented one.
    pub identity: Option<Arc<ClientIdentity>>,
    /// Set when the allow-list refuses this client: why, to answer every request with.
    pub refusal: Option<Arc<str>>,
}

/// Why a TLS handshake did not produce a connection (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// `tls_max_handshakes` were already in progress.
    AtCap,
    /// Not finished within `tls_handshake_timeout`.
    Timeout,
    /// The client spoke something else, offered nothing acceptable, or its certificate did not
    /// verify.
    Refused,
}

impl HandshakeFailure {
    pub fn label(self) -> &'static str {
        match self {
            Self::AtCap => "at_cap",
            Self::Timeout => "timeout",
            Self::Refused => "refused",
        }
    }
}

/// A loaded set of files: the server configuration, and its leaf certificate described
/// (subject, expiry) for the logs.
struct Loaded {
    config: Arc<ServerConfig>,
    summary: String,
}

/// One listener's TLS: the current server configuration, swapped whole when the files change.
pub struct TlsListener {
    listener: &'static str,
    settings: TlsSettings,
    loaded: RwLock<Arc<Loaded>>,
    /// The files (or why they could not be read) at the last load attempt: a change is looked
    /// for against these, so a bad new file is reported once, not at every check.
    seen: Mutex<Result<Vec<Vec<u8>>, String>>,
    handshakes: Arc<Semaphore>,
    handshake_timeout: Duration,
}

impl TlsListener {
    /// Loads the listener's files; an error says which file and what is wrong with it.
    pub fn new(
        listener: &'static str,
        settings: TlsSettings,
        handshake_timeout: Duration,
        max_handshakes: usize,
    ) -> Result<Arc<Self>, String> {
        let files = read_files(&settings)?;
        let loaded = build(&settings, &files)?;
        debug!(listener, certificate = %loaded.summary, client_auth = ?settings.client_auth, "TLS files loaded");
        Ok(Arc::new(Self {
            listener,
            settings,
            loaded: RwLock::new(Arc::new(loaded)),
            seen: Mutex::new(Ok(files)),
            handshakes: Arc::new(Semaphore::new(max_handshakes)),
            handshake_timeout,
        }))
    }

    /// The certificate in use: `CN=… (expires …)`.
    pub fn summary(&self) -> String {
        self.current().summary.clone()
    }

    fn current(&self) -> Arc<Loaded> {
        Arc::clone(&self.loaded.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reads the files again and, if they changed, loads them: `None` when nothing changed,
    /// else whether the new set took effect (the old one stays when it did not).
    pub fn reload_if_changed(&self) -> Option<Result<(), String>> {
        // A missing or unreadable file is a change too, reported once per distinct problem.
        let files = read_files(&self.settings);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == files {
                return None;
            }
            seen.clone_from(&files);
        }
        let outcome = files.and_then(|files| build(&self.settings, &files)).map(|loaded| {
            let summary = loaded.summary.clone();
            *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
            summary
        });
        let listener = self.listener;
        match &outcome {
            Ok(summary) => {
                crate::metrics::inc(
                    "authgate_tls_reloads_total",
                    &[("listener", listener), ("result", "loaded")],
                );
                info!(listener, certificate = %summary, "TLS files changed: new handshakes use them");
            }
            Err(reason) => {
                crate::metrics::inc(
                    "authgate_tls_reloads_total",
                    &[("listener", listener), ("result", "refused")],
                );
                warn!(listener, reason = %reason, "TLS files changed but do not load: the previous certificate stays in use");
            }
        }
        Some(outcome.map(|_| ()))
    }

    /// Checks the files every `interval` until `shutdown` turns true.
    pub async fn watch(self: Arc<Self>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                () = tokio::time::sleep(interval) => {}
            }
            let this = Arc::clone(&self);
            // File reads and certificate parsing: off the async threads.
            let _ = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
        }
    }

    /// The TLS handshake of an accepted connection, bounded in time and in number; then what
    /// its client may do.
    pub async fn handshake(
        &self,
        stream: TcpStream,
    ) -> Result<(TlsStream<TcpStream>, ClientCheck), HandshakeFailure> {
        let Ok(_permit) = Arc::clone(&self.handshakes).try_acquire_owned() else {
            return Err(HandshakeFailure::AtCap);
        };
        let acceptor = TlsAcceptor::from(Arc::clone(&self.current().config));
        let tls = match tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream)).await
        {
            Err(_) => return Err(HandshakeFailure::Timeout),
            Ok(Err(e)) => {
                debug!(listener = self.listener, error = %e, "TLS handshake failed");
                return Err(HandshakeFailure::Refused);
            }
            Ok(Ok(tls)) => tls,
        };
        let check = self.check(tls.get_ref().1.peer_certificates().and_then(|c| c.first()));
        Ok((tls, check))
    }

    /// The client's identity, and whether the allow-list lets it in.
    fn check(&self, leaf: Option<&CertificateDer<'_>>) -> ClientCheck {
        let identity = match leaf.map(|der| ClientIdentity::from_der(der)) {
            None => None,
            Some(Ok(identity)) => Some(Arc::new(identity)),
            Some(Err(e)) => {
                return ClientCheck {
                    identity: None,
                    refusal: Some(format!("the client certificate cannot be read: {e}").into()),
                };
            }
        };
        let allowed = &self.settings.client_allowed_names;
        let refusal = if allowed.is_empty() {
            None
        } else {
            match &identity {
                Some(id) if id.is_allowed(allowed) => None,
                Some(id) => Some(
                    format!(
                        "the client certificate ({}; names: {}) is not in this listener's tls_client_allowed_names",
                        id.subject,
                        id.names.join(", ")
                    )
                    .into(),
                ),
                None => Some(
                    "this listener serves only clients with a certificate named in tls_client_allowed_names; none was presented"
                        .into(),
                ),
            }
        };
        ClientCheck { identity, refusal }
    }
}

/// The certificate chain, the key and the CA bundle (when client certificates are asked for),
/// as bytes.
fn read_files(settings: &TlsSettings) -> Result<Vec<Vec<u8>>, String> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let mut files = vec![read(&settings.cert_file)?, read(&settings.key_file)?];
    if let Some(ca) = &settings.client_ca_file {
        files.push(read(ca)?);
    }
    Ok(files)
}

/// A rustls server configuration from the files' bytes, with a line describing the leaf
/// certificate for the log.
fn build(settings: &TlsSettings, files: &[Vec<u8>]) -> Result<Loaded, String> {
    let cert_path = settings.cert_file.display();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files[0])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{cert_path}: not a PEM certificate chain: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{cert_path}: holds no PEM CERTIFICATE block"));
    };
    let summary = describe(leaf).map_err(|e| format!("{cert_path}: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(&files[1]).map_err(|e| {
        format!(
            "{}: not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            settings.key_file.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match (settings.client_auth, &settings.client_ca_file) {
        (ClientAuth::Off, _) | (_, None) => builder.with_no_client_auth(),
        (mode, Some(ca_path)) => {
            let verifier = client_verifier(&files[2], ca_path, mode, provider)?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "{cert_path} and {}: the key does not go with the certificate, or is unusable: {e}",
            settings.key_file.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Loaded { config: Arc::new(config), summary })
}

fn client_verifier(
    pem: &[u8],
    path: &Path,
    mode: ClientAuth,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("{}: not a PEM CA bundle: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: a CA certificate is unusable: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: holds no CA certificate", path.display()));
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder =
        if mode == ClientAuth::Optional { builder.allow_unauthenticated() } else { builder };
    builder.build().map_err(|e| format!("{}: {e}", path.display()))
}

/// `CN=authgate.example (expires 2027-01-01T00:00:00Z)`; an expired certificate still loads
/// (clients decide), but says so.
fn describe(leaf: &CertificateDer<'_>) -> Result<String, String> {
    let cert =
        Certificate::from_der(leaf).map_err(|e| format!("the certificate does not parse: {e}"))?;
    let tbs = &cert.tbs_certificate;
    let not_after = std::time::UNIX_EPOCH + tbs.validity.not_after.to_unix_duration();
    let expired = if not_after < SystemTime::now() { ", EXPIRED" } else { "" };
    Ok(format!("{} (expires {}{expired})", tbs.subject, tbs.validity.not_after))
}

/// A TLS client for `authgate healthcheck`, which asks its own process on loopback: the
/// server's certificate is not checked (the answer is a status, nothing is sent that needs
/// protecting); `identity` (certificate and key files) is presented when the listener asks for
/// client certificates.
pub fn probe_client(
    identity: Option<&(std::path::PathBuf, std::path::PathBuf)>,
) -> Result<rustls::ClientConnection, String> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};

    #[derive(Debug)]
    struct AnyServer(Arc<CryptoProvider>);

    impl ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let read = |p: &std::path::PathBuf| {
                std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
            };
            let chain = CertificateDer::pem_slice_iter(&read(cert)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|e| format!("{}: {e}", key.display()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().map_err(|_| "name")?)
        .map_err(|e| e.to_string())
}

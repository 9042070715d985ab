//! A fake OpenID provider, for what a real provider cannot show: malicious or broken ID tokens,
//! error answers, slowness and outages, abrupt key rotation. It serves discovery, a JWKS (with
//! the `Cache-Control` the test sets), a token endpoint that answers whatever the test set up
//! — for codes and refresh tokens alike, always with a fresh refresh token — and userinfo
//! (or the error the test sets). It runs on its own runtime in its own thread,
//! so [`FakeProvider::stop`] really closes every connection.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::helpers::FaultProxy;
use axum::{
    Form, Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};

/// How the next ID token is signed.
#[derive(Clone, Copy, Debug)]
pub enum Signing {
    /// With the key published in the JWKS.
    Published,
    /// With a key the JWKS does not contain (but a plausible `kid`).
    Unpublished,
    /// `alg: none`, no signature.
    None,
    /// HS256 with the published public key's JSON as the HMAC secret (key-confusion attack).
    HmacWithPublicKey,
}

/// What the token endpoint answers next.
#[derive(Clone, Debug)]
pub enum TokenAnswer {
    /// An ID token with these claims, signed as given.
    IdToken { claims: Value, signing: Signing },
    /// Tokens without an ID token (what many providers answer to a refresh).
    NoIdToken,
    /// An OAuth error response.
    Error { status: u16, body: Value },
    /// A response that is not JSON at all (a proxy's error page).
    Garbage { status: u16 },
}

/// A recorded token request.
#[derive(Clone, Debug, Default)]
pub struct TokenRequest {
    pub form: BTreeMap<String, String>,
    pub authorization: Option<String>,
    /// The W3C trace context authgate sent along, if any.
    pub traceparent: Option<String>,
}

struct Key {
    encoding: EncodingKey,
    jwk: Jwk,
    kid: String,
}

struct FakeState {
    issuer: String,
    /// The signing key: the JWKS publishes it alone; `rotate_keys` replaces it.
    published: Mutex<Arc<Key>>,
    /// A key never published.
    unpublished: Key,
    jwks_fetches: std::sync::atomic::AtomicUsize,
    discovery_fetches: std::sync::atomic::AtomicUsize,
    /// The JWKS response's `Cache-Control`, when set.
    jwks_cache_control: Mutex<Option<String>>,
    answer: Mutex<Option<TokenAnswer>>,
    /// A fault every token request gets while it is set, before anything else.
    fault: Mutex<Option<TokenAnswer>>,
    /// ID tokens answered for particular codes, before `answer`.
    by_code: Mutex<BTreeMap<String, String>>,
    token_delay: Mutex<Option<Duration>>,
    last_token_request: Mutex<Option<TokenRequest>>,
    token_requests: Mutex<Vec<TokenRequest>>,
    userinfo: Mutex<Value>,
    userinfo_status: Mutex<u16>,
}

pub struct FakeProvider {
    pub issuer: String,
    state: Arc<FakeState>,
    stop: Option<std::sync::mpsc::Sender<()>>,
}

fn es256_key(kid: &str) -> Key {
    use p256::pkcs8::EncodePrivateKey;
    let secret = p256::ecdsa::SigningKey::from_bytes(&rand::random::<[u8; 32]>().into()).unwrap();
    let der = secret.to_pkcs8_der().unwrap();
    let encoding = EncodingKey::from_ec_der(der.as_bytes());
    let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.to_string());
    Key { encoding, jwk, kid: kid.to_string() }
}

impl FakeProvider {
    pub async fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        Self::serve(listener, issuer)
    }

    /// The fake behind a [`FaultProxy`] whose address is its issuer: `set_down(true)` makes the
    /// provider gone (connections cut, new ones closed at once), `set_down(false)` brings it back.
    pub async fn start_behind_proxy() -> (Self, FaultProxy) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = FaultProxy::start(listener.local_addr().unwrap()).await;
        let issuer = format!("http://{}", proxy.addr);
        (Self::serve(listener, issuer), proxy)
    }

    fn serve(listener: std::net::TcpListener, issuer: String) -> Self {
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(FakeState {
            issuer: issuer.clone(),
            published: Mutex::new(Arc::new(es256_key("fake-key-1"))),
            unpublished: es256_key("fake-key-unpublished"),
            jwks_fetches: Default::default(),
            discovery_fetches: Default::default(),
            jwks_cache_control: Mutex::new(None),
            answer: Mutex::new(None),
            fault: Mutex::new(None),
            by_code: Mutex::new(Default::default()),
            token_delay: Mutex::new(None),
            last_token_request: Mutex::new(None),
            token_requests: Mutex::new(Vec::new()),
            userinfo_status: Mutex::new(200),
            userinfo: Mutex::new(json!({
                "sub": "fake-user-1",
                "email": "mallory@example.com",
                "email_verified": true,
                "name": "Mallory Fake",
                "groups": ["fakers"],
            })),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/token", post(token))
            .route("/userinfo", get(userinfo))
            .with_state(Arc::clone(&state));
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let _ = axum::serve(listener, app).await;
            });
            let _ = stop_rx.recv();
            rt.shutdown_background();
        });
        Self { issuer, state, stop: Some(stop_tx) }
    }

    /// Stops serving: the port closes and every open connection is dropped.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    /// Claims of a valid ID token for the client, with this nonce.
    pub fn valid_claims(&self, client_id: &str, nonce: &str) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "iss": self.issuer,
            "sub": "fake-user-1",
            "aud": client_id,
            "exp": now + 300,
            "iat": now,
            "nonce": nonce,
            "email": "mallory@example.com",
            "email_verified": true,
            "name": "Mallory Fake",
            "groups": ["fakers"],
        })
    }

    /// The provider rotates its signing key abruptly: a new key signs from now on and the
    /// JWKS publishes only it (the old one is gone at once, the worst case).
    pub fn rotate_keys(&self) {
        let kid = format!("fake-key-{}", rand::random::<u32>());
        *self.state.published.lock().unwrap() = Arc::new(es256_key(&kid));
    }

    /// How many times the JWKS was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many times the discovery document was fetched.
    pub fn discovery_fetches(&self) -> usize {
        self.state.discovery_fetches.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The JWKS response carries this `Cache-Control` from now on.
    pub fn set_jwks_cache_control(&self, value: &str) {
        *self.state.jwks_cache_control.lock().unwrap() = Some(value.to_string());
    }

    /// A back-channel logout token with these claims, signed with the published key.
    pub fn logout_token(&self, claims: &Value) -> String {
        self.logout_token_typed(claims, Some("logout+jwt"))
    }

    /// [`Self::logout_token`] with this `typ` header (or none).
    pub fn logout_token_typed(&self, claims: &Value, typ: Option<&str>) -> String {
        let key = Arc::clone(&self.state.published.lock().unwrap());
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        header.typ = typ.map(String::from);
        jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
    }

    /// A logout token signed with a key the JWKS does not hold.
    pub fn logout_token_unpublished(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.state.unpublished.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.state.unpublished.encoding).unwrap()
    }

    /// Claims of a valid logout token for this client and provider session.
    pub fn logout_claims(&self, client_id: &str, sid: &str) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "iss": self.issuer,
            "aud": client_id,
            "iat": now,
            "exp": now + 120,
            "jti": format!("jti-{}", rand::random::<u64>()),
            "sid": sid,
            "sub": "fake-user-1",
            "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
        })
    }

    pub fn answer_next(&self, answer: TokenAnswer) {
        *self.state.answer.lock().unwrap() = Some(answer);
    }

    /// The token endpoint answers a valid ID token for this client and nonce from now on.
    pub fn answer_valid(&self, client_id: &str, nonce: &str) {
        self.answer_next(TokenAnswer::IdToken {
            claims: self.valid_claims(client_id, nonce),
            signing: Signing::Published,
        });
    }

    /// An ID token with these claims, signed with the current key.
    pub fn id_token(&self, claims: &Value) -> String {
        sign(&self.state, claims, Signing::Published)
    }

    /// A code exchange with this code is answered with this ID token.
    pub fn answer_for_code(&self, code: &str, id_token: String) {
        self.state.by_code.lock().unwrap().insert(code.to_string(), id_token);
    }

    /// Every token request gets this answer while it is set (`None` ends the fault).
    pub fn set_token_fault(&self, fault: Option<TokenAnswer>) {
        *self.state.fault.lock().unwrap() = fault;
    }

    pub fn delay_token(&self, delay: Duration) {
        *self.state.token_delay.lock().unwrap() = Some(delay);
    }

    pub fn last_token_request(&self) -> Option<TokenRequest> {
        self.state.last_token_request.lock().unwrap().clone()
    }

    /// Every token request so far with this `grant_type`.
    pub fn token_requests(&self, grant_type: &str) -> Vec<TokenRequest> {
        let all = self.state.token_requests.lock().unwrap();
        all.iter()
            .filter(|r| r.form.get("grant_type").map(String::as_str) == Some(grant_type))
            .cloned()
            .collect()
    }

    pub fn set_userinfo(&self, value: Value) {
        *self.state.userinfo.lock().unwrap() = value;
    }

    /// Userinfo answers this HTTP status (200: the set profile; else an error).
    pub fn set_userinfo_status(&self, status: u16) {
        *self.state.userinfo_status.lock().unwrap() = status;
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

async fn discovery(State(s): State<Arc<FakeState>>) -> Json<Value> {
    s.discovery_fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Json(json!({
        "issuer": s.issuer,
        "authorization_endpoint": format!("{}/authorize", s.issuer),
        "token_endpoint": format!("{}/token", s.issuer),
        "userinfo_endpoint": format!("{}/userinfo", s.issuer),
        "jwks_uri": format!("{}/jwks", s.issuer),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256", "HS256", "none"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
    }))
}

async fn jwks(State(s): State<Arc<FakeState>>) -> Response {
    s.jwks_fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let key = Arc::clone(&s.published.lock().unwrap());
    let mut response = Json(json!({ "keys": [key.jwk] })).into_response();
    if let Some(value) = s.jwks_cache_control.lock().unwrap().clone() {
        response.headers_mut().insert("cache-control", value.parse().unwrap());
    }
    response
}

fn sign(s: &FakeState, claims: &Value, signing: Signing) -> String {
    match signing {
        Signing::Published | Signing::Unpublished => {
            let published = Arc::clone(&s.published.lock().unwrap());
            let key =
                if matches!(signing, Signing::Published) { &published } else { &s.unpublished };
            let mut header = Header::new(Algorithm::ES256);
            // The unpublished key claims a kid that is not in the JWKS either.
            header.kid = Some(key.kid.clone());
            jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
        }
        Signing::None => {
            let header = B64.encode(json!({"alg": "none", "typ": "JWT"}).to_string());
            let payload = B64.encode(claims.to_string());
            format!("{header}.{payload}.")
        }
        Signing::HmacWithPublicKey => {
            let published = Arc::clone(&s.published.lock().unwrap());
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(published.kid.clone());
            let secret = serde_json::to_string(&published.jwk).unwrap();
            jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret.as_bytes()))
                .unwrap()
        }
    }
}

async fn token(
    State(s): State<Arc<FakeState>>,
    headers: HeaderMap,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    let request_code = form.get("code").cloned();
    let request = TokenRequest {
        form,
        authorization: headers.get("authorization").and_then(|v| v.to_str().ok()).map(String::from),
        traceparent: headers.get("traceparent").and_then(|v| v.to_str().ok()).map(String::from),
    };
    s.token_requests.lock().unwrap().push(request.clone());
    *s.last_token_request.lock().unwrap() = Some(request);
    let delay = *s.token_delay.lock().unwrap();
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let fault = s.fault.lock().unwrap().clone();
    let for_code = request_code.and_then(|code| s.by_code.lock().unwrap().remove(&code));
    if let (None, Some(id_token)) = (&fault, for_code) {
        return tokens(Some(id_token));
    }
    let answer = fault.or_else(|| s.answer.lock().unwrap().clone());
    match answer {
        Some(TokenAnswer::Error { status: 429, body }) => {
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], Json(body)).into_response()
        }
        Some(TokenAnswer::IdToken { claims, signing }) => tokens(Some(sign(&s, &claims, signing))),
        Some(TokenAnswer::NoIdToken) => tokens(None),
        Some(TokenAnswer::Error { status, body }) => {
            (StatusCode::from_u16(status).unwrap(), Json(body)).into_response()
        }
        Some(TokenAnswer::Garbage { status }) => {
            (StatusCode::from_u16(status).unwrap(), "<html>Bad gateway</html>").into_response()
        }
        None => (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant"}))).into_response(),
    }
}

/// A token response with fresh access and refresh tokens, and this ID token if any.
fn tokens(id_token: Option<String>) -> Response {
    let mut body = json!({
        "access_token": format!("fake-access-{}", rand::random::<u64>()),
        "refresh_token": format!("fake-refresh-{}", rand::random::<u64>()),
        "token_type": "Bearer",
        "expires_in": 3600,
    });
    if let Some(id_token) = id_token {
        body["id_token"] = json!(id_token);
    }
    Json(body).into_response()
}

async fn userinfo(State(s): State<Arc<FakeState>>) -> Response {
    let status = *s.userinfo_status.lock().unwrap();
    if status != 200 {
        return (StatusCode::from_u16(status).unwrap(), "userinfo is down").into_response();
    }
    Json(s.userinfo.lock().unwrap().clone()).into_response()
}

//! Envoy external authorization (`envoy.service.auth.v3.Authorization/Check`): Envoy asks
//! authgate about each request; a valid authgate token (bearer header) or browser session cookie
//! passes with the user's identity added as upstream headers, anything else is denied with 401
//! (or 403 for an access rule) and a `WWW-Authenticate: Bearer` header.

use std::{collections::HashMap, sync::Arc};

use tonic::{Request, Response, Status};

use crate::{
    auth::Authenticator,
    auth::csrf::{CSRF_HEADER, RequestSignals},
    config::SESSION_COOKIE,
    domain::bearer_token,
    error::ErrorKind,
    ext::{
        envoy::{
            config::core::v3::{
                HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
            },
            service::auth::v3::{
                CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
                authorization_server::Authorization, check_response::HttpResponse,
            },
            r#type::v3::{HttpStatus, StatusCode},
        },
        google::rpc,
    },
    http::{cookie_in, identity_headers},
};

/// `envoy.service.auth.v3.Authorization`.
pub struct ExtAuthz {
    auth: Arc<Authenticator>,
}

impl ExtAuthz {
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

fn header(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.into(), value: value.into(), raw_value: Vec::new() }),
        append_action: action.into(),
        keep_empty_value: false,
    }
}

/// The original request's headers from a CheckRequest, lower-cased: Envoy sends them either as
/// a map or, when configured, as a header map (a value may then be raw bytes). A header given
/// both ways takes the header map's value.
pub fn request_headers(request: CheckRequest) -> HashMap<String, String> {
    original_request(request).headers
}

/// What a CheckRequest says of the original request.
pub struct OriginalRequest {
    pub headers: HashMap<String, String>,
    pub method: Option<String>,
    pub host: Option<String>,
}

/// The original request's headers (see [`request_headers`]), method and host.
pub fn original_request(request: CheckRequest) -> OriginalRequest {
    let http = request.attributes.and_then(|a| a.request).and_then(|r| r.http);
    let mut headers: HashMap<String, String> = HashMap::new();
    let (mut method, mut host) = (None, None);
    if let Some(http) = http {
        method = Some(http.method.clone()).filter(|m| !m.is_empty());
        host = Some(http.host.clone()).filter(|h| !h.is_empty());
        headers.extend(http.headers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)));
        for h in http.header_map.map(|m| m.headers).unwrap_or_default() {
            let value = if h.value.is_empty() {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            } else {
                h.value
            };
            headers.insert(h.key.to_ascii_lowercase(), value);
        }
    }
    OriginalRequest { headers, method, host }
}

/// A denial Envoy passes on to the client as is: this HTTP status, a JSON body that says why,
/// and `WWW-Authenticate` (401) or `Retry-After` (429, 503) where they apply.
fn denied(
    grpc: tonic::Code,
    http: StatusCode,
    kind: &str,
    message: String,
    retry_after_secs: Option<u64>,
) -> CheckResponse {
    let mut denied = DeniedHttpResponse {
        status: Some(HttpStatus { code: http.into() }),
        headers: vec![header(
            "content-type",
            "application/json",
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        )],
        body: serde_json::json!({ "error": kind, "message": message }).to_string(),
    };
    if http == StatusCode::Unauthorized {
        denied.headers.push(header(
            "www-authenticate",
            "Bearer realm=\"authgate\"",
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ));
    }
    if let Some(secs) = retry_after_secs {
        denied.headers.push(header(
            "retry-after",
            &secs.to_string(),
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ));
    }
    CheckResponse {
        status: Some(rpc::Status { code: grpc as i32, message }),
        http_response: Some(HttpResponse::DeniedResponse(denied)),
    }
}

/// The answer to a Check that authgate sheds: a denial with 503 (not a gRPC error, which Envoy
/// would turn into a 403 for the client).
pub fn overloaded_response(message: String, retry_after_secs: u64) -> CheckResponse {
    denied(
        tonic::Code::Unavailable,
        StatusCode::ServiceUnavailable,
        "overloaded",
        message,
        Some(retry_after_secs),
    )
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    #[tracing::instrument(name = "ext_authz.Check", skip_all)]
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let original = original_request(request.into_inner());
        let headers = &original.headers;
        let text = |name: &str| headers.get(name).map(String::as_str);
        let signals = RequestSignals::from_headers(
            original.method.as_deref(),
            original.host.as_deref(),
            text,
            headers.contains_key(CSRF_HEADER),
        );
        let authorization = text("authorization");
        let answer = if authorization.is_some_and(|a| a.contains(',')) {
            // Envoy joins repeated headers with commas; a token never has one.
            denied(
                tonic::Code::InvalidArgument,
                StatusCode::BadRequest,
                "invalid_argument",
                "the request carries several Authorization headers; send exactly one".into(),
                None,
            )
        } else {
            self.check_with(authorization.and_then(bearer_token), &original, &signals).await
        };
        Ok(Response::new(answer))
    }
}

impl ExtAuthz {
    async fn check_with(
        &self,
        bearer: Option<&str>,
        original: &OriginalRequest,
        signals: &RequestSignals<'_>,
    ) -> CheckResponse {
        let config = self.auth.config();
        let cookie = original
            .headers
            .get("cookie")
            .and_then(|c| cookie_in(c, &config.cookie_name(SESSION_COOKIE)));
        match self.auth.check_access(bearer, cookie.as_deref(), signals).await {
            Ok(identity) => {
                let mut ok = OkHttpResponse::default();
                let set = identity_headers(&config.identity_header_prefix, &identity);
                for (name, value) in &set {
                    match value {
                        Some(v) => ok.headers.push(header(
                            name,
                            v,
                            HeaderAppendAction::OverwriteIfExistsOrAdd,
                        )),
                        // Never let a client-supplied identity header through.
                        None => ok.headers_to_remove.push(name.clone()),
                    }
                }
                // Nor any other header under the prefix the client made up.
                for name in original.headers.keys() {
                    if name.starts_with(&config.identity_header_prefix)
                        && !set.iter().any(|(n, _)| n == name)
                    {
                        ok.headers_to_remove.push(name.clone());
                    }
                }
                CheckResponse {
                    status: Some(rpc::Status { code: 0, message: String::new() }),
                    http_response: Some(HttpResponse::OkResponse(ok)),
                }
            }
            Err(e) => {
                let retry_after = e.retry_after_secs();
                let (kind, message) = e.classify();
                let (grpc, http) = match kind {
                    ErrorKind::PermissionDenied => {
                        (tonic::Code::PermissionDenied, StatusCode::Forbidden)
                    }
                    ErrorKind::Unavailable => {
                        (tonic::Code::Unavailable, StatusCode::ServiceUnavailable)
                    }
                    ErrorKind::ResourceExhausted => {
                        (tonic::Code::ResourceExhausted, StatusCode::TooManyRequests)
                    }
                    ErrorKind::Internal => (tonic::Code::Internal, StatusCode::InternalServerError),
                    _ => (tonic::Code::Unauthenticated, StatusCode::Unauthorized),
                };
                denied(grpc, http, kind.as_str(), message, retry_after)
            }
        }
    }
}

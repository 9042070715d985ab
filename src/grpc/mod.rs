//! The gRPC transport: converts protobuf messages to core calls and core errors to statuses.
//! Nothing else happens here.

mod ext_authz;
mod redact;
mod status;

pub use ext_authz::{ExtAuthz, overloaded_response as overloaded_check_response, request_headers};

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::{
    auth::{Authenticator, FinishLogin, StartLogin},
    config::REFRESH_COOKIE,
    domain::Profile,
    pb::{
        ExchangeCodeRequest, ExchangeCodeResponse, GetJwksRequest, GetJwksResponse,
        GetLoginUrlRequest, GetLoginUrlResponse, GetUserInfoRequest, GetUserInfoResponse,
        InvalidReason, JsonWebKey, LogoutRequest, LogoutResponse, RefreshSessionRequest,
        RefreshSessionResponse, TokenClaims, UserProfile, ValidateTokenRequest,
        ValidateTokenResponse, auth_service_server::AuthService,
    },
    secret::Secret,
    tokens::{Claims, TokenRejection},
};

pub use status::status_from;

/// `authgate.v1.AuthService`.
pub struct AuthGrpc {
    auth: Arc<Authenticator>,
}

impl AuthGrpc {
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

impl From<Profile> for UserProfile {
    fn from(p: Profile) -> Self {
        UserProfile {
            sub: p.sub,
            email: p.email.unwrap_or_default(),
            email_verified: p.email_verified.unwrap_or(false),
            name: p.name.unwrap_or_default(),
            given_name: p.given_name.unwrap_or_default(),
            family_name: p.family_name.unwrap_or_default(),
            preferred_username: p.preferred_username.unwrap_or_default(),
            groups: p.groups.unwrap_or_default(),
        }
    }
}

impl From<&Claims> for TokenClaims {
    fn from(c: &Claims) -> Self {
        TokenClaims {
            sub: c.sub.clone(),
            sid: c.sid.clone(),
            iss: c.iss.clone(),
            aud: c.aud.clone(),
            exp: c.exp,
            iat: c.iat,
            jti: c.jti.clone(),
            email: c.email.clone().unwrap_or_default(),
            email_verified: c.email_verified.unwrap_or(false),
            name: c.name.clone().unwrap_or_default(),
            preferred_username: c.preferred_username.clone().unwrap_or_default(),
            groups: c.groups.clone(),
        }
    }
}

fn reason(r: TokenRejection) -> InvalidReason {
    match r {
        TokenRejection::Malformed => InvalidReason::Malformed,
        TokenRejection::BadSignature => InvalidReason::BadSignature,
        TokenRejection::UnknownKey => InvalidReason::UnknownKey,
        TokenRejection::Expired => InvalidReason::Expired,
        TokenRejection::NotYetValid => InvalidReason::NotYetValid,
        TokenRejection::WrongIssuer => InvalidReason::WrongIssuer,
        TokenRejection::WrongAudience => InvalidReason::WrongAudience,
        TokenRejection::Revoked => InvalidReason::Revoked,
    }
}

/// The JWKS as protobuf keys (every member a string, empty when it does not apply).
pub fn jwks_message(jwks: &jsonwebtoken::jwk::JwkSet) -> GetJwksResponse {
    let keys = jwks
        .keys
        .iter()
        .map(|k| {
            let v = serde_json::to_value(k).unwrap_or_default();
            let field =
                |name: &str| v.get(name).and_then(|x| x.as_str()).unwrap_or_default().to_string();
            JsonWebKey {
                kty: field("kty"),
                kid: field("kid"),
                alg: field("alg"),
                r#use: field("use"),
                crv: field("crv"),
                x: field("x"),
                y: field("y"),
                n: field("n"),
                e: field("e"),
            }
        })
        .collect();
    GetJwksResponse { keys, jwks_json: serde_json::to_string(jwks).unwrap_or_default() }
}

fn non_empty(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

/// The token from `authorization: Bearer <token>` metadata.
pub fn bearer_token<T>(request: &Request<T>) -> Result<String, Status> {
    let missing = || {
        Status::unauthenticated(
            "missing `authorization: Bearer <access_token>` metadata; pass the access_token returned by ExchangeCode",
        )
    };
    let value = request.metadata().get("authorization").ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| missing())?;
    crate::domain::bearer_token(value).map(String::from).ok_or_else(|| {
        Status::unauthenticated("the authorization metadata must be `Bearer <access_token>`")
    })
}

/// Adds a `Set-Cookie` to a response's (or a status's) metadata.
fn set_cookie(metadata: &mut tonic::metadata::MetadataMap, cookie: &str) -> Result<(), Status> {
    let value = tonic::metadata::MetadataValue::try_from(cookie)
        .map_err(|_| Status::internal("a cookie value is not a valid header value"))?;
    metadata.append("set-cookie", value);
    Ok(())
}

#[tonic::async_trait]
impl AuthService for AuthGrpc {
    #[tracing::instrument(name = "GetLoginUrl", skip_all)]
    async fn get_login_url(
        &self,
        request: Request<GetLoginUrlRequest>,
    ) -> Result<Response<GetLoginUrlResponse>, Status> {
        let r = request.into_inner();
        let started = self
            .auth
            .start_login(StartLogin {
                redirect_uri: non_empty(r.redirect_uri),
                return_to: None,
                scopes: r.scopes,
                prompt: non_empty(r.prompt),
                login_hint: non_empty(r.login_hint),
            })
            .await
            .map_err(status_from)?;
        Ok(Response::new(GetLoginUrlResponse {
            login_url: started.login_url,
            state: started.state,
            expires_at: Some(prost_types::Timestamp { seconds: started.expires_at, nanos: 0 }),
            binding: started.binding.expose().clone(),
        }))
    }

    #[tracing::instrument(name = "ExchangeCode", skip_all)]
    async fn exchange_code(
        &self,
        request: Request<ExchangeCodeRequest>,
    ) -> Result<Response<ExchangeCodeResponse>, Status> {
        let r = request.into_inner();
        if r.refresh_cookie && !self.auth.config().refresh_cookie {
            return Err(Status::failed_precondition(
                "cookie mode is not enabled on this authgate: set `refresh_cookie = true` in its configuration, or leave `refresh_cookie` unset and keep the returned refresh_token in memory",
            ));
        }
        let done = self
            .auth
            .finish_login(FinishLogin {
                code: Secret::new(r.code),
                state: r.state,
                binding: Secret::new(r.binding),
                redirect_uri: non_empty(r.redirect_uri),
                issuer: non_empty(r.iss),
                browser_session: false,
            })
            .await
            .map_err(status_from)?;
        let cookie = r.refresh_cookie.then(|| {
            let max_age = done.session_expires_at - crate::tokens::now();
            self.auth.config().refresh_cookie(Some(done.refresh_token.expose()), max_age)
        });
        let mut response = Response::new(ExchangeCodeResponse {
            access_token: done.access_token.expose().clone(),
            token_type: "Bearer".into(),
            expires_in: done.expires_in,
            user: Some(done.profile.into()),
            session_id: done.session_id,
            refresh_token: if cookie.is_some() {
                String::new()
            } else {
                done.refresh_token.expose().clone()
            },
            session_expires_at: Some(prost_types::Timestamp {
                seconds: done.session_expires_at,
                nanos: 0,
            }),
        });
        if let Some(cookie) = cookie {
            set_cookie(response.metadata_mut(), &cookie)?;
        }
        Ok(response)
    }

    #[tracing::instrument(name = "GetUserInfo", skip_all)]
    async fn get_user_info(
        &self,
        request: Request<GetUserInfoRequest>,
    ) -> Result<Response<GetUserInfoResponse>, Status> {
        let token = bearer_token(&request)?;
        let profile =
            self.auth.user_info(&token, request.get_ref().refresh).await.map_err(status_from)?;
        Ok(Response::new(GetUserInfoResponse { user: Some(profile.into()) }))
    }

    // No span here: this is the hottest path, and an answer is never an error worth tracing.
    async fn validate_token(
        &self,
        request: Request<ValidateTokenRequest>,
    ) -> Result<Response<ValidateTokenResponse>, Status> {
        let verdict =
            self.auth.validate_token(&request.get_ref().token).await.map_err(status_from)?;
        Ok(Response::new(match verdict {
            Ok(claims) => ValidateTokenResponse {
                valid: true,
                reason: InvalidReason::Unspecified.into(),
                message: String::new(),
                claims: Some(claims.as_ref().into()),
            },
            Err(r) => ValidateTokenResponse {
                valid: false,
                reason: reason(r).into(),
                message: r.to_string(),
                claims: None,
            },
        }))
    }

    #[tracing::instrument(name = "GetJwks", skip_all)]
    async fn get_jwks(
        &self,
        _request: Request<GetJwksRequest>,
    ) -> Result<Response<GetJwksResponse>, Status> {
        Ok(Response::new(jwks_message(&self.auth.tokens().jwks())))
    }

    #[tracing::instrument(name = "RefreshSession", skip_all)]
    async fn refresh_session(
        &self,
        request: Request<RefreshSessionRequest>,
    ) -> Result<Response<RefreshSessionResponse>, Status> {
        let config = self.auth.config();
        let headers = request.metadata().clone().into_headers();
        let given = request.into_inner().refresh_token;
        // Cookie mode: no handle in the request, the refresh cookie instead, from a page that
        // passes the cross-site rule.
        let from_cookie = given.is_empty() && config.refresh_cookie;
        let handle = if from_cookie {
            if !headers.contains_key(crate::auth::csrf::CSRF_HEADER) {
                return Err(Status::permission_denied(
                    "refresh_token is empty, so the refresh cookie is used (cookie mode), and then the request must carry the `x-csrf` header (any value), which a cross-site form cannot send; services pass the refresh_token instead",
                ));
            }
            let signals =
                crate::http::request_signals(&headers, Some("POST"), crate::http::host(&headers));
            self.auth.check_cross_site(&signals).map_err(status_from)?;
            crate::http::cookie(&headers, &config.cookie_name(REFRESH_COOKIE))
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    Status::unauthenticated(
                        "no refresh_token and no refresh cookie: sign in again (cookie mode: ExchangeCode with refresh_cookie set, over grpc-web with credentials: include)",
                    )
                })?
        } else {
            given
        };
        let done = match self.auth.refresh_session(&Secret::new(handle), from_cookie).await {
            Ok(done) => done,
            Err(e) => {
                let mut status = status_from(e);
                // A cookie that can no longer refresh is cleared.
                if from_cookie && status.code() == tonic::Code::Unauthenticated {
                    set_cookie(status.metadata_mut(), &config.refresh_cookie(None, 0))?;
                }
                return Err(status);
            }
        };
        let mut response = Response::new(RefreshSessionResponse {
            access_token: done.access_token.expose().clone(),
            token_type: "Bearer".into(),
            expires_in: done.claims.exp - done.claims.iat,
            refresh_token: if from_cookie {
                String::new()
            } else {
                done.refresh_token.expose().clone()
            },
            user: Some(done.profile.into()),
        });
        if from_cookie {
            let max_age = config.session_max_age.as_secs() as i64;
            let cookie = config.refresh_cookie(Some(done.refresh_token.expose()), max_age);
            set_cookie(response.metadata_mut(), &cookie)?;
        }
        Ok(response)
    }

    #[tracing::instrument(name = "Logout", skip_all)]
    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        let token = bearer_token(&request)?;
        let r = request.into_inner();
        let url = self
            .auth
            .logout(&token, non_empty(r.post_logout_redirect_uri), non_empty(r.state))
            .await
            .map_err(status_from)?;
        let mut response = Response::new(LogoutResponse {
            end_session_url: url.map(String::from).unwrap_or_default(),
        });
        if self.auth.config().refresh_cookie {
            set_cookie(response.metadata_mut(), &self.auth.config().refresh_cookie(None, 0))?;
        }
        Ok(response)
    }
}

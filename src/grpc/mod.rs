//! The gRPC transport: converts protobuf messages to core calls and core errors to statuses.
//! Nothing else happens here.

mod redact;
mod status;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::{
    auth::{Authenticator, FinishLogin, StartLogin},
    domain::Profile,
    pb::{
        ExchangeCodeRequest, ExchangeCodeResponse, GetLoginUrlRequest, GetLoginUrlResponse,
        GetUserInfoRequest, GetUserInfoResponse, UserProfile, auth_service_server::AuthService,
    },
    secret::Secret,
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
    let value = request
        .metadata()
        .get("authorization")
        .ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| missing())?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim().to_string())
        }
        _ => Err(Status::unauthenticated(
            "the authorization metadata must be `Bearer <access_token>`",
        )),
    }
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
            expires_at: Some(prost_types::Timestamp {
                seconds: started.expires_at,
                nanos: 0,
            }),
            binding: started.binding.expose().clone(),
        }))
    }

    #[tracing::instrument(name = "ExchangeCode", skip_all)]
    async fn exchange_code(
        &self,
        request: Request<ExchangeCodeRequest>,
    ) -> Result<Response<ExchangeCodeResponse>, Status> {
        let r = request.into_inner();
        let done = self
            .auth
            .finish_login(FinishLogin {
                code: Secret::new(r.code),
                state: r.state,
                binding: Secret::new(r.binding),
                redirect_uri: non_empty(r.redirect_uri),
                browser_session: false,
            })
            .await
            .map_err(status_from)?;
        Ok(Response::new(ExchangeCodeResponse {
            access_token: done.access_token.expose().clone(),
            token_type: "Bearer".into(),
            expires_in: done.expires_in,
            user: Some(done.profile.into()),
            session_id: done.session_id,
        }))
    }

    #[tracing::instrument(name = "GetUserInfo", skip_all)]
    async fn get_user_info(
        &self,
        request: Request<GetUserInfoRequest>,
    ) -> Result<Response<GetUserInfoResponse>, Status> {
        let token = bearer_token(&request)?;
        let profile = self
            .auth
            .user_info(&token, request.get_ref().refresh)
            .await
            .map_err(status_from)?;
        Ok(Response::new(GetUserInfoResponse {
            user: Some(profile.into()),
        }))
    }
}

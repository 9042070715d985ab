//! A Rust service asking authgate about a token (tonic): ValidateToken says whether it is valid
//! right now — signature, issuer, audience, expiry, and whether its session was revoked — and,
//! when it is, GetUserInfo reads the user's profile with the token as bearer credentials.
//!
//!     cargo run --example validate_token -- http://127.0.0.1:8080 "$TOKEN"
//!
//! Exit status: 0 valid, 1 not valid (the reason is printed), 2 authgate did not answer. The
//! stubs are this crate's (`authgate::pb`); a service of its own generates them from
//! `proto/authgate/v1/auth.proto` with tonic-prost-build.
use std::{process::ExitCode, time::Duration};

use authgate::pb::{
    GetUserInfoRequest, InvalidReason, ValidateTokenRequest, auth_service_client::AuthServiceClient,
};
use tonic::transport::Endpoint;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, token] = args.as_slice() else {
        eprintln!("usage: validate_token AUTHGATE_URL TOKEN");
        return ExitCode::from(2);
    };
    match run(url, token).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            // Fail closed: a service that cannot ask must refuse the request.
            eprintln!("authgate did not answer: {err}");
            ExitCode::from(2)
        }
    }
}

async fn run(url: &str, token: &str) -> Result<bool, Box<dyn std::error::Error>> {
    // One channel for the life of a service: it reconnects by itself and multiplexes calls.
    let channel = Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let mut authgate = AuthServiceClient::new(channel);

    let verdict = authgate
        .validate_token(ValidateTokenRequest { token: token.to_string() })
        .await?
        .into_inner();
    let Some(claims) = verdict.claims.filter(|_| verdict.valid) else {
        let reason = InvalidReason::try_from(verdict.reason).unwrap_or_default();
        println!("not valid: {} ({})", verdict.message, reason.as_str_name());
        return Ok(false);
    };
    println!("valid: sub={} sid={} email={}", claims.sub, claims.sid, claims.email);
    println!("groups: {}", claims.groups.join(", "));
    println!("expires: {} (unix seconds)", claims.exp);

    // Calls on the user's behalf carry the token as `authorization: Bearer` metadata.
    let mut request = tonic::Request::new(GetUserInfoRequest { refresh: false });
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    let user = authgate.get_user_info(request).await?.into_inner().user.unwrap_or_default();
    println!("profile: {} <{}>", user.name, user.email);
    Ok(true)
}

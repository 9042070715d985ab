//! Hand-written `Debug` for the messages that carry secrets (their derived `Debug` is switched
//! off in `build.rs`), so a stray `{:?}` can never log a code, binding or token.

use std::fmt;

use crate::pb::{
    ExchangeCodeRequest, ExchangeCodeResponse, GetLoginUrlResponse, LogoutResponse,
    RefreshSessionRequest, RefreshSessionResponse, ValidateTokenRequest,
};

const REDACTED: &str = "[redacted]";

impl fmt::Debug for GetLoginUrlResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetLoginUrlResponse")
            .field("login_url", &REDACTED)
            .field("state", &REDACTED)
            .field("expires_at", &self.expires_at)
            .field("binding", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for ExchangeCodeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeCodeRequest")
            .field("code", &REDACTED)
            .field("state", &REDACTED)
            .field("binding", &REDACTED)
            .field("redirect_uri", &self.redirect_uri)
            .field("iss", &self.iss)
            .field("refresh_cookie", &self.refresh_cookie)
            .finish()
    }
}

impl fmt::Debug for ExchangeCodeResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeCodeResponse")
            .field("access_token", &REDACTED)
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("user", &self.user)
            .field("session_id", &self.session_id)
            .field("refresh_token", &REDACTED)
            .field("session_expires_at", &self.session_expires_at)
            .finish()
    }
}

impl fmt::Debug for ValidateTokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidateTokenRequest").field("token", &REDACTED).finish()
    }
}

impl fmt::Debug for RefreshSessionRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshSessionRequest").field("refresh_token", &REDACTED).finish()
    }
}

impl fmt::Debug for RefreshSessionResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshSessionResponse")
            .field("access_token", &REDACTED)
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &REDACTED)
            .field("user", &self.user)
            .finish()
    }
}

impl fmt::Debug for LogoutResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL carries the provider's ID token as id_token_hint.
        f.debug_struct("LogoutResponse").field("end_session_url", &REDACTED).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_appear_in_debug_output() {
        let req = ExchangeCodeRequest {
            code: "the-code".into(),
            state: "the-state".into(),
            binding: "the-binding".into(),
            redirect_uri: "http://localhost/cb".into(),
            iss: String::new(),
            refresh_cookie: false,
        };
        let text = format!("{req:?}");
        assert!(
            !text.contains("the-code")
                && !text.contains("the-state")
                && !text.contains("the-binding")
        );
        let resp = ExchangeCodeResponse { access_token: "eyJ.secret".into(), ..Default::default() };
        assert!(!format!("{resp:?}").contains("eyJ.secret"));
        let login = GetLoginUrlResponse { binding: "b1nd".into(), ..Default::default() };
        assert!(!format!("{login:?}").contains("b1nd"));
    }
}

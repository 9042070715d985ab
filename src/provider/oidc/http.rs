//! The HTTP client every provider call goes through: no redirects (SSRF), a timeout on every
//! call, and a cap on response bodies (`provider_max_response_bytes`) — a provider, or whatever
//! answers in its place, cannot make authgate buffer an unbounded discovery document, JWKS,
//! token or userinfo response. A response over the cap fails the call, which the caller sees
//! as `UNAVAILABLE` ("the identity provider could not be reached: ... larger than ...").

use std::{future::Future, pin::Pin, time::Duration};

use openidconnect::{AsyncHttpClient, HttpClientError, HttpRequest, HttpResponse};

use crate::{config::ProviderConfig, provider::ProviderError};

type Error = HttpClientError<reqwest::Error>;

#[derive(Clone)]
pub(super) struct ProviderHttp {
    client: reqwest::Client,
    max_body: usize,
}

impl ProviderHttp {
    pub(super) fn new(config: &ProviderConfig) -> Result<Self, ProviderError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("authgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ProviderError::NotReady(format!("cannot build HTTP client: {e}")))?;
        Ok(Self { client, max_body: config.max_response_bytes })
    }

    /// The client itself, for calls whose body authgate never reads (revocation, probes).
    pub(super) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, Error> {
        let mut request: reqwest::Request = request.try_into().map_err(Box::new)?;
        crate::telemetry::inject_current(request.headers_mut());
        let mut response = self.client.execute(request).await.map_err(Box::new)?;
        // A busy or failing provider is unavailable, whatever its body says: an OAuth error in a
        // 429 or 5xx answer (`invalid_grant` from a gateway, say) must never end a session or
        // be taken for a refused code. The caller gets `UNAVAILABLE` and retries.
        let status = response.status();
        if status == http::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= 32 && v.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
                .map(|v| format!("; it asks to retry after {v}"))
                .unwrap_or_default();
            return Err(HttpClientError::Other(format!(
                "the provider answered HTTP {status}{retry_after}"
            )));
        }
        let too_large = || {
            HttpClientError::Other(format!(
                "the response body is larger than provider_max_response_bytes ({} bytes)",
                self.max_body
            ))
        };
        if response.content_length().is_some_and(|n| n > self.max_body as u64) {
            return Err(too_large());
        }
        let mut builder =
            http::Response::builder().status(response.status()).version(response.version());
        for (name, value) in response.headers() {
            builder = builder.header(name, value);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(Box::new)? {
            if body.len() + chunk.len() > self.max_body {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        builder.body(body).map_err(HttpClientError::Http)
    }
}

impl<'c> AsyncHttpClient<'c> for ProviderHttp {
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Error>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

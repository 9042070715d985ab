//! Micro-benchmarks (criterion) of the CPU work on the hot paths, without I/O:
//! minting and verifying authgate's tokens (ES256, EdDSA; uncached and cached), the same with
//! `jsonwebtoken` for comparison (the reason signing moved to `ring` on pre-parsed keys), and
//! building a login URL (the CPU part of GetLoginUrl: four random handles, two hashes, the URL).
//!
//!   cargo bench --bench micro            # full run
//!   cargo bench --bench micro -- --test  # each benchmark once (CI)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{hint::black_box, sync::Arc};

use authgate::{
    config::{ClientAuthMethod, ProviderConfig, SigningAlgorithm},
    crypto::{random_handle, sha256},
    domain::Profile,
    provider::{AuthorizationRequest, IdentityProvider, oidc::OidcProvider},
    secret::Secret,
    tokens::TokenIssuer,
};
use axum::{Json, Router, routing::get};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

fn profile() -> Profile {
    Profile {
        sub: "00u1alice".into(),
        email: Some("alice@example.com".into()),
        email_verified: Some(true),
        name: Some("Alice Anderson".into()),
        preferred_username: Some("alice@example.com".into()),
        groups: Some(vec!["Everyone".into(), "admins".into()]),
        ..Default::default()
    }
}

fn tokens(c: &mut Criterion) {
    for alg in [SigningAlgorithm::Es256, SigningAlgorithm::EdDsa] {
        let issuer =
            TokenIssuer::ephemeral("https://auth.example.com", "authgate", 900, alg).unwrap();
        let name = alg.as_str();
        c.bench_function(&format!("mint {name}"), |b| {
            b.iter(|| {
                issuer.mint(black_box("session-id"), black_box(&profile()), i64::MAX).unwrap()
            })
        });
        let (token, _) = issuer.mint("session-id", &profile(), i64::MAX).unwrap();
        c.bench_function(&format!("verify {name} (uncached)"), |b| {
            b.iter(|| issuer.verify(black_box(&token)).unwrap())
        });
        issuer.verify_cached(&token).unwrap();
        c.bench_function(&format!("verify {name} (cached, as ValidateToken)"), |b| {
            b.iter(|| issuer.verify_cached(black_box(&token)).unwrap())
        });
    }

    // The same ES256 work through jsonwebtoken, which parses the PKCS#8 key on every call.
    let der = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    let key = jsonwebtoken::EncodingKey::from_ec_der(der.as_ref());
    let jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256).unwrap();
    let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let claims = json!({"sub": "00u1alice", "aud": "authgate", "exp": 4_000_000_000_u64});
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    c.bench_function("jsonwebtoken mint ES256 (comparison)", |b| {
        b.iter(|| jsonwebtoken::encode(black_box(&header), black_box(&claims), &key).unwrap())
    });
    let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["authgate"]);
    c.bench_function("jsonwebtoken verify ES256 (comparison)", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<serde_json::Value>(black_box(&token), &decoding, &validation)
                .unwrap()
        })
    });
}

/// A provider discovered from a tiny in-process discovery document.
fn discovered_provider(rt: &tokio::runtime::Runtime) -> Arc<OidcProvider> {
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let doc = json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/v1/authorize"),
            "token_endpoint": format!("{issuer}/v1/token"),
            "jwks_uri": format!("{issuer}/v1/keys"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        });
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { Json(doc.clone()) }),
            )
            .route("/v1/keys", get(|| async { Json(json!({"keys": []})) }));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let provider = OidcProvider::new(ProviderConfig {
            issuer,
            client_id: "client".into(),
            client_secret: Secret::new("secret".into()),
            client_auth_method: ClientAuthMethod::ClientSecretBasic,
            scopes: vec!["openid".into(), "profile".into(), "email".into()],
            timeout: std::time::Duration::from_secs(5),
            clock_skew: std::time::Duration::from_secs(60),
            max_response_bytes: 256 * 1024,
            discovery_interval: std::time::Duration::from_secs(3600),
            jwks_min_refresh_interval: std::time::Duration::from_secs(60),
        })
        .unwrap();
        provider.discover().await.unwrap();
        provider
    })
}

fn login_url(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let provider = discovered_provider(&rt);
    c.bench_function("login URL (handles, hashes, authorization URL)", |b| {
        b.iter(|| {
            let (state, nonce, verifier, binding) =
                (random_handle(32), random_handle(32), random_handle(32), random_handle(32));
            let hashes = (sha256(state.as_bytes()), sha256(binding.as_bytes()));
            let url = provider
                .authorization_url(&AuthorizationRequest {
                    redirect_uri: "https://app.example.com/callback",
                    state: &state,
                    nonce: &nonce,
                    pkce_verifier: &verifier,
                    extra_scopes: &[],
                    prompt: None,
                    login_hint: None,
                })
                .unwrap();
            black_box((url, hashes))
        })
    });
}

criterion_group!(benches, tokens, login_url);
criterion_main!(benches);

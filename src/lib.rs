//! authgate: an OpenID Connect login service for single-page apps and microservices.
//!
//! A SPA asks authgate for a login URL, the user signs in at the provider (Okta or any OpenID
//! Connect provider), the SPA hands the returned code back, and authgate — which alone holds the
//! client secret and the provider's tokens — answers with its own short-lived signed JWT.
//!
//! # Layout
//! - [`config`]: typed configuration (file + `AUTHGATE_*` env), validated at start; secrets
//!   wrapped in [`secret::Secret`].
//! - [`domain`]: parse-only values (redirect URIs, handles) and the user [`domain::Profile`].
//! - [`provider`]: the identity-provider trait and the real OpenID Connect client
//!   ([`provider::oidc`]): discovery, JWKS, PKCE, code exchange, ID-token validation, userinfo.
//! - [`store`]: login attempts, sessions and signing keys on PostgreSQL or SQLite.
//! - [`tokens`]: authgate's own JWTs and the key ring that signs and verifies them.
//! - [`crypto`]: random handles, hashing, encryption at rest.
//! - [`auth`]: the use cases (start/finish login, user info, validate, refresh, logout,
//!   back-channel logout) — no transport types.
//! - [`revocation`]: the revoked-session set every replica keeps in memory and re-syncs.
//! - [`grpc`], [`http`]: the transports; convert, call [`auth`], map errors.
//! - [`health`]: readiness monitor behind gRPC health and `/readyz`.
//! - [`metrics`]: the Prometheus registry behind `/metrics`.
//! - [`server`]: the accept loop on hyper-util: connection caps, head and idle timeouts,
//!   HTTP/1 and HTTP/2 limits, and the request-level limits ([`server::layers`]).
//! - [`startup`]: wiring; `Application::run(listeners, shutdown)`.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod auth;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod health;
pub mod http;
pub mod metrics;
#[cfg(test)]
mod properties;
pub mod provider;
pub mod revocation;
pub mod secret;
pub mod server;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tokens;

/// Generated code for the vendored Envoy external-authorization API (`envoy.service.auth.v3`) and
/// what it refers to; the module tree mirrors the protobuf packages.
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
pub mod ext {
    pub mod envoy {
        pub mod service {
            pub mod auth {
                pub mod v3 {
                    tonic::include_proto!("envoy.service.auth.v3");
                }
            }
        }
        pub mod config {
            pub mod core {
                pub mod v3 {
                    tonic::include_proto!("envoy.config.core.v3");
                }
            }
        }
        pub mod r#type {
            pub mod v3 {
                tonic::include_proto!("envoy.r#type.v3");
            }
        }
    }
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
}

/// Generated protobuf and gRPC code for `authgate.v1`.
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod pb {
    tonic::include_proto!("authgate.v1");

    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("authgate_descriptor");
}

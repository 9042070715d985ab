//! authgate's integration tests: one test binary (one link on slow machines), driving the real
//! gRPC / grpc-web / HTTP API end to end against PostgreSQL (a fresh database per test), the
//! embedded SQLite store, and a real OpenID provider (`dev-provider/`, oidc-provider laid out like
//! Okta). A fake provider (`fake_provider`) is used only for what a real one cannot show:
//! malicious ID tokens, faults and timeouts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod fake_provider;
mod helpers;

mod admission;
mod clients;
mod container;
mod cookie_mode;
mod faults_under_load;
mod fleet;
mod gateway;
mod http_routes;
mod limits;
mod login_errors;
mod login_flow;
mod provider_faults;
mod refresh;
mod store;
mod tls;
mod transport;

//! Property tests (proptest, a bounded number of cases so CI stays fast): every parser that
//! sees client or operator input — authgate's JWS verifier, query strings and cookies, the
//! configuration with its durations and sizes, Envoy CheckRequests, forwarded client addresses,
//! `grpc-timeout` — meets arbitrary input without panicking and answers with a defined result.

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use proptest::prelude::*;

use crate::{
    config::{Config, SigningAlgorithm, parse_duration, parse_size},
    domain::Profile,
    tokens::TokenIssuer,
};

fn issuer(alg: SigningAlgorithm) -> TokenIssuer {
    TokenIssuer::ephemeral("https://authgate.example.com", "authgate", 900, alg).unwrap()
}

fn profile() -> Profile {
    Profile { sub: "00u1".into(), groups: Some(vec!["admins".into()]), ..Default::default() }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_is_not_a_token(token in "\\PC{0,300}") {
        let issuer = issuer(SigningAlgorithm::Es256);
        prop_assert!(issuer.verify(&token).is_err());
        prop_assert!(issuer.verify_cached(&token).is_err());
    }

    #[test]
    fn three_segments_of_anything_are_not_a_token(
        header in proptest::collection::vec(any::<u8>(), 0..200),
        payload in proptest::collection::vec(any::<u8>(), 0..400),
        signature in proptest::collection::vec(any::<u8>(), 0..96),
    ) {
        let token =
            format!("{}.{}.{}", B64.encode(header), B64.encode(payload), B64.encode(signature));
        prop_assert!(issuer(SigningAlgorithm::Es256).verify(&token).is_err());
    }

    #[test]
    fn real_claims_under_a_forged_header_are_refused(
        alg in prop_oneof![
            Just("none".to_string()),
            Just("HS256".to_string()),
            Just("ES256".to_string()),
            "[A-Za-z0-9]{0,10}"
        ],
        kid in proptest::option::of("[A-Za-z0-9_-]{0,50}"),
        signature in "[A-Za-z0-9_-]{0,90}",
    ) {
        let issuer = issuer(SigningAlgorithm::Es256);
        let (token, _) = issuer.mint("sid", &profile(), i64::MAX).unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let header = serde_json::json!({"alg": alg, "kid": kid}).to_string();
        let forged = format!("{}.{payload}.{signature}", B64.encode(header));
        prop_assert!(issuer.verify(&forged).is_err());
    }

    #[test]
    fn any_change_to_a_valid_token_is_refused(
        at in any::<prop::sample::Index>(),
        to in "[A-Za-z0-9_.-]",
    ) {
        let issuer = issuer(SigningAlgorithm::EdDsa);
        let (token, _) = issuer.mint("sid", &profile(), i64::MAX).unwrap();
        let i = at.index(token.len());
        let mut bytes = token.into_bytes();
        prop_assume!(bytes[i] != to.as_bytes()[0]);
        bytes[i] = to.as_bytes()[0];
        let changed = String::from_utf8(bytes).unwrap();
        prop_assert!(issuer.verify(&changed).is_err(), "{}", changed);
    }

    #[test]
    fn query_strings_parse_or_are_refused(raw in proptest::option::of("\\PC{0,200}")) {
        let _ = crate::http::query_params(raw.as_deref());
    }

    #[test]
    fn distinct_query_parameters_round_trip(
        params in proptest::collection::btree_map("\\PC{1,20}", "\\PC{0,40}", 0..8),
    ) {
        let encoded: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter())
            .finish();
        let parsed = crate::http::query_params(Some(&encoded)).unwrap();
        prop_assert_eq!(parsed, params);
    }

    #[test]
    fn cookies_are_found_by_exact_name_or_not_at_all(
        header in "\\PC{0,200}",
        name in "[A-Za-z0-9_-]{1,20}",
        value in "[A-Za-z0-9_-]{0,40}",
    ) {
        let _ = crate::http::cookie_in(&header, &name);
        let with = format!("{header}; {name}={value}");
        // The first cookie of that name wins; ours is found unless the noise had one.
        if !header.contains(&format!("{name}=")) {
            prop_assert_eq!(crate::http::cookie_in(&with, &name), Some(value));
        }
    }

    #[test]
    fn durations_and_sizes_parse_or_are_refused(text in "\\PC{0,30}") {
        let _ = parse_duration(&text);
        let _ = parse_size(&text);
    }

    #[test]
    fn durations_and_sizes_mean_what_they_say(n in 0u64..1_000_000, unit in 0usize..4) {
        let (suffix, factor) = [("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)][unit];
        prop_assert_eq!(
            parse_duration(&format!("{n}{suffix}")).map(|d| d.as_secs()),
            Some(n * factor)
        );
        let (suffix, factor) = [("", 1), ("B", 1), ("KiB", 1024), ("MiB", 1 << 20)][unit];
        prop_assert_eq!(parse_size(&format!("{n}{suffix}")), Some(n * factor));
    }

    #[test]
    fn any_setting_value_loads_or_names_its_problem(
        key in prop::sample::select(crate::config::SETTINGS.iter().map(|(k, _)| *k).collect::<Vec<_>>()),
        value in "\\PC{0,60}",
    ) {
        let mut env: BTreeMap<String, String> = [
            ("AUTHGATE_ISSUER_URL", "https://dev-123.okta.com/oauth2/default"),
            ("AUTHGATE_CLIENT_ID", "client"),
            ("AUTHGATE_CLIENT_SECRET", "s3cret-value"),
            ("AUTHGATE_ENCRYPTION_KEY", "RAw6QR+97MkqXp/w8lEawwb6N1oxUKv0pN/jB2KAvIg="),
            ("DATABASE_URL", "postgres://u:pw@127.0.0.1/db"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        // File paths would touch the disk; everything else is fair game.
        prop_assume!(!key.ends_with("_file") && key != "sqlite_path");
        env.insert(crate::config::env_name(key), value);
        if let Err(e) = Config::from_sources(None, &env) {
            prop_assert!(!e.problems.is_empty());
            prop_assert!(e.problems.iter().all(|p| !p.message.is_empty()));
        }
    }

    #[test]
    fn envoy_check_requests_of_any_shape_are_read_without_panicking(
        map in proptest::collection::hash_map("\\PC{0,20}", "\\PC{0,60}", 0..8),
        raw in proptest::collection::vec(("\\PC{0,20}", "\\PC{0,20}", proptest::collection::vec(any::<u8>(), 0..40)), 0..8),
        with_http in any::<bool>(),
    ) {
        use crate::ext::envoy::{
            config::core::v3::{HeaderMap, HeaderValue},
            service::auth::v3::{AttributeContext, CheckRequest, attribute_context::{HttpRequest, Request}},
        };
        let header_map = HeaderMap {
            headers: raw
                .into_iter()
                .map(|(key, value, raw_value)| HeaderValue { key, value, raw_value })
                .collect(),
        };
        let http = with_http.then(|| HttpRequest {
            headers: map,
            header_map: Some(header_map),
            ..Default::default()
        });
        let request =
            CheckRequest { attributes: Some(AttributeContext { request: Some(Request { http }) }) };
        let headers = crate::grpc::request_headers(request);
        prop_assert!(headers.keys().all(|k| *k == k.to_ascii_lowercase()));
        if let Some(value) = headers.get("authorization") {
            let _ = crate::domain::bearer_token(value);
        }
        if let Some(value) = headers.get("cookie") {
            let _ = crate::http::cookie_in(value, "authgate_session");
        }
    }

    #[test]
    fn the_client_address_is_the_peer_or_one_the_headers_name(
        forwarded in proptest::collection::vec("\\PC{0,40}", 0..4),
        envoy in proptest::option::of("\\PC{0,40}"),
        trusted_peer in any::<bool>(),
    ) {
        use axum::http::{HeaderMap, HeaderValue};
        let peer: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        let trusted: Vec<ipnet::IpNet> =
            if trusted_peer { vec!["10.0.0.0/8".parse().unwrap()] } else { Vec::new() };
        let mut headers = HeaderMap::new();
        let mut texts = Vec::new();
        for f in &forwarded {
            if let Ok(v) = HeaderValue::from_str(f) {
                headers.append("x-forwarded-for", v);
                texts.push(f.clone());
            }
        }
        if let Some(e) = &envoy
            && let Ok(v) = HeaderValue::from_str(e) {
                headers.insert("x-envoy-external-address", v);
                texts.push(e.clone());
            }
        let client = crate::server::admission::client_address(peer, &headers, &trusted);
        if !trusted_peer {
            prop_assert_eq!(client, peer);
        } else if client != peer {
            // Named by the headers (in some spelling: with a port, or IPv4-mapped).
            let bare = client.to_string();
            prop_assert!(texts.iter().any(|t| t.contains(&bare) || t.contains(&bare.replace("::ffff:", ""))));
        }
    }

    #[test]
    fn grpc_timeouts_parse_or_are_ignored(text in "[0-9A-Za-z]{0,12}") {
        if let Ok(value) = axum::http::HeaderValue::from_str(&text) {
            let _ = crate::server::layers::parse_grpc_timeout(&value);
        }
    }
}

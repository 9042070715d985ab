//! Configuration parsing tests.

use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const KEY: &str = "RAw6QR+97MkqXp/w8lEawwb6N1oxUKv0pN/jB2KAvIg=";

fn minimal() -> BTreeMap<String, String> {
    env(&[
        ("AUTHGATE_ISSUER_URL", "https://dev-123.okta.com/oauth2/default"),
        ("AUTHGATE_CLIENT_ID", "client"),
        ("AUTHGATE_CLIENT_SECRET", "s3cret-value"),
        ("AUTHGATE_REDIRECT_URIS", "http://localhost:5173/callback, https://app.example.com/cb"),
        ("AUTHGATE_ENCRYPTION_KEY", KEY),
        ("DATABASE_URL", "postgres://u:pw@127.0.0.1/db"),
    ])
}

/// The configuration from [`minimal`] plus `pairs`.
fn with(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut e = minimal();
    for (k, v) in pairs {
        e.insert((*k).into(), (*v).into());
    }
    Config::from_sources(None, &e)
}

#[test]
fn env_only_configuration_loads_with_defaults() {
    let config = Config::from_sources(None, &minimal()).unwrap();
    assert_eq!(config.redirect_uris.len(), 3, "the two configured plus the HTTP callback");
    assert_eq!(config.redirect_uris[0].as_str(), "http://localhost:5173/callback");
    assert_eq!(
        config.http_callback_url.as_str(),
        "http://127.0.0.1:8080/authorization-code/callback"
    );
    assert_eq!(config.post_login_redirect_urls, vec!["http://127.0.0.1:8080/"]);
    assert_eq!(config.tokens.ttl, Duration::from_secs(900));
    assert_eq!(config.attempt_ttl, Duration::from_secs(600));
    assert_eq!(config.provider.scopes, vec!["openid", "profile", "email"]);
    assert_eq!(config.tokens.algorithm, SigningAlgorithm::Es256);
    assert_eq!(config.public_url.as_str(), "http://127.0.0.1:8080/");
}

#[test]
fn env_wins_over_the_file() {
    let file = r#"
        token_ttl = "5m"
        client_id = "from-file"
        scopes = ["openid", "email"]
    "#;
    let mut e = minimal();
    e.insert("AUTHGATE_TOKEN_TTL".into(), "120".into());
    let config = Config::from_sources(Some(file), &e).unwrap();
    assert_eq!(config.tokens.ttl, Duration::from_secs(120));
    assert_eq!(config.provider.client_id, "client");
    assert_eq!(config.provider.scopes, vec!["openid", "email"]);
}

#[test]
fn problems_name_the_setting_and_env_variable() {
    let mut e = minimal();
    e.insert("AUTHGATE_ISSUER_URL".into(), "http://okta.example.com/oauth2/default".into());
    e.insert("AUTHGATE_TOKEN_TTL".into(), "soon".into());
    e.remove("AUTHGATE_CLIENT_ID");
    let err = Config::from_sources(None, &e).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("issuer_url (env AUTHGATE_ISSUER_URL): `http://okta.example.com/oauth2/default` must use https"), "{text}");
    assert!(text.contains("token_ttl"), "{text}");
    assert!(text.contains("client_id (env AUTHGATE_CLIENT_ID): is required"), "{text}");
}

#[test]
fn a_plain_http_public_url_off_localhost_is_refused_with_a_reason() {
    let mut e = minimal();
    e.insert("AUTHGATE_PUBLIC_URL".into(), "http://auth.example.com".into());
    let err = Config::from_sources(None, &e).unwrap_err();
    assert_eq!(err.problems[0].setting, "public_url", "{err}");
    assert!(err.to_string().contains("must use https"), "{err}");
}

#[test]
fn postgres_requires_an_explicit_encryption_key() {
    let mut e = minimal();
    e.remove("AUTHGATE_ENCRYPTION_KEY");
    let err = Config::from_sources(None, &e).unwrap_err();
    assert_eq!(err.problems[0].setting, "encryption_key");
}

#[test]
fn unknown_file_keys_are_refused() {
    let err = Config::from_sources(Some("client_secrt = 'x'"), &minimal()).unwrap_err();
    assert!(err.to_string().contains("unknown setting `client_secrt`"));
}

#[test]
fn secrets_never_show_in_debug_output() {
    let config = Config::from_sources(None, &minimal()).unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("s3cret-value"), "{debug}");
    assert!(!debug.contains(KEY), "{debug}");
    assert!(!debug.contains(":pw@"), "{debug}");
    for url in [
        "postgres://u:p%40ss-word@127.0.0.1/db",
        "postgres://u@127.0.0.1/db?sslmode=require&password=p%40ss-word",
        "postgresql://u@127.0.0.1/db?SSLPASSWORD=p%40ss-word",
    ] {
        let mut e = minimal();
        e.insert("DATABASE_URL".into(), url.into());
        let config = Config::from_sources(None, &e).unwrap();
        for shown in [format!("{config:?}"), config.database.describe()] {
            assert!(!shown.contains("p%40ss") && !shown.contains("p@ss"), "{url}: {shown}");
            assert!(shown.contains("redacted"), "{shown}");
        }
    }
}

#[test]
fn redirect_uris_and_origins_are_checked() {
    let mut e = minimal();
    e.insert("AUTHGATE_REDIRECT_URIS".into(), "not a url,http://x.example.com/cb#frag".into());
    e.insert("AUTHGATE_CORS_ALLOWED_ORIGINS".into(), "http://localhost:5173/".into());
    let err = Config::from_sources(None, &e).unwrap_err();
    let settings: Vec<_> = err.problems.iter().map(|p| p.setting).collect();
    assert_eq!(settings, vec!["redirect_uris", "redirect_uris", "cors_allowed_origins"]);
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
    assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
    assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86400)));
    assert_eq!(parse_duration("1w"), None);
    assert_eq!(parse_duration("-5"), None);
}

#[test]
fn session_lifetimes_and_the_token_leeway_are_settings() {
    let config = Config::from_sources(None, &minimal()).unwrap();
    assert_eq!(config.session_max_age, Duration::from_secs(24 * 3600));
    assert_eq!(config.session_idle_timeout, Duration::from_secs(8 * 3600));
    assert_eq!(config.tokens.leeway, Duration::from_secs(2));
    assert_eq!(config.provider.discovery_interval, Duration::from_secs(3600));
    assert_eq!(config.provider.jwks_min_refresh_interval, Duration::from_secs(60));

    let mut e = minimal();
    e.insert("AUTHGATE_SESSION_TTL".into(), "12h".into());
    e.insert("AUTHGATE_TOKEN_LEEWAY".into(), "0".into());
    let config = Config::from_sources(None, &e).unwrap();
    assert_eq!(config.session_max_age, Duration::from_secs(12 * 3600), "the older name");
    assert_eq!(config.tokens.leeway, Duration::ZERO, "no leeway at all is allowed");

    let mut e = minimal();
    e.insert("AUTHGATE_SESSION_TTL".into(), "12h".into());
    e.insert("AUTHGATE_SESSION_MAX_AGE".into(), "12h".into());
    e.insert("AUTHGATE_SESSION_IDLE_TIMEOUT".into(), "10m".into());
    e.insert("AUTHGATE_TOKEN_LEEWAY".into(), "5m".into());
    let err = Config::from_sources(None, &e).unwrap_err();
    let settings: Vec<_> = err.problems.iter().map(|p| p.setting).collect();
    assert_eq!(settings, vec!["token_leeway", "session_max_age", "session_idle_timeout"], "{err}");
    assert!(err.to_string().contains("longer than token_ttl"), "{err}");
}

#[test]
fn published_encryption_keys_are_refused_outside_development_mode() {
    for published in [
        "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=",
        "ZGVtby1vbmx5LWRlbW8tb25seS1kZW1vLW9ubHktZGU=",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ] {
        let mut e = minimal();
        e.insert("AUTHGATE_ENCRYPTION_KEY".into(), published.into());
        let err = Config::from_sources(None, &e).unwrap_err();
        assert_eq!(err.problems[0].setting, "encryption_key", "{err}");
        assert!(err.to_string().contains("development_mode"), "{err}");
        e.insert("AUTHGATE_DEVELOPMENT_MODE".into(), "true".into());
        assert!(Config::from_sources(None, &e).unwrap().development_mode, "{published}");
    }
}

#[test]
fn plain_http_issuers_are_accepted_on_localhost_names_only() {
    for (issuer, ok) in [
        ("http://localhost:9000/oauth2/default", true),
        ("http://provider.localhost:9000/oauth2/default", true),
        ("http://127.0.0.1:9000/oauth2/default", true),
        ("http://localhost.example.com/oauth2/default", false),
        ("http://provider.localhost.evil.com/oauth2/default", false),
    ] {
        let mut e = minimal();
        e.insert("AUTHGATE_ISSUER_URL".into(), issuer.into());
        assert_eq!(Config::from_sources(None, &e).is_ok(), ok, "{issuer}");
    }
}

#[test]
fn database_commands_need_no_provider_settings() {
    let mut e = minimal();
    for key in ["AUTHGATE_ISSUER_URL", "AUTHGATE_CLIENT_ID", "AUTHGATE_CLIENT_SECRET"] {
        e.remove(key);
    }
    assert!(Config::from_sources(None, &e).is_err(), "serve needs them");
    let config = Config::from_sources_for(None, &e, Needs::Database).unwrap();
    assert!(matches!(config.database, DatabaseConfig::Postgres(_)));
    e.remove("AUTHGATE_ENCRYPTION_KEY");
    let err = Config::from_sources_for(None, &e, Needs::Database).unwrap_err();
    assert_eq!(err.problems[0].setting, "encryption_key", "still needed with PostgreSQL");
}

#[test]
fn tls_settings_come_whole_or_are_refused_with_what_is_missing() {
    let config = with(&[]).unwrap();
    assert_eq!((config.transport.public_tls, config.transport.internal_tls), (None, None));
    assert_eq!(config.transport.tls_handshake_timeout, Duration::from_secs(10));

    // A CA bundle alone means client certificates are required.
    let config = with(&[
        ("AUTHGATE_TLS_CERT_FILE", "/tls/tls.crt"),
        ("AUTHGATE_TLS_KEY_FILE", "/tls/tls.key"),
        ("AUTHGATE_INTERNAL_LISTEN_ADDR", "0.0.0.0:8081"),
        ("AUTHGATE_INTERNAL_TLS_CERT_FILE", "/tls/tls.crt"),
        ("AUTHGATE_INTERNAL_TLS_KEY_FILE", "/tls/tls.key"),
        ("AUTHGATE_INTERNAL_TLS_CLIENT_CA_FILE", "/tls/ca.crt"),
        ("AUTHGATE_INTERNAL_TLS_CLIENT_ALLOWED_NAMES", "envoy.mesh, checker.fleet"),
    ])
    .unwrap();
    let public = config.transport.public_tls.unwrap();
    assert_eq!((public.client_auth, public.client_ca_file), (ClientAuth::Off, None));
    let internal = config.transport.internal_tls.unwrap();
    assert_eq!(internal.client_auth, ClientAuth::Required);
    assert_eq!(internal.client_allowed_names, vec!["envoy.mesh", "checker.fleet"]);

    for (pairs, setting, says) in [
        (vec![("AUTHGATE_TLS_CERT_FILE", "/c")], "tls_key_file", "must be set with tls_cert_file"),
        (vec![("AUTHGATE_TLS_CLIENT_CA_FILE", "/ca")], "tls_client_ca_file", "needs TLS"),
        (
            vec![
                ("AUTHGATE_TLS_CERT_FILE", "/c"),
                ("AUTHGATE_TLS_KEY_FILE", "/k"),
                ("AUTHGATE_TLS_CLIENT_AUTH", "optional"),
            ],
            "tls_client_ca_file",
            "must name a CA bundle",
        ),
        (
            vec![
                ("AUTHGATE_TLS_CERT_FILE", "/c"),
                ("AUTHGATE_TLS_KEY_FILE", "/k"),
                ("AUTHGATE_TLS_CLIENT_AUTH", "sometimes"),
            ],
            "tls_client_auth",
            "not one of none, optional, required",
        ),
        (
            vec![
                ("AUTHGATE_INTERNAL_TLS_CERT_FILE", "/c"),
                ("AUTHGATE_INTERNAL_TLS_KEY_FILE", "/k"),
            ],
            "internal_tls_cert_file",
            "set internal_listen_addr",
        ),
    ] {
        let err = with(&pairs).unwrap_err();
        assert!(
            err.problems.iter().any(|p| p.setting == setting && p.message.contains(says)),
            "{pairs:?}: {err}"
        );
    }
}

#[test]
fn realtime_priority_is_off_by_default_and_needs_the_internal_listener() {
    assert!(!with(&[]).unwrap().transport.internal_realtime_priority);
    let config = with(&[
        ("AUTHGATE_INTERNAL_LISTEN_ADDR", "0.0.0.0:8081"),
        ("AUTHGATE_INTERNAL_REALTIME_PRIORITY", "true"),
    ])
    .unwrap();
    assert!(config.transport.internal_realtime_priority);
    let err = with(&[("AUTHGATE_INTERNAL_REALTIME_PRIORITY", "true")]).unwrap_err();
    assert!(
        err.problems.iter().any(|p| p.setting == "internal_realtime_priority"
            && p.message.contains("set internal_listen_addr")),
        "{err}"
    );
    let err = with(&[
        ("AUTHGATE_INTERNAL_LISTEN_ADDR", "0.0.0.0:8081"),
        ("AUTHGATE_INTERNAL_REALTIME_PRIORITY", "yes"),
    ])
    .unwrap_err();
    assert!(err.to_string().contains("not true or false"), "{err}");
}

#[test]
fn cookie_mode_settings_and_the_refresh_cookie_attributes() {
    let config = Config::from_sources(None, &minimal()).unwrap();
    assert!(!config.refresh_cookie, "cookie mode is off unless allowed");
    assert_eq!(config.refresh_grace, Duration::from_secs(5));
    assert_eq!(config.provider_refresh_min_interval, Duration::from_secs(60));
    // Over plain http (local development): no Secure, no __Host- prefix.
    assert_eq!(
        config.refresh_cookie(Some("h1"), 60),
        "authgate_refresh=h1; Path=/; Max-Age=60; HttpOnly; SameSite=Strict"
    );
    let mut vars = minimal();
    vars.insert("AUTHGATE_PUBLIC_URL".into(), "https://auth.example.com".into());
    vars.insert("AUTHGATE_REFRESH_COOKIE".into(), "true".into());
    vars.insert("AUTHGATE_REFRESH_GRACE".into(), "0".into());
    let config = Config::from_sources(None, &vars).unwrap();
    assert!(config.refresh_cookie);
    assert!(config.refresh_grace.is_zero(), "0 turns the grace off");
    assert_eq!(
        config.refresh_cookie(Some("h1"), 60),
        "__Host-authgate_refresh=h1; Path=/; Max-Age=60; HttpOnly; SameSite=Strict; Secure"
    );
    assert_eq!(
        config.refresh_cookie(None, 60),
        "__Host-authgate_refresh=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict; Secure"
    );
    vars.insert("AUTHGATE_REFRESH_GRACE".into(), "5m".into());
    let err = Config::from_sources(None, &vars).unwrap_err().to_string();
    assert!(err.contains("refresh_grace"), "{err}");
}

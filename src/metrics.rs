//! Prometheus metrics, exposed at `GET /metrics` in the text exposition format (0.0.4).
//!
//! A small registry of counters and histograms keyed by name and labels; every series is a set of
//! atomics, so recording costs a read lock and a few atomic adds. Gauges that describe state
//! (pending login attempts, pool usage, readiness) are read at scrape time.

use std::{
    collections::HashMap,
    fmt::Write,
    sync::{
        Arc, OnceLock, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

/// Latency buckets in seconds (1 ms to 10 s).
const BUCKETS: [f64; 12] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Every metric authgate records: name, type, help.
const METRICS: &[(&str, &str, &str)] = &[
    (
        "authgate_logins_started_total",
        "counter",
        "Login attempts started (GetLoginUrl, /api/login, /authorization-code/login).",
    ),
    (
        "authgate_logins_completed_total",
        "counter",
        "Logins completed: a session was opened and a token minted.",
    ),
    ("authgate_logins_failed_total", "counter", "Logins that failed, by reason."),
    (
        "authgate_token_validations_total",
        "counter",
        "Token checks (ValidateToken and the gateway checks), by result.",
    ),
    (
        "authgate_access_checks_total",
        "counter",
        "Gateway checks (Envoy ext_authz, /auth/check), by result.",
    ),
    ("authgate_grpc_request_duration_seconds", "histogram", "gRPC request latency, by method."),
    (
        "authgate_grpc_requests_total",
        "counter",
        "gRPC requests, by method and status code (OK, INVALID_ARGUMENT, UNAVAILABLE, ...; the status of a unary error, which comes in the response headers).",
    ),
    (
        "authgate_http_request_duration_seconds",
        "histogram",
        "HTTP request latency, by route and status.",
    ),
    (
        "authgate_provider_request_duration_seconds",
        "histogram",
        "Calls to the identity provider, by endpoint.",
    ),
    (
        "authgate_provider_errors_total",
        "counter",
        "Failed calls to the identity provider, by endpoint.",
    ),
    (
        "authgate_connections_refused_total",
        "counter",
        "Connections closed at once because a cap was reached, by listener and cap.",
    ),
    (
        "authgate_connections_closed_total",
        "counter",
        "Connections closed by a timeout, by listener and reason (header_read_timeout, idle_timeout).",
    ),
    (
        "authgate_requests_refused_total",
        "counter",
        "Requests refused by admission control or a per-client limit, by listener and limit.",
    ),
    (
        "authgate_accept_errors_total",
        "counter",
        "Failed accepts (e.g. out of file descriptors), by listener; each one backs off.",
    ),
    (
        "authgate_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that did not complete, by listener and reason (at_cap, timeout, refused).",
    ),
    (
        "authgate_tls_reloads_total",
        "counter",
        "Changed TLS files, by listener and result (loaded, refused: the previous ones stay).",
    ),
];

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Series {
    count: AtomicU64,
    /// Histograms: cumulative counts per bucket, and the sum in microseconds.
    buckets: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
}

/// Series by metric name; each metric has few label sets, found by comparison without
/// allocating (recording happens on every request).
type SeriesList = Vec<(Labels, Arc<Series>)>;

#[derive(Default)]
struct Registry {
    series: RwLock<HashMap<&'static str, SeriesList>>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

fn series(name: &'static str, labels: &[(&'static str, &str)]) -> Arc<Series> {
    let same = |known: &Labels| {
        known.len() == labels.len()
            && known.iter().zip(labels).all(|((k1, v1), (k2, v2))| k1 == k2 && v1 == v2)
    };
    let reg = registry();
    if let Some(list) = reg.series.read().unwrap_or_else(|e| e.into_inner()).get(name)
        && let Some((_, s)) = list.iter().find(|(l, _)| same(l))
    {
        return Arc::clone(s);
    }
    let mut all = reg.series.write().unwrap_or_else(|e| e.into_inner());
    let list = all.entry(name).or_default();
    if let Some((_, s)) = list.iter().find(|(l, _)| same(l)) {
        return Arc::clone(s);
    }
    let s = Arc::new(Series::default());
    list.push((labels.iter().map(|(k, v)| (*k, (*v).to_string())).collect(), Arc::clone(&s)));
    s
}

/// Adds one to a counter.
pub fn inc(name: &'static str, labels: &[(&'static str, &str)]) {
    series(name, labels).count.fetch_add(1, Ordering::Relaxed);
}

/// Records one observation (seconds) in a histogram.
pub fn observe(name: &'static str, labels: &[(&'static str, &str)], seconds: f64) {
    let s = series(name, labels);
    s.count.fetch_add(1, Ordering::Relaxed);
    s.sum_micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    for (i, bound) in BUCKETS.iter().enumerate() {
        if seconds <= *bound {
            s.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Times a future into a histogram.
pub async fn timed<T>(
    name: &'static str,
    labels: &[(&'static str, &str)],
    fut: impl std::future::Future<Output = T>,
) -> T {
    let started = Instant::now();
    let out = fut.await;
    observe(name, labels, started.elapsed().as_secs_f64());
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn label_text(labels: &[(&'static str, String)], extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> =
        labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() { String::new() } else { format!("{{{}}}", parts.join(",")) }
}

/// A gauge value read at scrape time.
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// The exposition text: every recorded series plus the given gauges.
pub fn render(gauges: &[Gauge]) -> String {
    let mut out = String::new();
    let all = registry().series.read().unwrap_or_else(|e| e.into_inner());
    for (name, kind, help) in METRICS {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let mut mine: Vec<_> = all.get(name).map(|l| l.iter().collect()).unwrap_or_default();
        mine.sort_by(|a, b| a.0.cmp(&b.0));
        for (labels, s) in mine {
            if *kind == "histogram" {
                for (i, bound) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {}",
                        label_text(labels, Some(("le", bound.to_string()))),
                        s.buckets[i].load(Ordering::Relaxed)
                    );
                }
                let count = s.count.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {count}",
                    label_text(labels, Some(("le", "+Inf".into())))
                );
                let _ = writeln!(
                    out,
                    "{name}_sum{} {}",
                    label_text(labels, None),
                    s.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
                );
                let _ = writeln!(out, "{name}_count{} {count}", label_text(labels, None));
            } else {
                let _ = writeln!(
                    out,
                    "{name}{} {}",
                    label_text(labels, None),
                    s.count.load(Ordering::Relaxed)
                );
            }
        }
    }
    let mut seen = Vec::new();
    for g in gauges {
        if !seen.contains(&g.name) {
            let _ = writeln!(out, "# HELP {} {}", g.name, g.help);
            let _ = writeln!(out, "# TYPE {} gauge", g.name);
            seen.push(g.name);
        }
        let _ = writeln!(out, "{}{} {}", g.name, label_text(&g.labels, None), g.value);
    }
    out
}

/// The gRPC status code name (`OK`, `INVALID_ARGUMENT`, ...) of a `grpc-status` value.
pub fn grpc_code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("UNKNOWN")
}

/// The standard process metrics of the Prometheus client libraries (`process_*`), read from
/// `/proc/self` at scrape time: CPU seconds, resident and virtual memory, open and maximum file
/// descriptors, threads, start time. Nothing is written where `/proc` is not readable.
pub fn render_process(out: &mut String) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf only reads a system constant.
    let (ticks, page) = unsafe {
        (libc::sysconf(libc::_SC_CLK_TCK) as f64, libc::sysconf(libc::_SC_PAGESIZE) as f64)
    };
    let ticks = if ticks > 0.0 { ticks } else { 100.0 };
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok()))
        .unwrap_or(0.0);
    let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0) as f64;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct we pass.
    let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur as f64
    } else {
        0.0
    };
    let metrics: [(&str, &str, &str, f64); 7] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
            (field(14) + field(15)) / ticks,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            field(24) * page,
        ),
        ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", field(23)),
        ("process_open_fds", "gauge", "Open file descriptors.", open_fds),
        ("process_max_fds", "gauge", "The open-file limit (soft).", max_fds),
        ("process_threads", "gauge", "Operating system threads.", field(20)),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
            boot + field(22) / ticks,
        ),
    ];
    for (name, kind, help, value) in metrics {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_in_the_text_format() {
        inc("authgate_logins_failed_total", &[("reason", "unit_test")]);
        inc("authgate_logins_failed_total", &[("reason", "unit_test")]);
        observe("authgate_grpc_request_duration_seconds", &[("method", "/unit.Test/Call")], 0.003);
        let text =
            render(&[Gauge { name: "authgate_up", help: "Always 1.", labels: vec![], value: 1.0 }]);
        assert!(text.contains("# TYPE authgate_logins_failed_total counter"));
        assert!(text.contains("authgate_logins_failed_total{reason=\"unit_test\"} 2"), "{text}");
        assert!(text.contains(
            "authgate_grpc_request_duration_seconds_bucket{method=\"/unit.Test/Call\",le=\"0.001\"} 0"
        ));
        assert!(text.contains(
            "authgate_grpc_request_duration_seconds_bucket{method=\"/unit.Test/Call\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "authgate_grpc_request_duration_seconds_count{method=\"/unit.Test/Call\"} 1"
        ));
        assert!(text.contains("authgate_up 1"));
    }
}

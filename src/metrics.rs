//! Prometheus metrics, exposed at `GET /metrics` in the text exposition format (0.0.4), on the
//! ecosystem's `metrics` facade with `metrics-exporter-prometheus` as its recorder.
//!
//! Counters and histograms go through the facade's global recorder, installed on first use (so a
//! library that records with `metrics` shows up too); histogram samples are folded into their
//! buckets every 5 s and at each scrape. Gauges that describe one server's state (pending login
//! attempts, pool usage, readiness, ...) and the process metrics are read at scrape time into a
//! recorder of that scrape's own, so two servers in one process (the tests) never mix their state.

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::OnceLock,
    time::{Duration, Instant},
};

use metrics::Label;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds (1 ms to 10 s).
const BUCKETS: [f64; 12] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// How often histogram samples are folded into their buckets when nobody scrapes (they queue
/// until then).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Histogram,
}
use Kind::{Counter, Histogram};

/// Every counter and histogram authgate records: name, type, help.
const METRICS: &[(&str, Kind, &str)] = &[
    (
        "authgate_logins_started_total",
        Counter,
        "Login attempts started (GetLoginUrl, /api/login, /authorization-code/login).",
    ),
    (
        "authgate_logins_completed_total",
        Counter,
        "Logins completed: a session was opened and a token minted.",
    ),
    ("authgate_logins_failed_total", Counter, "Logins that failed, by reason."),
    (
        "authgate_session_write_retries_total",
        Counter,
        "Writes of a new session retried after a transient database failure (the attempt was already consumed).",
    ),
    (
        "authgate_token_validations_total",
        Counter,
        "Token checks (ValidateToken and the gateway checks), by result.",
    ),
    (
        "authgate_access_checks_total",
        Counter,
        "Gateway checks (Envoy ext_authz, /auth/check), by result.",
    ),
    ("authgate_grpc_request_duration_seconds", Histogram, "gRPC request latency, by method."),
    (
        "authgate_grpc_requests_total",
        Counter,
        "gRPC requests, by method and status code (OK, INVALID_ARGUMENT, UNAVAILABLE, ...; the status of a unary error, which comes in the response headers).",
    ),
    (
        "authgate_http_request_duration_seconds",
        Histogram,
        "HTTP request latency, by route and status.",
    ),
    (
        "authgate_provider_request_duration_seconds",
        Histogram,
        "Calls to the identity provider, by endpoint.",
    ),
    (
        "authgate_provider_errors_total",
        Counter,
        "Failed calls to the identity provider, by endpoint.",
    ),
    (
        "authgate_connections_refused_total",
        Counter,
        "Connections closed at once because a cap was reached, by listener and cap.",
    ),
    (
        "authgate_connections_closed_total",
        Counter,
        "Connections closed by a timeout, by listener and reason (header_read_timeout, idle_timeout).",
    ),
    (
        "authgate_requests_refused_total",
        Counter,
        "Requests refused by admission control or a per-client limit, by listener and limit.",
    ),
    (
        "authgate_accept_errors_total",
        Counter,
        "Failed accepts (e.g. out of file descriptors), by listener; each one backs off.",
    ),
    (
        "authgate_tls_handshake_failures_total",
        Counter,
        "TLS handshakes that did not complete, by listener and reason (at_cap, timeout, refused).",
    ),
    (
        "authgate_tls_reloads_total",
        Counter,
        "Changed TLS files, by listener and result (loaded, refused: the previous ones stay).",
    ),
];

/// The recorder's handle; the first call builds the recorder, installs it as the global one,
/// describes every metric and starts the upkeep thread.
fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            // Refused only for an empty list.
            .unwrap_or_default()
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "another metrics recorder was installed first: authgate's counters and histograms go to it, and /metrics shows only the state read at scrape time"
            );
        }
        for (name, kind, help) in METRICS {
            match kind {
                Counter => metrics::describe_counter!(*name, *help),
                Histogram => metrics::describe_histogram!(*name, *help),
            }
        }
        // The counters without labels are there from the start, at zero.
        for name in ["authgate_logins_started_total", "authgate_logins_completed_total"] {
            metrics::counter!(name).increment(0);
        }
        let upkeep = handle.clone();
        let started = std::thread::Builder::new().name("authgate-metrics".into()).spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        });
        if let Err(e) = started {
            tracing::warn!(error = %e, "no metrics upkeep thread: histogram samples are folded in at scrapes only");
        }
        handle
    })
}

/// Installs the recorder (at start, so the first requests are counted even before anything
/// else records).
pub fn install() {
    handle();
}

/// A recorded series' identity in the per-thread handle caches: the address and length of its
/// name and of each label key and value, all `'static` strings (equal strings at two addresses
/// only make two entries for the same series; the lengths keep a string apart from another
/// that starts at the same address).
type HandleKey = (StrId, [(StrId, StrId); MAX_CACHED_LABELS]);

/// A `'static` string's address and length.
type StrId = (usize, usize);

/// Label sets up to this long have their handles cached.
const MAX_CACHED_LABELS: usize = 3;

fn str_id(s: &'static str) -> StrId {
    (s.as_ptr() as usize, s.len())
}

fn handle_key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Option<HandleKey> {
    if labels.len() > MAX_CACHED_LABELS {
        return None;
    }
    let mut parts = [((0, 0), (0, 0)); MAX_CACHED_LABELS];
    for (part, (k, v)) in parts.iter_mut().zip(labels) {
        *part = (str_id(k), str_id(v));
    }
    Some((str_id(name), parts))
}

thread_local! {
    /// Handles already registered, per thread: recording then costs a hash of a few words and
    /// an atomic add, not building, hashing and looking up the key in the shared registry.
    /// Bounded: every name and label value is a `'static` string of the program.
    static COUNTERS: RefCell<HashMap<HandleKey, metrics::Counter>> = RefCell::default();
    static HISTOGRAMS: RefCell<HashMap<HandleKey, metrics::Histogram>> = RefCell::default();
}

/// Adds one to a counter.
pub fn inc(name: &'static str, labels: &[(&'static str, &'static str)]) {
    handle();
    let register = || metrics::counter!(name, labels);
    match handle_key(name, labels) {
        Some(key) => COUNTERS.with_borrow_mut(|cache| {
            cache.entry(key).or_insert_with(register).increment(1);
        }),
        None => register().increment(1),
    }
}

/// Records one observation (seconds) in a histogram.
pub fn observe(name: &'static str, labels: &[(&'static str, &'static str)], seconds: f64) {
    handle();
    let register = || metrics::histogram!(name, labels);
    match handle_key(name, labels) {
        Some(key) => HISTOGRAMS.with_borrow_mut(|cache| {
            cache.entry(key).or_insert_with(register).record(seconds);
        }),
        None => register().record(seconds),
    }
}

/// Times a future into a histogram.
pub async fn timed<T>(
    name: &'static str,
    labels: &[(&'static str, &'static str)],
    fut: impl std::future::Future<Output = T>,
) -> T {
    let started = Instant::now();
    let out = fut.await;
    observe(name, labels, started.elapsed().as_secs_f64());
    out
}

/// A gauge value read at scrape time.
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// The exposition text: every recorded counter and histogram, the given gauges and the process
/// metrics.
pub fn render(gauges: &[Gauge]) -> String {
    let mut out = handle().render();
    let process = process_metrics();
    let scrape = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&scrape, || {
        for g in gauges.iter().chain(&process.gauges) {
            metrics::describe_gauge!(g.name, g.help);
            let labels: Vec<Label> =
                g.labels.iter().map(|(k, v)| Label::new(*k, v.clone())).collect();
            metrics::gauge!(g.name, labels).set(g.value);
        }
    });
    out.push_str(&scrape.handle().render());
    // The exporter's counters are integers; the process's CPU time is a float counter, as in
    // every Prometheus client library, so its family is written here.
    if let Some(cpu) = process.cpu_seconds {
        out.push_str(&format!(
            "# HELP process_cpu_seconds_total User and system CPU time spent, in seconds.\n\
             # TYPE process_cpu_seconds_total counter\n\
             process_cpu_seconds_total {cpu}\n"
        ));
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
/// `/proc/self`.
struct Process {
    cpu_seconds: Option<f64>,
    gauges: Vec<Gauge>,
}

/// Reads the process metrics: CPU seconds, resident and virtual memory, open and maximum file
/// descriptors, threads, start time. None where `/proc` is not readable.
fn process_metrics() -> Process {
    let none = Process { cpu_seconds: None, gauges: Vec::new() };
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return none };
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return none };
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
    let gauge = |name, help, value| Gauge { name, help, labels: Vec::new(), value };
    Process {
        cpu_seconds: Some((field(14) + field(15)) / ticks),
        gauges: vec![
            gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                field(24) * page,
            ),
            gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", field(23)),
            gauge("process_open_fds", "Open file descriptors.", open_fds),
            gauge("process_max_fds", "The open-file limit (soft).", max_fds),
            gauge("process_threads", "Operating system threads.", field(20)),
            gauge(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds.",
                boot + field(22) / ticks,
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_histograms_and_gauges_render_in_the_text_format() {
        inc("authgate_logins_failed_total", &[("reason", "unit_test")]);
        inc("authgate_logins_failed_total", &[("reason", "unit_test")]);
        observe("authgate_grpc_request_duration_seconds", &[("method", "/unit.Test/Call")], 0.003);
        let text = render(&[Gauge {
            name: "authgate_up",
            help: "Always 1.",
            labels: vec![("listener", "a \"quoted\" name".into())],
            value: 1.0,
        }]);
        assert!(text.contains("# TYPE authgate_logins_failed_total counter"), "{text}");
        assert!(text.contains("# HELP authgate_logins_failed_total Logins that failed"), "{text}");
        assert!(text.contains("authgate_logins_failed_total{reason=\"unit_test\"} 2"), "{text}");
        assert!(text.contains("# TYPE authgate_grpc_request_duration_seconds histogram"));
        assert!(text.contains(
            "authgate_grpc_request_duration_seconds_bucket{method=\"/unit.Test/Call\",le=\"0.001\"} 0"
        ));
        assert!(text.contains(
            "authgate_grpc_request_duration_seconds_bucket{method=\"/unit.Test/Call\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "authgate_grpc_request_duration_seconds_count{method=\"/unit.Test/Call\"} 1"
        ));
        assert!(text.contains("# TYPE authgate_up gauge"), "{text}");
        assert!(text.contains("authgate_up{listener=\"a \\\"quoted\\\" name\"} 1"), "{text}");
        assert!(text.contains("# TYPE process_cpu_seconds_total counter"), "{text}");
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge"), "{text}");
    }
}

//! `--metrics-listen`: Prometheus metrics on a listener of their own, off by
//! default.
//!
//! Labels carry the route template (`/api/v1/vaults/{id}/push`), never an id,
//! a user or a token; the request counter's status is the HTTP status. The
//! metric names and what they count are listed in `docs/server.md`. Without
//! `--metrics-listen` no recorder is installed and every macro is a no-op.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::store::Store;

/// Request latency buckets, in seconds: 1 ms to the 30 s default timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How long a scrape waits for the database's figures before leaving them
/// out (and reporting `vault_server_database_up 0`).
const SCRAPE_DB_TIMEOUT: Duration = Duration::from_secs(2);

/// Requests answered, by method, route template and status.
pub const REQUESTS: &str = "vault_server_http_requests_total";
/// Request latency histogram, by method and route template.
pub const LATENCY: &str = "vault_server_http_request_duration_seconds";
/// Requests answered 503 because they ran out of time.
pub const TIMEOUTS: &str = "vault_server_request_timeouts_total";
/// Pushes accepted.
pub const PUSHES: &str = "vault_server_pushes_total";
/// Records accepted by pushes.
pub const PUSHED_RECORDS: &str = "vault_server_pushed_records_total";
/// Pulls answered.
pub const PULLS: &str = "vault_server_pulls_total";
/// Records sent by pulls.
pub const PULLED_RECORDS: &str = "vault_server_pulled_records_total";
/// Logins refused for an unknown credential.
pub const FAILED_LOGINS: &str = "vault_server_failed_logins_total";
/// Logins refused by the failed-login limit (429).
pub const RATE_LIMITED_LOGINS: &str = "vault_server_rate_limited_logins_total";

/// Installs the process-wide recorder. Call once, before serving.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| format!("cannot start the metrics recorder: {e}"))?;
    metrics::describe_counter!(REQUESTS, "Requests answered, by method, route and status.");
    metrics::describe_histogram!(
        LATENCY,
        metrics::Unit::Seconds,
        "Request latency, by method and route."
    );
    metrics::describe_counter!(TIMEOUTS, "Requests answered 503 for running out of time.");
    metrics::describe_counter!(PUSHES, "Pushes accepted.");
    metrics::describe_counter!(PUSHED_RECORDS, "Records accepted by pushes.");
    metrics::describe_counter!(PULLS, "Pulls answered.");
    metrics::describe_counter!(PULLED_RECORDS, "Records sent by pulls.");
    metrics::describe_counter!(FAILED_LOGINS, "Logins refused for an unknown credential.");
    metrics::describe_counter!(
        RATE_LIMITED_LOGINS,
        "Logins refused by the failed-login limit."
    );
    metrics::describe_gauge!(
        "vault_server_records_stored",
        "Records stored, in every vault (read at scrape time)."
    );
    metrics::describe_gauge!(
        "vault_server_db_pool_max",
        "Most database connections the pool opens."
    );
    metrics::describe_gauge!(
        "vault_server_db_pool_in_use",
        "Database connections held by calls now."
    );
    metrics::describe_gauge!(
        "vault_server_db_pool_waiting",
        "Calls waiting for a database connection now."
    );
    metrics::describe_gauge!(
        "vault_server_database_up",
        "1 if the last scrape read the database, else 0."
    );
    Ok(handle)
}

/// Middleware: counts and times every request under its route template.
pub async fn track(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    // A fixed set: HTTP lets a client invent methods, and each label value
    // would be a new series held for the life of the process.
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        _ => "other",
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::histogram!(LATENCY, "method" => method, "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(REQUESTS, "method" => method, "route" => route, "status" => status)
        .increment(1);
    resp
}

#[derive(Clone)]
struct Scrape {
    handle: PrometheusHandle,
    store: Arc<dyn Store>,
}

async fn scrape(State(s): State<Scrape>) -> Response {
    let pool = s.store.pool_status();
    metrics::gauge!("vault_server_db_pool_max").set(pool.max as f64);
    metrics::gauge!("vault_server_db_pool_in_use").set(pool.in_use as f64);
    metrics::gauge!("vault_server_db_pool_waiting").set(pool.waiting as f64);
    match tokio::time::timeout(SCRAPE_DB_TIMEOUT, s.store.records_stored()).await {
        Ok(Ok(n)) => {
            metrics::gauge!("vault_server_records_stored").set(n as f64);
            metrics::gauge!("vault_server_database_up").set(1.0);
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: cannot count the records stored");
            metrics::gauge!("vault_server_database_up").set(0.0);
        }
        Err(_) => {
            tracing::warn!("metrics: counting the records stored took over 2s");
            metrics::gauge!("vault_server_database_up").set(0.0);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.handle.render(),
    )
        .into_response()
}

async fn not_here() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "this listener serves GET /metrics only\n",
    )
}

/// Serves `GET /metrics` on `listener` until `stop` resolves, and keeps the
/// recorder's histograms tidy meanwhile.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    store: Arc<dyn Store>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let upkeep = handle.clone();
    let upkeeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = Router::new()
        .route("/metrics", get(scrape))
        .fallback(not_here)
        .with_state(Scrape { handle, store });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .map_err(|e| format!("metrics listener failed: {e}"));
    upkeeper.abort();
    served
}

/// Binds `--metrics-listen`. Plain HTTP: the figures hold no secret and no
/// id, but they do tell how busy the service is, so put it on loopback or a
/// network only the monitoring reaches.
pub async fn bind(listen: &str) -> Result<(tokio::net::TcpListener, SocketAddr), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on --metrics-listen {listen}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the metrics address: {e}"))?;
    Ok((listener, addr))
}

//! What a long-running ferry (`sync`, `apply` on a broker) shows the world:
//! Prometheus `/metrics` and `/health` over HTTP, bound to 127.0.0.1 unless
//! an address says otherwise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Metric names, in one place.
pub mod names {
    /// Changes applied to the target, by `op` (upsert, delete, truncate).
    pub const CHANGES_APPLIED: &str = "ferry_changes_applied_total";
    /// Changes sent to the dead-letter table.
    pub const DEAD_LETTERS: &str = "ferry_dead_letters_total";
    /// Target transactions committed by the change stream.
    pub const TRANSACTIONS: &str = "ferry_transactions_total";
    /// Rows loaded by the initial load.
    pub const SNAPSHOT_ROWS: &str = "ferry_snapshot_rows_total";
    /// Seconds between the source commit and the target commit, last seen.
    pub const LAG_SECONDS: &str = "ferry_lag_seconds";
    /// Source commit → target commit, per applied group (a summary with
    /// quantiles).
    pub const COMMIT_LAG: &str = "ferry_commit_lag_seconds";
    /// WAL bytes the source has that the target has not applied.
    pub const LAG_BYTES: &str = "ferry_lag_bytes";
    /// 1, labelled with the plugin's sha256 (and, in many-table streams,
    /// its table); 0 for a version switched away from.
    pub const PLUGIN_INFO: &str = "ferry_plugin_info";
    /// Deployments decided by a running stream, by `outcome` (live, refused).
    pub const PLUGIN_SWITCHES: &str = "ferry_plugin_switches_total";
    /// Seconds the last switch of plugin version held the stream between
    /// two target transactions.
    pub const PLUGIN_SWITCH_PAUSE: &str = "ferry_plugin_switch_pause_seconds";
    /// Rows a shadow version transformed beside the live one, by `outcome`
    /// (same, different).
    pub const SHADOW_ROWS: &str = "ferry_shadow_rows_total";
    /// Times the stream was re-established after a failure.
    pub const RECONNECTS: &str = "ferry_reconnects_total";
    /// Changes not applied because both sides wrote the row (parallel run).
    pub const CONFLICTS: &str = "ferry_conflicts_total";
    /// Changes read that the opposite stream of a parallel run applied
    /// (dropped: loop prevention).
    pub const ECHOES_SKIPPED: &str = "ferry_echo_changes_skipped_total";
    /// Rows read back from the source to complete an update that did not
    /// carry an unchanged TOASTed value.
    pub const TOAST_REREADS: &str = "ferry_toast_rereads_total";
    /// Tables whose schema change the stream waits on (it is paused while
    /// this is above 0).
    pub const PAUSED_TABLES: &str = "ferry_paused_tables";
}

/// Liveness as `/health` reports it: the daemon is healthy while it made
/// progress (or waited on an idle source) recently.
#[derive(Debug, Default)]
pub struct Health {
    last_progress_unix: AtomicU64,
    phase: std::sync::Mutex<String>,
}

impl Health {
    pub fn beat(&self, phase: &str) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        self.last_progress_unix.store(now, Ordering::Relaxed);
        if let Ok(mut p) = self.phase.lock()
            && p.as_str() != phase
        {
            *p = phase.to_string();
        }
    }

    fn report(&self) -> (StatusCode, String) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let last = self.last_progress_unix.load(Ordering::Relaxed);
        let phase = self.phase.lock().map(|p| p.clone()).unwrap_or_default();
        let age = now.saturating_sub(last);
        // A daemon that has not made progress nor heard its source for a
        // minute is stuck (or retrying a failure).
        let ok = last > 0 && age < 60;
        let body = serde_json::json!({"status": if ok { "ok" } else { "unhealthy" }, "phase": phase, "seconds_since_progress": age});
        (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body.to_string())
    }
}

/// The process's health record (one daemon per process).
pub fn health() -> Arc<Health> {
    static HEALTH: std::sync::OnceLock<Arc<Health>> = std::sync::OnceLock::new();
    HEALTH.get_or_init(|| Arc::new(Health::default())).clone()
}

/// Installs the Prometheus recorder (once per process).
pub fn metrics() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new().install_recorder().context("installing the metrics recorder")?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Parses `127.0.0.1:9187`, `[::1]:9187` or `:9187` (then 127.0.0.1).
pub fn parse_listen(text: &str) -> anyhow::Result<SocketAddr> {
    let full = if text.starts_with(':') { format!("127.0.0.1{text}") } else { text.to_string() };
    full.parse().with_context(|| format!("--listen {text}: want HOST:PORT, e.g. 127.0.0.1:9187"))
}

/// Serves `/metrics` and `/health` on `addr` in the background; returns the
/// bound address (useful with port 0).
pub async fn serve(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let handle = metrics()?;
    let health = health();
    let app = Router::new().route("/metrics", get(move || std::future::ready(handle.render()))).route(
        "/health",
        get(move || {
            let (code, body) = health.report();
            std::future::ready((code, [("content-type", "application/json")], body))
        }),
    );
    // Histogram samples are buffered until drained: without a scrape they
    // would accumulate, so drain them on a timer too.
    let upkeep = metrics()?;
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("metrics server stopped: {e}");
        }
    });
    tracing::info!(%bound, "serving /metrics and /health");
    Ok(bound)
}

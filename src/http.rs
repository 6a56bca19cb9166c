//! The optional HTTP endpoint (`--http 0.0.0.0:9808`): `/health` for container health checks
//! and `/metrics` in Prometheus text format.
//!
//! `/health` answers 200 when the broker answers a PING within 2 s and the last
//! worker-heartbeat went out within three heartbeat intervals (or heartbeats are off), 503
//! otherwise; the JSON body says which check failed, which compute device tasks get, and what
//! NVML reads of each GPU (`gpus`, null without NVML). `/metrics` adds per-GPU gauges when
//! NVML is loaded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::worker::{Phase, Shared};

/// Serves until the worker starts shutting down; logs and returns if the address is taken.
pub(crate) async fn serve(shared: Arc<Shared>, addr: SocketAddr) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("--http {addr}: {e}; health and metrics are not served");
            return;
        }
    };
    tracing::info!("Serving /health and /metrics on http://{addr}");
    let stop = shared.clone();
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(shared);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.shutdown.reached(Phase::Cold).await })
        .await;
    if let Err(e) = served {
        tracing::error!("HTTP server stopped: {e}");
    }
}

async fn health(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let broker = tokio::time::timeout(Duration::from_secs(2), shared.broker.ping()).await;
    let broker_ok = matches!(broker, Ok(Ok(())));
    let since_beat = shared.events.since_last_worker_event();
    let beat_ok = match (shared.config.heartbeat_interval, since_beat) {
        (None, _) => true,
        (Some(freq), Some(age)) => age.as_secs_f64() <= 3.0 * freq.max(1.0),
        (Some(_), None) => false,
    };
    let running = shared.shutdown.is_running();
    let healthy = broker_ok && beat_ok && running;
    let body = json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "hostname": shared.config.hostname,
        "broker": match broker {
            Ok(Ok(())) => "connected".to_string(),
            Ok(Err(e)) => format!("error: {e}"),
            Err(_) => "no answer within 2 s".to_string(),
        },
        "last_heartbeat_s": since_beat.map(|d| d.as_secs_f64()),
        "shutting_down": !running,
        "devices": shared.compute_devices(),
        // NVML's view of the GPUs; null when NVML is not loaded (no driver, or --gpus none).
        "gpus": shared.gpus.available().then(|| shared.gpus.readings()),
        "active": shared.state.active_count(),
        "processed": shared.state.processed(),
    });
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let m = &shared.metrics;
    for q in shared.queues() {
        match shared.broker.queue_depth(&q.name).await {
            Ok(n) => m
                .queue_depth
                .with_label_values(&[q.name.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX)),
            Err(e) => tracing::debug!("queue depth of {}: {e}", q.name),
        }
    }
    m.prefetch_in_use
        .set(i64::try_from(shared.state.unacked_tags().len()).unwrap_or(i64::MAX));
    m.active
        .set(i64::try_from(shared.state.active_count()).unwrap_or(i64::MAX));
    m.set_gpus(&shared.gpus.readings());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
}

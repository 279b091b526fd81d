//! The operator's HTTP endpoints: `/metrics` (Prometheus text), `/health` (the process is
//! alive and its loop turns) and `/ready` (the worker is subscribed and consuming).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::Registry;
use tokio::net::TcpListener;

/// Shared between the worker, which flips readiness, and the HTTP server, which reports it.
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
    /// `harmony_ready`, for alerting on a worker that stays unready.
    gauge: Option<prometheus::IntGauge>,
}

impl Health {
    pub fn with_gauge(gauge: prometheus::IntGauge) -> Self {
        Self {
            ready: Arc::default(),
            gauge: Some(gauge),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
        if let Some(g) = &self.gauge {
            g.set(i64::from(ready));
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AppState {
    registry: Registry,
    health: Health,
}

/// Binds `address` and serves until `shutdown` resolves. Binding is done before returning so
/// that a taken port fails the start, not a background task.
pub async fn serve(
    address: SocketAddr,
    registry: Registry,
    health: Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = TcpListener::bind(address).await?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /health, /ready");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .with_state(AppState { registry, health });
    Ok(tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::runtime::telemetry::render(&state.registry),
    )
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

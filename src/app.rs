//! Building and running the app: open the store, migrate, record the guard policies, bind the
//! listener (port 0 allowed), start the worker, serve until told to stop. Tests build the same
//! `App` on port 0 and drive it over real HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::oidc::Oidc;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::http::{AppState, router};
use crate::jobs::Worker;
use crate::service::Service;
use crate::store::Store;

pub struct App {
    listener: TcpListener,
    /// `server.metrics_bind`: `/metrics` on a listener of its own.
    metrics_listener: Option<TcpListener>,
    state: AppState,
    addr: SocketAddr,
    /// Held while serving on SQLite: one process per database file.
    _sqlite_lock: Option<std::fs::File>,
}

/// Take an exclusive lock next to a SQLite database file, or say who has it.
///
/// SECURITY: two processes on one SQLite file would each run a worker and a sweep, and SQLite
/// gives no row locks to share the jobs safely; PostgreSQL is the way to run several.
fn lock_sqlite(url: &str) -> anyhow::Result<Option<std::fs::File>> {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return Ok(None);
    };
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path.contains(":memory:") {
        return Ok(None);
    }
    let lock_path = format!("{path}.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {lock_path}"))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another twokey process is already serving the SQLite database {path} (lock {lock_path}); \
             SQLite allows one process — stop the other one, or use PostgreSQL to run several"
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {lock_path}"))
        }
    }
}

impl App {
    /// Build with the system clock.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Build with a given clock (tests move time with a `ManualClock`).
    pub async fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        // The metrics recorder first, so that everything from here on is counted.
        crate::metrics::handle();
        let sqlite_lock = lock_sqlite(config.database.url.expose())?;
        let store = Store::connect(
            config.database.url.expose(),
            config.database.max_connections,
        )
        .await
        .context("connecting to the database")?;
        store.migrate().await.context("applying migrations")?;
        let oidc = match &config.auth.oidc {
            Some(cfg) => Some(Arc::new(
                Oidc::new(cfg.clone(), clock.clone()).context("setting up OpenID Connect")?,
            )),
            None => None,
        };
        let svc = Service::new(store, Arc::new(config), clock).map_err(anyhow::Error::msg)?;
        let voided = svc
            .load_policies()
            .await
            .context("recording guard policies")?;
        if voided > 0 {
            tracing::warn!(
                voided,
                "pending requests voided: their guard's policy changed"
            );
        }
        let svc_limits = (
            svc.config.server.sign_in_rate_limit,
            svc.config.server.api_rate_limit,
        );
        let bind = svc.config.server.bind;
        let listener = TcpListener::bind(bind)
            .await
            .with_context(|| format!("binding {bind}"))?;
        let addr = listener.local_addr()?;
        let metrics_listener = match svc.config.server.metrics_bind {
            Some(m) => Some(
                TcpListener::bind(m)
                    .await
                    .with_context(|| format!("binding {m} (server.metrics_bind)"))?,
            ),
            None => None,
        };
        Ok(Self {
            listener,
            metrics_listener,
            state: AppState {
                svc,
                worker_alive: Arc::new(AtomicBool::new(false)),
                oidc,
                limits: Arc::new(crate::http::rate_limit::RateLimits::new(
                    svc_limits.0,
                    svc_limits.1,
                )),
            },
            addr,
            _sqlite_lock: sqlite_lock,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The metrics listener's address, when `server.metrics_bind` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn service(&self) -> Service {
        self.state.svc.clone()
    }

    /// Serve until `shutdown` resolves; then stop accepting, let in-flight requests and the
    /// jobs being run finish within `server.shutdown_grace`, give back any lease still held
    /// (another replica takes that work at once) and return.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        if let Some(oidc) = self.state.oidc.clone() {
            // Discover the issuer now so the first sign-in is quick; a failure is only logged
            // (sign-in retries discovery and says when the issuer cannot be reached).
            tokio::spawn(async move { oidc.warm_up().await });
        }
        crate::metrics::spawn_upkeep();
        crate::memory::spawn_trimmer();
        let grace = self.state.svc.config.server.shutdown_grace;
        let (stop_tx, stop_rx) = watch::channel(false);
        let owner = format!("{}-{}", hostname(), uuid::Uuid::new_v4());
        let mut worker = if self.state.svc.config.jobs.enabled {
            let w = Worker::new(self.state.svc.clone(), owner.clone());
            let alive = self.state.worker_alive.clone();
            let rx = stop_rx.clone();
            Some(tokio::spawn(async move {
                alive.store(true, Ordering::Relaxed);
                w.run(rx).await;
                alive.store(false, Ordering::Relaxed);
            }))
        } else {
            None
        };
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        let app = router(self.state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let mut server = tokio::spawn(
            axum::serve(self.listener, app)
                .with_graceful_shutdown(stopped(stop_rx.clone()))
                .into_future(),
        );
        let metrics_server = self.metrics_listener.map(|l| {
            tokio::spawn(
                axum::serve(l, crate::http::metrics_router(self.state.clone()))
                    .with_graceful_shutdown(stopped(stop_rx.clone()))
                    .into_future(),
            )
        });
        let stop_tx = Arc::new(stop_tx);
        tokio::spawn({
            let stop_tx = stop_tx.clone();
            async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            }
        });

        // Serve until told to stop (or until the server fails).
        let mut served: Option<std::io::Result<()>> = None;
        tokio::select! {
            r = &mut server => served = Some(r.context("server task")?),
            _ = stopped(stop_rx.clone()) => {}
        }
        // A server that ended on its own (an accept error) stops the worker too.
        let _ = stop_tx.send(true);
        let svc = self.state.svc.clone();
        let drain = async {
            let r = match served.take() {
                Some(r) => r,
                None => (&mut server).await.context("server task")?,
            };
            if let Some(w) = worker.as_mut() {
                let _ = w.await;
            }
            anyhow::Ok(r)
        };
        let result = match tokio::time::timeout(grace, drain).await {
            Ok(r) => r?.context("serving"),
            Err(_) => {
                tracing::warn!(
                    grace_secs = grace.as_secs(),
                    "shutdown grace period over: leaving what still runs"
                );
                server.abort();
                if let Some(w) = &worker {
                    w.abort();
                }
                Ok(())
            }
        };
        if let Some(m) = metrics_server {
            m.abort();
        }
        match svc.store.release_leases(&owner).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(released = n, "job leases given back"),
            Err(e) => tracing::warn!(error = %e, "could not give back job leases; they expire"),
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), svc.store.close()).await;
        result
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "twokey".into())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

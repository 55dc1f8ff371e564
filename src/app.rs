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
        Ok(Self {
            listener,
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

    pub fn service(&self) -> Service {
        self.state.svc.clone()
    }

    /// Serve until `shutdown` resolves, then stop the worker and finish in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        if let Some(oidc) = self.state.oidc.clone() {
            // Discover the issuer now so the first sign-in is quick; a failure is only logged
            // (sign-in retries discovery and says when the issuer cannot be reached).
            tokio::spawn(async move { oidc.warm_up().await });
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let worker = if self.state.svc.config.jobs.enabled {
            let w = Worker::new(
                self.state.svc.clone(),
                format!("{}-{}", hostname(), uuid::Uuid::new_v4()),
            );
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
        let app = router(self.state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let mut stop_rx2 = stop_rx.clone();
        let server = axum::serve(self.listener, app).with_graceful_shutdown(async move {
            let _ = stop_rx2.wait_for(|v| *v).await;
        });
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        server.await.context("serving")?;
        if let Some(w) = worker {
            let _ = w.await;
        }
        self.state.svc.store.close().await;
        Ok(())
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

//! Giving freed memory back after a burst.
//!
//! glibc's allocator keeps the pages it got for a burst (a hundred approvals at once, a mail
//! backlog) on per-thread arena free lists, so an idle server would stay at its peak. Half a
//! second after the work stops (no HTTP answer, no job run), [`spawn_trimmer`] asks glibc to
//! return whole free pages of every arena (`malloc_trim(0)`), once per burst; and
//! [`configure`] keeps the arenas few. The footprint bench measures the effect (README,
//! "Measured footprint").

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Units of work done (HTTP answers, job runs) since start.
static ACTIVITY: AtomicU64 = AtomicU64::new(0);

/// Note one unit of work (called from the metrics hooks).
pub fn busy() {
    ACTIVITY.fetch_add(1, Ordering::Relaxed);
}

/// Start the trimmer (once per process).
pub fn spawn_trimmer() {
    static STARTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    STARTED.get_or_init(|| {
        tokio::spawn(async {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut seen, mut trimmed) = (0, 0);
            loop {
                tick.tick().await;
                let now = ACTIVITY.load(Ordering::Relaxed);
                // Quiet for a whole tick after some work: trim once.
                if now == seen && now != trimmed {
                    trimmed = now;
                    let released = tokio::task::spawn_blocking(release).await.unwrap_or(false);
                    tracing::debug!(released, "returned free memory to the system");
                }
                seen = now;
            }
        });
    });
}

/// Cap glibc's allocator at two arenas (instead of eight per core): the threads of the runtime
/// and of sqlx share them, so fewer half-empty arenas stay resident. The same as
/// `MALLOC_ARENA_MAX=2` (which deploy/ also sets); called first thing in `main`, before any
/// thread starts. An explicit `MALLOC_ARENA_MAX` in the environment wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn configure() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: `mallopt` takes two integers and no pointers; called before threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn configure() {}

/// Return whole free pages of every glibc arena to the system; whether any came back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release() -> bool {
    // SAFETY: `malloc_trim` takes no pointers and has no caller-side invariants; glibc locks
    // each arena while it walks it (MT-Safe in its manual).
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators (musl, macOS, Windows) have no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release() -> bool {
    false
}

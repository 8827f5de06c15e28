//! Graceful shutdown on SIGTERM / SIGINT, in the order a rolling update or a
//! node drain needs (https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#pod-termination):
//!
//! 1. `/readyz` answers 503 at once ([`Draining::begin`]), so the platform
//!    takes the replica out of its endpoints;
//! 2. the public listener keeps accepting for `server.shutdown_delay`, because
//!    endpoint removal reaches load balancers and kube-proxy only after a
//!    while and a connection refused in that window is a lost activity;
//! 3. the public listener stops accepting; requests in flight finish (each
//!    answers within `server.handler_deadline`, the handler carrying on past it);
//! 4. the notifier hands its work back (`Notifier::drain`): it takes and
//!    reclaims nothing more, ends its expansion claims, gives the items it
//!    holds and has not started back to the consumer group (another replica
//!    takes them at once, not after `notify.reclaim_idle`), and waits for the
//!    sends in flight to be recorded; a send still in flight when the grace
//!    ends keeps its marker until `notify.lease` (docs/notifications.md);
//! 5. the admin listener stops; `serve` returns and the process exits 0.
//!
//! Steps 2 to 5 together are bounded by `server.shutdown_grace`: past it the
//! listeners are stopped without waiting (Kubernetes would SIGKILL anyway at
//! `terminationGracePeriodSeconds`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;

/// Whether this process is shutting down; read by `/readyz`.
#[derive(Debug, Default)]
pub struct Draining(AtomicBool);

impl Draining {
    /// Marks the process as shutting down (readiness false from now on).
    pub fn begin(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// `true` once a shutdown signal arrived.
    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Waits for SIGTERM or SIGINT (Ctrl-C); returns the signal's name.
///
/// # Errors
/// When the signal handlers cannot be installed (the caller then serves
/// without graceful shutdown rather than not at all).
pub async fn signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => Ok("SIGTERM"),
            _ = int.recv() => Ok("SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok("Ctrl-C")
    }
}

/// The timings of one shutdown, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// `server.shutdown_delay`: accepting on, readiness off.
    pub delay: Duration,
    /// `server.shutdown_grace`: the whole shutdown, signal to exit.
    pub grace: Duration,
}

impl Timings {
    /// Seconds actix-web waits for in-flight requests once a listener stops
    /// accepting: what the grace leaves after the delay, at least 1 (actix
    /// counts whole seconds).
    pub fn drain_secs(&self) -> u64 {
        self.grace.saturating_sub(self.delay).as_secs().max(1)
    }
}

/// Runs steps 1 to 5 of the module's sequence once a signal arrives.
/// `hand_back` drains the notifier (step 4).
pub async fn on_signal(
    draining: &Draining,
    timings: Timings,
    public: ServerHandle,
    admin: ServerHandle,
    hand_back: impl std::future::Future<Output = ()>,
) {
    let name = match signal().await {
        Ok(name) => name,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGTERM/SIGINT handlers: shutdown will not be graceful");
            return;
        }
    };
    let started = Instant::now();
    draining.begin();
    tracing::info!(
        signal = name,
        delay = %humantime::format_duration(timings.delay),
        grace = %humantime::format_duration(timings.grace),
        "shutting down: /readyz answers 503; still accepting until the delay ends"
    );
    tokio::time::sleep(timings.delay).await;
    let orderly = async {
        tracing::info!(
            "shutting down: the public listener stops accepting; finishing requests in flight"
        );
        public.stop(true).await;
        tracing::info!("shutting down: requests finished; handing back notification work");
        hand_back.await;
        admin.stop(true).await;
    };
    let left = timings.grace.saturating_sub(started.elapsed());
    if tokio::time::timeout(left, orderly).await.is_err() {
        tracing::warn!(
            grace = %humantime::format_duration(timings.grace),
            "shutting down: server.shutdown_grace ran out; stopping without waiting for what is left"
        );
        public.stop(false).await;
        admin.stop(false).await;
    }
    tracing::info!(
        took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "shut down"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_time_is_what_the_grace_leaves() {
        let t = Timings {
            delay: Duration::from_secs(5),
            grace: Duration::from_secs(25),
        };
        assert_eq!(t.drain_secs(), 20);
        let t = Timings {
            delay: Duration::from_millis(900),
            grace: Duration::from_secs(1),
        };
        assert_eq!(t.drain_secs(), 1);
    }
}

//! A one-shot, cloneable shutdown signal.
//!
//! One [`ShutdownTrigger`] fires it; any number of [`Shutdown`] clones observe
//! it. It is level-triggered: a clone made or polled after the trigger still
//! sees it, so no task can miss the shutdown by subscribing late.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::CommonError;

/// Creates a connected trigger/observer pair.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

/// Fires the shutdown. Dropping it without firing means shutdown never comes
/// (observers keep waiting); it is not treated as a trigger, so a trigger that
/// goes out of scope by accident cannot stop a server.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl ShutdownTrigger {
    /// Fires the shutdown; idempotent.
    pub fn trigger(&self) {
        // send_replace works even when no receiver is alive right now.
        self.tx.send_replace(true);
    }

    /// A new observer of this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

/// Observes the shutdown. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// Returns once the shutdown has been triggered (immediately if it already
    /// was). Never returns if the trigger was dropped without firing.
    pub async fn wait(&mut self) {
        if self.rx.wait_for(|fired| *fired).await.is_err() {
            // The trigger is gone without firing: nobody can shut us down via
            // this channel any more, so wait forever rather than report a
            // shutdown that never happened.
            std::future::pending::<()>().await;
        }
    }

    /// Whether the shutdown has been triggered.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }
}

/// Fires `trigger` on the first SIGTERM or SIGINT.
///
/// The handlers are registered before this returns (not inside the spawned
/// task), so a signal that arrives right after the server announced readiness
/// is caught instead of killing the process with the default action. Must be
/// called inside a tokio runtime.
pub fn trigger_on_signals(trigger: ShutdownTrigger) -> Result<(), CommonError> {
    let mut term = signal(SignalKind::terminate()).map_err(|source| CommonError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| CommonError::Signal {
        signal: "SIGINT",
        source,
    })?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        trigger.trigger();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn wait_returns_after_trigger() {
        let (trigger, shutdown) = channel();
        let mut a = shutdown.clone();
        assert!(!shutdown.is_triggered());
        let waiter = tokio::spawn(async move {
            a.wait().await;
            a.is_triggered()
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        trigger.trigger();
        let seen = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter finished")
            .expect("no panic");
        assert!(seen);
        assert!(shutdown.is_triggered());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn late_observer_sees_trigger() {
        let (trigger, shutdown) = channel();
        trigger.trigger();
        trigger.trigger();
        let mut late = shutdown.clone();
        tokio::time::timeout(Duration::from_secs(1), late.wait())
            .await
            .expect("already triggered: wait returns immediately");
        let mut sub = trigger.subscribe();
        assert!(sub.is_triggered());
        sub.wait().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropped_trigger_is_not_a_shutdown() {
        let (trigger, mut shutdown) = channel();
        drop(trigger);
        assert!(!shutdown.is_triggered());
        let r = tokio::time::timeout(Duration::from_millis(50), shutdown.wait()).await;
        assert!(r.is_err(), "wait must not return without a trigger");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn sigterm_triggers() {
        let (trigger, mut shutdown) = channel();
        trigger_on_signals(trigger).unwrap();
        // SAFETY: raise() only delivers a signal to this process; the handler
        // registered above turns SIGTERM into a trigger instead of an exit.
        let rc = unsafe { libc::raise(libc::SIGTERM) };
        assert_eq!(rc, 0);
        tokio::time::timeout(Duration::from_secs(5), shutdown.wait())
            .await
            .expect("SIGTERM fires the shutdown");
    }
}

//! The tokio runtime every server process runs on.

use std::time::Duration;

/// How long a server's runtime gets to wind down after serving stopped; anything still running then (nothing
/// should be) is abandoned so the process exits.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// Builds a server runtime with `threads` worker threads named `name`: a `current_thread` runtime for one thread
/// (no cross-thread wake-ups, the cheapest per request on a pinned core), a multi-thread one otherwise. Call it after
/// pinning, so every thread it spawns inherits the CPU mask.
pub fn build(threads: usize, name: &str) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .enable_all()
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_both_flavours() {
        for threads in [1, 2] {
            let rt = build(threads, "t").expect("runtime");
            assert_eq!(rt.block_on(async { 40 + 2 }), 42);
            let flavor = rt.handle().runtime_flavor();
            let multi = flavor == tokio::runtime::RuntimeFlavor::MultiThread;
            assert_eq!(multi, threads > 1, "{threads} threads");
            rt.shutdown_timeout(SHUTDOWN_TIMEOUT);
        }
    }
}

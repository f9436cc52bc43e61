//! CPU affinity and timer slack.
//!
//! Benchmarks pin the server and the load generator to disjoint cores so they
//! do not steal each other's cycles; pinning happens first thing in `main`,
//! before the runtime spawns threads, because threads inherit the mask.

use std::io;

use crate::CommonError;

/// Number of CPUs the kernel has online (indices `0..available_cpus()`).
///
/// This is the system's count, not the current affinity mask's, so a process
/// started under `taskset` can still name any existing core. Never below 1.
pub fn available_cpus() -> usize {
    // SAFETY: sysconf has no preconditions; it returns -1 on error.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n >= 1 {
        n as usize
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Checks a `--cpus` list against the cores this host has; returns it sorted and deduplicated, or the reason it
/// was refused (the caller names the flag).
pub fn validate_cpus(cpus: &[usize]) -> Result<Vec<usize>, String> {
    let available = available_cpus();
    if let Some(bad) = cpus.iter().find(|&&c| c >= available) {
        return Err(format!(
            "cpu {bad} does not exist: this host has cpus 0..{available}"
        ));
    }
    let mut cpus = cpus.to_vec();
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Most `--threads` a server accepts.
pub const MAX_THREADS: usize = 1024;
/// Most `--max-connections` a server accepts.
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// The process flags every HTTP server shares, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessFlags {
    /// Runtime worker threads, `1..=MAX_THREADS`.
    pub threads: usize,
    /// CPUs to pin to, sorted and deduplicated (empty: no pinning).
    pub cpus: Vec<usize>,
    /// Concurrent connections, `1..=MAX_CONNECTIONS`.
    pub max_connections: usize,
}

/// The process flags every HTTP server takes; flatten into the server's clap `Args` (`#[command(flatten)]`).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ProcessArgs {
    /// Runtime threads: 1 = tokio current_thread, n > 1 = multi_thread with n workers.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub threads: usize,

    /// CPU cores to pin to before the runtime starts, e.g. "0,1".
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub cpus: Vec<usize>,

    /// Concurrent connections served; more wait in the kernel backlog.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_connections: usize,
}

impl Default for ProcessArgs {
    /// The command-line defaults.
    fn default() -> Self {
        ProcessArgs {
            threads: 1,
            cpus: Vec::new(),
            max_connections: 10_000,
        }
    }
}

impl ProcessArgs {
    /// [`validate_process_flags`] of these flags.
    pub fn validate(&self) -> Result<ProcessFlags, (&'static str, String)> {
        validate_process_flags(self.threads, &self.cpus, self.max_connections)
    }
}

/// Checks `--threads`, `--cpus` and `--max-connections` once for every server; on refusal returns the flag and the
/// reason, for the server's own error type.
pub fn validate_process_flags(
    threads: usize,
    cpus: &[usize],
    max_connections: usize,
) -> Result<ProcessFlags, (&'static str, String)> {
    if threads == 0 || threads > MAX_THREADS {
        return Err((
            "--threads",
            format!("must be between 1 and {MAX_THREADS}, got {threads}"),
        ));
    }
    let cpus = validate_cpus(cpus).map_err(|r| ("--cpus", r))?;
    if max_connections == 0 || max_connections > MAX_CONNECTIONS {
        return Err((
            "--max-connections",
            format!("must be between 1 and {MAX_CONNECTIONS}, got {max_connections}"),
        ));
    }
    Ok(ProcessFlags {
        threads,
        cpus,
        max_connections,
    })
}

/// Pins the calling thread (and so every thread it spawns later) to `cpus`.
///
/// An empty slice is a no-op. Fails without touching the mask if an index is
/// `>= available_cpus()` (or beyond the kernel's fixed-size `cpu_set_t`).
pub fn pin_to_cpus(cpus: &[usize]) -> Result<(), CommonError> {
    if cpus.is_empty() {
        return Ok(());
    }
    let available = available_cpus();
    // cpu_set_t holds CPU_SETSIZE bits; CPU_SET past that would write out of bounds.
    let limit = available.min(libc::CPU_SETSIZE as usize);
    if let Some(&bad) = cpus.iter().find(|&&c| c >= limit) {
        return Err(CommonError::Affinity {
            cpus: cpus.to_vec(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpu {bad} does not exist: this host has cpus 0..{available}"),
            ),
        });
    }
    // SAFETY: cpu_set_t is a plain bit array, valid when zeroed.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: c < CPU_SETSIZE was checked above, so the bit is in bounds.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; the pointer and size describe `set`.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(CommonError::Affinity {
            cpus: cpus.to_vec(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The calling thread's affinity mask as a sorted list of CPU indices.
pub fn current_affinity() -> Result<Vec<usize>, CommonError> {
    // SAFETY: cpu_set_t is a plain bit array, valid when zeroed.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the pointer and size describe `set`.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(CommonError::Affinity {
            cpus: Vec::new(),
            source: io::Error::last_os_error(),
        });
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: i < CPU_SETSIZE, so the bit is in bounds.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect())
}

/// Sets the calling thread's timer slack (PR_SET_TIMERSLACK), best effort.
///
/// The default slack of 50 µs lets the kernel coalesce wakeups, which is
/// exactly the jitter a precise timer thread must avoid. `0` would mean "reset
/// to the default", so it is raised to 1 ns.
pub fn set_timer_slack_ns(ns: u64) {
    let ns = ns.max(1) as libc::c_ulong;
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches only the
    // calling thread's scheduling attributes. Failure is harmless (best effort).
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, ns, 0, 0, 0);
    }
}

/// The calling thread's timer slack in nanoseconds, if the kernel reports it.
pub fn timer_slack_ns() -> Option<u64> {
    // SAFETY: PR_GET_TIMERSLACK takes no pointer arguments.
    let rc = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) };
    (rc >= 0).then_some(rc as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ProcessArgs::default()` is what the command line gives with no flags.
    #[test]
    fn process_args_default_is_the_command_line_default() {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            process: ProcessArgs,
        }
        let parsed = Wrapper::try_parse_from(["server"]).expect("no flags parse");
        assert_eq!(parsed.process, ProcessArgs::default());
        let flags = Wrapper::try_parse_from(["server", "--threads", "2", "--cpus", "0,0"])
            .expect("flags parse")
            .process
            .validate()
            .expect("valid on any host");
        assert_eq!((flags.threads, flags.cpus), (2, vec![0]));
        let refused = Wrapper::try_parse_from(["server", "--max-connections", "0"])
            .expect("parses")
            .process
            .validate();
        assert_eq!(refused.map_err(|(flag, _)| flag), Err("--max-connections"));
    }

    #[test]
    fn process_flags_are_checked_by_name() {
        let ok = validate_process_flags(2, &[0, 0], 10).expect("valid");
        assert_eq!((ok.threads, ok.cpus, ok.max_connections), (2, vec![0], 10));
        for (threads, cpus, conns, flag) in [
            (0, vec![], 1, "--threads"),
            (MAX_THREADS + 1, vec![], 1, "--threads"),
            (1, vec![available_cpus()], 1, "--cpus"),
            (1, vec![], 0, "--max-connections"),
            (1, vec![], MAX_CONNECTIONS + 1, "--max-connections"),
        ] {
            let (named, reason) =
                validate_process_flags(threads, &cpus, conns).expect_err("refused");
            assert_eq!(named, flag, "{reason}");
        }
    }

    #[test]
    fn empty_is_noop() {
        pin_to_cpus(&[]).unwrap();
    }

    #[test]
    fn out_of_range_is_rejected() {
        let n = available_cpus();
        assert!(n >= 1);
        let err = pin_to_cpus(&[0, n]).unwrap_err();
        assert!(matches!(err, CommonError::Affinity { .. }));
        assert!(err.to_string().contains(&format!("cpu {n}")), "{err}");
    }

    #[test]
    fn pin_applies_to_this_thread_and_children() {
        // Run on a scratch thread so the test harness thread keeps its mask.
        std::thread::spawn(|| {
            let before = current_affinity().unwrap();
            let target = *before.first().expect("at least one allowed cpu");
            pin_to_cpus(&[target]).unwrap();
            assert_eq!(current_affinity().unwrap(), vec![target]);
            let child = std::thread::spawn(|| current_affinity().unwrap())
                .join()
                .unwrap();
            assert_eq!(child, vec![target], "spawned threads inherit the mask");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn timer_slack_is_set() {
        std::thread::spawn(|| {
            set_timer_slack_ns(1);
            assert_eq!(timer_slack_ns(), Some(1));
            set_timer_slack_ns(0);
            assert_eq!(timer_slack_ns(), Some(1), "0 is raised to 1 ns");
            set_timer_slack_ns(200_000);
            assert_eq!(timer_slack_ns(), Some(200_000));
        })
        .join()
        .unwrap();
    }
}

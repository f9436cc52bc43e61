//! The host fingerprint stored with every result, so figures from two machines are compared knowingly.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

/// What machine a result was measured on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Host {
    /// CPU model name.
    pub cpu_model: String,
    /// Logical CPUs of the machine.
    pub logical_cpus: usize,
    /// Physical cores, when the OS tells.
    pub physical_cpus: Option<usize>,
    /// CPUs this process may run on.
    pub available_cpus: usize,
    /// Total memory.
    pub memory_bytes: u64,
    /// Kernel version.
    pub kernel: String,
    /// OS name and version.
    pub os: String,
    /// Hypervisor or container, when visible (`kvm`, `docker`, ...).
    pub virtualization: Option<String>,
    /// Host name.
    pub hostname: String,
    /// The compiler loadgen was built with.
    pub rustc: String,
    /// Debug or release build of loadgen.
    pub build_profile: String,
}

/// The source tree a result was produced from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Git {
    /// Commit hash, or `unknown` outside a checkout.
    pub commit: String,
    /// True when the working tree had uncommitted changes.
    pub dirty: bool,
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn detect_virtualization() -> Option<String> {
    if let Ok(out) = Command::new("systemd-detect-virt").output() {
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !s.is_empty() && s != "none" {
            return Some(s);
        }
    }
    if Path::new("/.dockerenv").exists() {
        return Some("docker".into());
    }
    if let Some(cg) = read("/proc/1/cgroup")
        && (cg.contains("docker") || cg.contains("kubepods") || cg.contains("containerd"))
    {
        return Some("container".into());
    }
    let flags = read("/proc/cpuinfo").unwrap_or_default();
    if flags
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"))
    {
        let vendor = read("/sys/class/dmi/id/sys_vendor").unwrap_or_default();
        let product = read("/sys/class/dmi/id/product_name").unwrap_or_default();
        let what = format!("{vendor} {product}").trim().to_string();
        return Some(if what.is_empty() {
            "hypervisor".into()
        } else {
            format!("hypervisor ({what})")
        });
    }
    None
}

impl Host {
    /// Reads the fingerprint of this machine.
    pub fn detect() -> Host {
        let (cpu_model, logical_cpus, memory_bytes) = match sysinfo::System::new() {
            Ok(mut sys) => {
                sys.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
                sys.refresh_memory();
                let model = sys
                    .cpus()
                    .first()
                    .map(|c| c.brand().trim().to_string())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "unknown".into());
                (model, sys.cpus().len().max(1), sys.total_memory())
            }
            Err(_) => ("unknown".into(), 1, 0),
        };
        let or_unknown = |r: Result<String, sysinfo::Error>| r.unwrap_or_else(|_| "unknown".into());
        Host {
            cpu_model,
            logical_cpus,
            physical_cpus: sysinfo::System::physical_core_count().ok(),
            available_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes,
            kernel: or_unknown(sysinfo::System::kernel_version()),
            os: or_unknown(sysinfo::System::long_os_version()),
            virtualization: detect_virtualization(),
            hostname: or_unknown(sysinfo::System::host_name()),
            rustc: env!("REFBENCH_RUSTC_VERSION").to_string(),
            build_profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .into(),
        }
    }
}

impl Git {
    /// Reads the commit of the checkout containing the current directory.
    pub fn detect() -> Git {
        let commit = Command::new("git")
            .args(["rev-parse", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let dirty = Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .is_some_and(|o| !o.stdout.is_empty());
        Git { commit, dirty }
    }
}

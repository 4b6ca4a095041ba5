//! CPU time and peak memory of processes, read from /proc.
//!
//! CPU seconds are `utime + stime` (plus `cutime + cstime`, the children already reaped)
//! from `/proc/<pid>/stat`; peak memory is `VmHWM` from `/proc/<pid>/status`. Both are
//! world-readable, so the servers may run as another user.

use std::fs;

use anyhow::{Context, Result};

/// Clock ticks per second, the unit of the CPU fields in `/proc/<pid>/stat`.
fn ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as f64,
        _ => 100.0,
    }
}

/// The fields of `/proc/<pid>/stat` after the command name: index 0 is field 3 (state),
/// so field N of proc(5) is at index N - 3.
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: it ends at the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    Some(
        rest.split_whitespace()
            .map(|field| field.parse().unwrap_or(0))
            .collect(),
    )
}

const PPID: usize = 4 - 3;
const UTIME: usize = 14 - 3;
const STIME: usize = 15 - 3;
const CUTIME: usize = 16 - 3;
const CSTIME: usize = 17 - 3;

/// CPU seconds a process has used, its reaped children's included. None once it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let fields = stat_fields(pid)?;
    let ticks =
        fields.get(UTIME)? + fields.get(STIME)? + fields.get(CUTIME)? + fields.get(CSTIME)?;
    Some(ticks as f64 / ticks_per_second())
}

/// CPU seconds of the process itself, without its children.
fn own_cpu_seconds(pid: u32) -> Option<f64> {
    let fields = stat_fields(pid)?;
    Some((fields.get(UTIME)? + fields.get(STIME)?) as f64 / ticks_per_second())
}

/// The parent's pid.
pub fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?
        .get(PPID)
        .and_then(|ppid| u32::try_from(*ppid).ok())
}

/// Peak resident set size (`VmHWM`) in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The live children of `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| parent_of(*pid) == Some(parent))
        .collect()
}

/// A server made of a parent process and its children (PostgreSQL's postmaster and its
/// backends, nginx's master and its workers).
#[derive(Debug, Clone)]
pub struct ProcessTree {
    pub root: u32,
    /// Children whose CPU is not the server's work for the system under test, e.g. the
    /// backends serving the benchmark's own connections. They must stay alive between
    /// two samples, or their CPU moves into the root's reaped-children time.
    excluded: Vec<u32>,
}

impl ProcessTree {
    pub fn new(root: u32) -> Result<ProcessTree> {
        cpu_seconds(root).with_context(|| format!("no process {root} in /proc"))?;
        Ok(ProcessTree {
            root,
            excluded: Vec::new(),
        })
    }

    pub fn exclude(&mut self, pids: impl IntoIterator<Item = u32>) {
        self.excluded.extend(pids);
    }

    pub fn forget_excluded(&mut self) {
        self.excluded.clear();
    }

    /// CPU seconds used so far by the root, its live children and those already reaped,
    /// less the excluded children's. Only differences between samples mean anything.
    pub fn cpu_seconds(&self) -> f64 {
        let root = cpu_seconds(self.root).unwrap_or(0.0);
        let children: f64 = children_of(self.root)
            .into_iter()
            .filter_map(own_cpu_seconds)
            .sum();
        let excluded: f64 = self
            .excluded
            .iter()
            .filter_map(|pid| own_cpu_seconds(*pid))
            .sum();
        root + children - excluded
    }
}

/// This process's own CPU seconds (the receiver, the producer, the baseline's workers).
pub fn own_process_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// What describes the machine a result was taken on.
pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

pub fn memory_gib() -> f64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|line| line.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0)
}

pub fn kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_string())
        .unwrap_or_default()
}

/// The 1-minute load average: other work on the machine shows here.
pub fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

//! What the benchmark reads from the operating system: the machine it runs on, a process's
//! peak resident memory (`VmHWM`) and the CPU time of the processes that take part (the
//! worker, the benchmark itself, PostgreSQL and RabbitMQ). Linux `/proc` only; on other
//! systems every figure reads as unknown and the benchmark says so.

use serde::Serialize;
use std::time::Instant;

/// The machine, as printed in the report and in BENCHMARKS.md.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    /// Logical CPUs available to this process.
    pub cpus: usize,
    /// `MemTotal` in MiB.
    pub memory_mib: Option<u64>,
    /// First `model name` of `/proc/cpuinfo`.
    pub cpu_model: Option<String>,
    /// Kernel release.
    pub kernel: Option<String>,
}

impl Machine {
    /// Reads the machine's description.
    pub fn read() -> Self {
        let cpus = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1);
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| kib_field(&t, "MemTotal:"))
            .map(|kib| kib / 1024);
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        });
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|s| s.trim().to_owned());
        Self {
            cpus,
            memory_mib,
            cpu_model,
            kernel,
        }
    }
}

/// Reads a `Name:   1234 kB` line of a `/proc` status-like file, in KiB.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Peak resident set size (`VmHWM`) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&status, "VmHWM:")
}

/// Current resident set size (`VmRSS`) of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&status, "VmRSS:")
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `comm` is in parentheses and may contain spaces; fields after it are plain.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After `)`: state is field 3 of the man page, so utime (14) and stime (15) are 11, 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when it cannot be asked).
pub fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// Sums the CPU ticks of every process whose `comm` is one of `names`.
fn ticks_by_name(names: &[&str]) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if names.contains(&comm.trim()) {
            total += cpu_ticks(pid).unwrap_or(0);
        }
    }
    total
}

/// CPU time of the participants at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    at: Instant,
    worker: u64,
    bench: u64,
    postgres: u64,
    rabbitmq: u64,
    /// Busy ticks of the whole machine (every CPU).
    machine: u64,
    /// Ticks the hypervisor gave to someone else.
    steal: u64,
}

/// Busy (not idle, not waiting for I/O, not stolen) and stolen ticks of every CPU
/// together, from `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let get = |i: usize| fields.get(i).copied().unwrap_or(0);
    (get(0) + get(1) + get(2) + get(5) + get(6), get(7))
}

impl CpuSnapshot {
    /// Takes a snapshot; `worker` is the worker child's pid, if one runs.
    pub fn take(worker: Option<u32>) -> Self {
        let (machine, steal) = machine_ticks();
        Self {
            at: Instant::now(),
            worker: worker
                .and_then(|pid| cpu_ticks(&pid.to_string()))
                .unwrap_or(0),
            bench: cpu_ticks("self").unwrap_or(0),
            postgres: ticks_by_name(&["postgres"]),
            rabbitmq: ticks_by_name(&["beam.smp", "erl_child_setup"]),
            machine,
            steal,
        }
    }

    /// CPU used between `self` (earlier) and `later`.
    pub fn until(&self, later: &CpuSnapshot, ticks_per_sec: u64, cpus: usize) -> CpuUse {
        let wall = later.at.duration_since(self.at).as_secs_f64();
        let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / ticks_per_sec.max(1) as f64;
        let worker = secs(self.worker, later.worker);
        let bench = secs(self.bench, later.bench);
        let postgres = secs(self.postgres, later.postgres);
        let rabbitmq = secs(self.rabbitmq, later.rabbitmq);
        let capacity = wall * cpus.max(1) as f64;
        let total = worker + bench + postgres + rabbitmq;
        let machine = secs(self.machine, later.machine);
        let steal = secs(self.steal, later.steal);
        CpuUse {
            wall_secs: wall,
            worker_secs: worker,
            bench_secs: bench,
            postgres_secs: postgres,
            rabbitmq_secs: rabbitmq,
            others_secs: (machine - total).max(0.0),
            steal_secs: steal,
            busy_share: if capacity > 0.0 {
                total / capacity
            } else {
                0.0
            },
            machine_busy_share: if capacity > 0.0 {
                machine / capacity
            } else {
                0.0
            },
        }
    }
}

/// CPU seconds used by each participant over a phase.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuUse {
    /// Length of the phase.
    pub wall_secs: f64,
    /// The worker child.
    pub worker_secs: f64,
    /// This process: publisher, event subscriber and the provider sandbox.
    pub bench_secs: f64,
    /// Every `postgres` process (server-wide).
    pub postgres_secs: f64,
    /// RabbitMQ's Erlang VM (server-wide).
    pub rabbitmq_secs: f64,
    /// Everything else on the machine (kernel work of the participants included): other
    /// people's builds and tests make the figures noisy, so this is reported.
    pub others_secs: f64,
    /// CPU time the hypervisor gave to other guests (steal): the machine was slower.
    pub steal_secs: f64,
    /// The participants' sum as a share of every CPU of the machine over the phase.
    pub busy_share: f64,
    /// The whole machine's busy share.
    pub machine_busy_share: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kib_fields() {
        let text = "Name:\tx\nVmHWM:\t   12345 kB\nVmRSS:\t  100 kB\n";
        assert_eq!(kib_field(text, "VmHWM:"), Some(12345));
        assert_eq!(kib_field(text, "VmRSS:"), Some(100));
        assert_eq!(kib_field(text, "VmSwap:"), None);
    }

    #[test]
    fn own_process_is_readable() {
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(cpu_ticks("self").is_some());
            assert!(peak_rss_kib(std::process::id()).is_some_and(|k| k > 0));
        }
    }
}

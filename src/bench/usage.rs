//! What a phase cost the machine: CPU time per operation (the load generator's own and,
//! with `--spawn`, the nodes'), the share of the phase the whole machine sat idle or
//! waited on its disks, and the nodes' peak resident memory.
//!
//! Throughput on a shared 2-core machine drifts by ±15% between runs; the CPU an operation
//! costs drifts much less, so it is what a change to the data path is judged by. Times come
//! from `/proc/PID/stat` (user + system time of every thread, living or exited, in
//! `USER_HZ` = 100 ticks per second on Linux), so a 10 s phase is resolved to ~0.1%.
//! The machine's idle and iowait shares come from the first line of `/proc/stat`: a run
//! whose cores are not all busy while the machine waits on its disks was held back by
//! fsyncs and flushes, not by CPU. Where `/proc` is missing (not Linux) the figures are
//! simply absent.

use std::time::Duration;

use serde::Serialize;

/// Ticks per second of `/proc/PID/stat` times (`USER_HZ`, fixed at 100 on Linux).
const USER_HZ: u64 = 100;

/// CPU time of a set of processes at one moment.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    /// This process.
    client: Option<Duration>,
    /// The node processes, summed; `None` if there are none or one could not be read.
    nodes: Option<Duration>,
    /// The whole machine's time so far, in `/proc/stat` ticks.
    machine: Option<MachineTime>,
}

/// Where every CPU of the machine spent its time, in ticks summed over the CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MachineTime {
    total: u64,
    idle: u64,
    iowait: u64,
}

/// CPU cost of a phase.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuUse {
    /// CPU of the load generator (client) per successful operation, µs.
    pub client_us_per_op: f64,
    /// CPU of all spawned node processes per successful operation, µs (`--spawn` only).
    pub nodes_us_per_op: Option<f64>,
    /// CPU of client and nodes divided by wall time: cores kept busy.
    pub cores: f64,
    /// Share of the machine's CPU time that was idle with no disk I/O waiting, percent.
    pub machine_idle_pct: Option<f64>,
    /// Share of the machine's CPU time that was idle waiting on disk I/O, percent.
    pub machine_iowait_pct: Option<f64>,
}

impl CpuSnapshot {
    /// The CPU used so far by this process and by `node_pids`.
    pub fn take(node_pids: &[u32]) -> CpuSnapshot {
        let nodes = match node_pids.is_empty() {
            true => None,
            false => node_pids.iter().map(|&pid| process_cpu(&pid.to_string())).sum(),
        };
        CpuSnapshot {
            client: process_cpu("self"),
            nodes,
            machine: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|stat| parse_machine_time(&stat)),
        }
    }

    /// What `ops` operations cost between `self` and `later`, `elapsed` apart.
    pub fn usage(&self, later: &CpuSnapshot, ops: u64, elapsed: Duration) -> Option<CpuUse> {
        let client = later.client?.checked_sub(self.client?)?;
        let nodes = later.nodes.zip(self.nodes).and_then(|(b, a)| b.checked_sub(a));
        let per_op = |d: Duration| d.as_secs_f64() * 1e6 / ops.max(1) as f64;
        let busy = client + nodes.unwrap_or_default();
        let machine = later.machine.zip(self.machine).and_then(|(b, a)| {
            let total = b.total.checked_sub(a.total).filter(|&t| t > 0)? as f64;
            let share = |later: u64, earlier: u64| later.saturating_sub(earlier) as f64 * 100.0 / total;
            Some((share(b.idle, a.idle), share(b.iowait, a.iowait)))
        });
        Some(CpuUse {
            client_us_per_op: per_op(client),
            nodes_us_per_op: nodes.map(per_op),
            cores: busy.as_secs_f64() / elapsed.as_secs_f64().max(1e-9),
            machine_idle_pct: machine.map(|m| m.0),
            machine_iowait_pct: machine.map(|m| m.1),
        })
    }
}

/// The `cpu` line of `/proc/stat`: user nice system idle iowait irq softirq steal ...
fn parse_machine_time(stat: &str) -> Option<MachineTime> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line.split_whitespace().map(|t| t.parse().ok()).collect::<Option<_>>()?;
    // Guest time (fields 9 and 10) is already counted in user and nice.
    let total = ticks.iter().take(8).sum();
    Some(MachineTime {
        total,
        idle: *ticks.get(3)?,
        iowait: *ticks.get(4)?,
    })
}

/// The largest peak resident set (`VmHWM`) among `pids`, in MiB; `None` if unreadable.
pub fn peak_rss_mib(pids: &[u32]) -> Option<u64> {
    pids.iter()
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            parse_vm_hwm_kib(&status)
        })
        .collect::<Option<Vec<u64>>>()?
        .into_iter()
        .max()
        .map(|kib| kib / 1024)
}

/// The `VmHWM:` line of a `/proc/PID/status`, in KiB.
fn parse_vm_hwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system time of process `pid` (or `"self"`), all threads included.
fn process_cpu(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// utime + stime of one `/proc/PID/stat` line. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted after its closing parenthesis.
fn parse_stat(stat: &str) -> Option<Duration> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_are_read_after_the_command_name() {
        let line = "4242 (quorum kv) (x)) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat(line), Some(Duration::from_millis(2800)));
        assert_eq!(parse_stat("4242 (truncated"), None);
    }

    #[test]
    fn machine_time_is_read_from_the_first_line_of_proc_stat() {
        let stat = "cpu  100 5 50 800 40 0 5 0 7 0\ncpu0 50 2 25 400 20 0 2 0 0 0\n";
        let time = parse_machine_time(stat).unwrap();
        assert_eq!(
            time,
            MachineTime {
                total: 1000,
                idle: 800,
                iowait: 40
            }
        );
        assert_eq!(parse_machine_time("cpu0 1 2 3\n"), None);
        assert_eq!(parse_machine_time("cpu  1 x 3 4 5\n"), None);
    }

    #[test]
    fn peak_resident_memory_is_read_from_status() {
        let status = "Name:\tquorumkv\nVmPeak:\t 900000 kB\nVmHWM:\t  524288 kB\nVmRSS:\t 400000 kB\n";
        assert_eq!(parse_vm_hwm_kib(status), Some(524288));
        assert_eq!(parse_vm_hwm_kib("Name:\tx\n"), None);
    }
}

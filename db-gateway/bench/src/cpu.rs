//! CPU time of a process, to report CPU cost per request beside the wall-clock figures.
//!
//! On a small machine the load generator, the proxy and Postgres share the cores, so
//! throughput is largely "how many requests fit into the CPU": CPU microseconds per request of
//! the proxy (PgBouncer or the gateway) and of the load generator itself explain a throughput
//! gap better than latency does. Linux only (`/proc/<pid>/stat`); elsewhere the columns stay
//! empty.

use std::time::Duration;

/// `/proc/<pid>/stat` counts in clock ticks; Linux fixes USER_HZ at 100 for user space on every
/// mainstream architecture.
const TICKS_PER_SEC: u64 = 100;

/// Which process to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Process {
    /// The benchmark itself.
    Current,
    Pid(u32),
}

/// User + system CPU time consumed so far by the process (all threads), if readable.
pub(crate) fn cpu_time(process: Process) -> Option<Duration> {
    let path = match process {
        Process::Current => "/proc/self/stat".to_owned(),
        Process::Pid(pid) => format!("/proc/{pid}/stat"),
    };
    parse_stat(&std::fs::read_to_string(path).ok()?)
}

/// Extracts `utime + stime` from a `/proc/<pid>/stat` line.
fn parse_stat(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may itself contain spaces or ')', so
    // counting starts after the last ')': field 3 (state) is then the first one.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // utime and stime are fields 14 and 15, i.e. the 12th and 13th after the name.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime.checked_add(stime)?;
    Some(Duration::from_millis(
        ticks.checked_mul(1000 / TICKS_PER_SEC)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_plus_stime_after_an_awkward_name() {
        let line = "4242 (db gate)way) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 37 0 0 20 0 \
                    3 0 123456 1000000 500 18446744073709551615";
        assert_eq!(parse_stat(line), Some(Duration::from_millis(2870)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn own_cpu_time_is_readable_and_grows() {
        let Some(before) = cpu_time(Process::Current) else {
            // Not Linux: nothing to check.
            return;
        };
        let started = std::time::Instant::now();
        let mut spin = 0u64;
        while started.elapsed() < Duration::from_millis(60) {
            spin = spin.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(spin);
        let after = cpu_time(Process::Current).expect("readable a moment ago");
        assert!(after > before, "{before:?} -> {after:?}");
    }
}

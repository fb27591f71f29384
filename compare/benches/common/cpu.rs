//! CPU time from `/proc`, shared by the compare benchmarks (included with
//! `#[path]`): this process's, and every process of a server's.

use std::time::Duration;

/// CPU time this process has used (user + system), from `/proc/self/stat`.
pub fn own() -> Duration {
    std::fs::read_to_string("/proc/self/stat")
        .map(|stat| ticks(&stat))
        .map_or(Duration::ZERO, to_duration)
}

/// CPU time every process named `comm` (e.g. `redis-server`, `postgres`)
/// has used, from `/proc/<pid>/stat`.
pub fn of_processes(comm: &str) -> Duration {
    let name = format!("({comm}");
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if stat
            .rsplit_once(')')
            .is_some_and(|(head, _)| head.ends_with(&name))
        {
            total += ticks(&stat);
        }
    }
    to_duration(total)
}

/// utime + stime of one `stat` line. The fields after the command name
/// (which may hold spaces) start at the last ')'.
fn ticks(stat: &str) -> u64 {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum()
}

/// The kernel's USER_HZ is 100 on Linux.
fn to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 10)
}

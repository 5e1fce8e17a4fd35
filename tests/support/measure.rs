//! What the comparative benchmarks measure the same way: a knob from the
//! environment, the process's CPU time and memory, one consumer's round
//! run in a child process of its own, and a median with its range over
//! rounds.

use std::time::Duration;

/// The environment variable `name` parsed, or `default` when it is unset
/// or does not parse.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time of this process so far (user + system), from /proc/self/stat
/// in clock ticks of 10 ms.
pub fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The command name may hold spaces; the fields after it do not.
    let after = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// The median, the lowest and the highest of `values` (sorted in place).
pub fn median_and_range(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

/// CPU time of this process's threads so far, from each thread's
/// `schedstat` (nanoseconds on a CPU, where `cpu_time` counts 10 ms
/// ticks). Threads that ended are not counted: a consumer keeps its
/// threads while it consumes.
pub fn thread_cpu_time() -> Duration {
    let mut ns: u64 = 0;
    for task in std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
    {
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
            ns += stat
                .split(' ')
                .next()
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

/// A `/proc/self/status` memory field (`VmHWM:`, `VmRSS:`), in MiB.
pub fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .expect("the field in /proc/self/status");
    let kb: f64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("a size in kB");
    kb / 1024.0
}

/// What one consumer measured in one round, in a child process of its own
/// so that its CPU time and its memory are its alone: the child prints
/// [`Round::line`] and the benchmark reads it back with [`Round::parse`].
#[derive(Clone, Copy, Debug)]
pub struct Round {
    /// Wall-clock seconds of the measured span.
    pub seconds: f64,
    /// Messages per second over the span.
    pub rate: f64,
    /// CPU microseconds per message over the span.
    pub cpu_us: f64,
    /// Peak resident memory of the process (`VmHWM`), MiB.
    pub peak_mib: f64,
    /// Resident memory at the span's end (`VmRSS`), MiB.
    pub end_mib: f64,
}

impl Round {
    /// The figures of `messages` handled in `wall` for `cpu`, with this
    /// process's memory now.
    pub fn of(messages: u64, wall: Duration, cpu: Duration) -> Round {
        let n = messages.max(1) as f64;
        Round {
            seconds: wall.as_secs_f64(),
            rate: n / wall.as_secs_f64(),
            cpu_us: cpu.as_secs_f64() * 1e6 / n,
            peak_mib: status_mib("VmHWM:"),
            end_mib: status_mib("VmRSS:"),
        }
    }

    /// The one stdout line a child reports its round on.
    pub fn line(&self) -> String {
        format!(
            "ROUND {:.6} {:.0} {:.4} {:.2} {:.2}",
            self.seconds, self.rate, self.cpu_us, self.peak_mib, self.end_mib
        )
    }

    /// The round a child reported in `stdout`, if it did.
    pub fn parse(stdout: &str) -> Option<Round> {
        let line = stdout.lines().find(|l| l.starts_with("ROUND "))?;
        let v: Vec<f64> = line["ROUND ".len()..]
            .split(' ')
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        match v[..] {
            [seconds, rate, cpu_us, peak_mib, end_mib] => Some(Round {
                seconds,
                rate,
                cpu_us,
                peak_mib,
                end_mib,
            }),
            _ => None,
        }
    }
}

/// Gives a benchmark's child process the allocator settings the `laneway`
/// program makes for itself (src/bin/laneway/allocator.rs: commit arena
/// memory as it is used, return freed pages at once), each unless the
/// benchmark's own environment sets it, as the program leaves it then. On
/// mimalloc's defaults a consumer's resident memory counts pages already
/// freed, and both sides' peaks say more about the allocator than about
/// the consumer.
pub fn program_allocator(command: &mut std::process::Command) {
    for variable in ["MIMALLOC_ARENA_EAGER_COMMIT", "MIMALLOC_PURGE_DELAY"] {
        if std::env::var_os(variable).is_none() {
            command.env(variable, "0");
        }
    }
}

/// Runs `command` (a benchmark executable run again in a role) to its end
/// and returns the round it reported; panics with its output when it
/// reported none.
pub fn child_round(mut command: std::process::Command, role: &str) -> Round {
    let out = command.output().expect("the benchmark's child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    Round::parse(&stdout).unwrap_or_else(|| {
        panic!(
            "the {role} round reported nothing ({}): {}\n{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The median, lowest and highest of `values`, printed with `digits`
/// decimals: "median (lowest–highest)".
pub fn median_range(values: impl IntoIterator<Item = f64>, digits: usize) -> String {
    let mut v: Vec<f64> = values.into_iter().collect();
    let (m, lo, hi) = median_and_range(&mut v);
    format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
}

//! CPU time of one consumer inside a process it shares with its peer: the
//! catch-up scenario runs librdkafka's mock cluster and the producer in the
//! same process as the consumer it measures, so the process's CPU time
//! alone would charge their work to the consumer.
//!
//! A [`CpuMeter`] takes the process's CPU time and, apart, that of the
//! threads alive at its start which belong to the peer (named by a
//! predicate, for librdkafka's `rdk:` threads). Its reading is the
//! process's time since the start less those threads' time since the
//! start: what the consumer's own threads (created after the start, and
//! counted even once they have ended) and the shared threads (the runtime's
//! workers, the main thread) spent.
//!
//! Invariants: Linux only (it reads `/proc/self`); any `/proc` file that
//! cannot be read or parsed makes the reading `None`, never a panic. Times
//! come in clock ticks of 10 ms (Linux's `USER_HZ` for `/proc` is 100), so
//! a reading is as coarse as that, per thread.

use std::collections::HashMap;
use std::time::Duration;

/// The process's CPU time, and that of each excluded thread, at a start.
pub struct CpuMeter {
    process: Duration,
    excluded: HashMap<String, Duration>,
}

impl CpuMeter {
    /// Starts measuring; `exclude` is given each live thread's name and says
    /// whether that thread's time is not the measured part's.
    pub fn start(exclude: impl Fn(&str) -> bool) -> Option<CpuMeter> {
        let mut excluded = HashMap::new();
        for entry in std::fs::read_dir("/proc/self/task").ok()? {
            let task = entry.ok()?.file_name().to_string_lossy().into_owned();
            let Some(name) = thread_name(&task) else {
                // It ended meanwhile.
                continue;
            };
            if exclude(&name)
                && let Some(time) = cpu_time(&format!("/proc/self/task/{task}/stat"))
            {
                excluded.insert(task, time);
            }
        }
        Some(CpuMeter {
            process: cpu_time("/proc/self/stat")?,
            excluded,
        })
    }

    /// The measured part's CPU time since [`CpuMeter::start`]. An excluded
    /// thread that has ended since can no longer be read: what it spent
    /// after the start then counts as the measured part's (the scenario's
    /// excluded threads live until after its readings).
    pub fn elapsed(&self) -> Option<Duration> {
        let process = cpu_time("/proc/self/stat")?.saturating_sub(self.process);
        let others: Duration = self
            .excluded
            .iter()
            .filter_map(|(task, before)| {
                cpu_time(&format!("/proc/self/task/{task}/stat"))
                    .map(|now| now.saturating_sub(*before))
            })
            .sum();
        Some(process.saturating_sub(others))
    }
}

fn thread_name(task: &str) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/self/task/{task}/comm")).ok()?;
    Some(comm.trim_end().to_string())
}

/// User plus system time from a `stat` file of `/proc`.
fn cpu_time(path: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces and parentheses; the fields after
    // its last ')' do not. utime and stime are fields 14 and 15.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after.split_ascii_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((user + system) * 10))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;

    /// Spins until this thread has spent `cpu`.
    fn spin(cpu: Duration) {
        let start = cpu_time("/proc/thread-self/stat").unwrap();
        while cpu_time("/proc/thread-self/stat").unwrap() - start < cpu {
            std::hint::black_box(0u64);
        }
    }

    // Other tests of this binary may run beside these, in this process:
    // every assertion compares two readings that both include their work.

    #[test]
    fn an_excluded_threads_time_stays_out_of_the_reading() {
        let (ready, ready_rx) = mpsc::channel::<()>();
        let (go, go_rx) = mpsc::channel::<()>();
        let (spun, spun_rx) = mpsc::channel::<()>();
        let (done, done_rx) = mpsc::channel::<()>();
        let peer = thread::Builder::new()
            .name("peer-thread".into())
            .spawn(move || {
                // A thread names itself once it runs: the meters start
                // after that.
                ready.send(()).unwrap();
                go_rx.recv().unwrap();
                spin(Duration::from_millis(300));
                spun.send(()).unwrap();
                // Alive until the readings are taken.
                let _ = done_rx.recv();
            })
            .unwrap();
        ready_rx.recv().unwrap();
        let everything = CpuMeter::start(|_| false).unwrap();
        let without_peer = CpuMeter::start(|name| name.starts_with("peer-")).unwrap();
        go.send(()).unwrap();
        spun_rx.recv().unwrap();
        let (all, measured) = (
            everything.elapsed().unwrap(),
            without_peer.elapsed().unwrap(),
        );
        done.send(()).unwrap();
        peer.join().unwrap();
        let left_out = all.saturating_sub(measured);
        assert!(
            (Duration::from_millis(280)..Duration::from_millis(400)).contains(&left_out),
            "the peer spent 300 ms; left out: {left_out:?} (all {all:?}, measured {measured:?})"
        );
    }

    #[test]
    fn a_thread_made_after_the_start_counts_even_once_it_has_ended() {
        let meter = CpuMeter::start(|name| name.starts_with("measured-")).unwrap();
        let before = meter.elapsed().unwrap();
        thread::Builder::new()
            .name("measured-later".into())
            .spawn(|| spin(Duration::from_millis(300)))
            .unwrap()
            .join()
            .unwrap();
        let after = meter.elapsed().unwrap();
        assert!(
            after.saturating_sub(before) >= Duration::from_millis(280),
            "a 300 ms thread made after the start: {before:?} then {after:?}"
        );
    }
}

//! Running the real `laneway` binary from tests: waiting for it with a
//! bound (a hang fails the test instead of stalling the suite), reading its
//! stderr line by line as it comes (for readiness), and the run fixture: a
//! config written, `laneway run` spawned, its status lines (the run's
//! heartbeat) waited on.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The JSON summary a `laneway run --json` printed as the last line of
/// `stdout`; the test fails, showing `stdout`, when there is none.
pub fn json_summary(stdout: &[u8]) -> simd_json::OwnedValue {
    let text = String::from_utf8_lossy(stdout);
    let mut last = text
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no summary line in: {text}"))
        .as_bytes()
        .to_vec();
    simd_json::to_owned_value(&mut last)
        .unwrap_or_else(|e| panic!("the last line is not a JSON summary ({e}): {text}"))
}

/// Waits for `child` to exit; after `limit` it is killed and the test fails.
pub fn wait_or_kill(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("laneway did not exit within {limit:?}");
        }
    }
}

/// The lines `child` writes to stderr (which must be piped), as they come.
pub fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `laneway run --config <config>`, for more arguments, environment or
/// stdin to be added.
pub fn laneway_run(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_laneway"));
    cmd.args(["run", "--config"]).arg(config);
    cmd
}

/// Whether `line` is one of a run's status lines (`[   1.0s] all: ...`),
/// written once every `status_interval`: the run's heartbeat.
pub fn is_status_line(line: &str) -> bool {
    line.starts_with('[')
}

/// A running child whose stderr is read line by line as it comes, so that a
/// test waits for the line that shows what it needs (the run is under way,
/// it made progress) instead of sleeping. Dropped before it exits (a failed
/// test), the child is killed.
pub struct Watched {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    /// Every stderr line read so far, for failure messages and [`Watched::finish`].
    seen: Vec<String>,
}

impl Watched {
    /// Spawns `cmd` with stdout and stderr piped.
    pub fn spawn(cmd: &mut Command) -> Watched {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the child process");
        let lines = stderr_lines(&mut child);
        Watched {
            child: Some(child),
            lines,
            seen: Vec::new(),
        }
    }

    /// Spawns `laneway run --config <config>` (see [`laneway_run`]).
    pub fn run(config: &Path) -> Watched {
        Watched::spawn(&mut laneway_run(config))
    }

    /// Writes `toml` to `config`, then spawns `laneway run` on it.
    pub fn start_run(config: &Path, toml: &str) -> Watched {
        std::fs::write(config, toml).expect("write the run's config");
        Watched::run(config)
    }

    /// The child's stdin, when `cmd` was given `Stdio::piped()` for it;
    /// dropping it closes the child's standard input.
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.as_mut().and_then(|c| c.stdin.take())
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("the child runs").id()
    }

    /// Reads stderr until a line for which `ready` holds, and returns it.
    /// Fails the test (and kills the child) when stderr ends first (the child
    /// exited) or when no such line came within `limit`; `what` names the
    /// awaited event in that message.
    pub fn wait_for_line(
        &mut self,
        limit: Duration,
        what: &str,
        mut ready: impl FnMut(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = ready(&line);
                    self.seen.push(line.clone());
                    if hit {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    panic!(
                        "waited {limit:?} for {what}; stderr so far:\n{}",
                        self.seen.join("\n")
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.kill();
                    panic!(
                        "the process ended ({status}) before {what}; its stderr:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    /// Waits for a status line of the run (its heartbeat, see
    /// [`is_status_line`]) at which `condition` holds, and returns it: the
    /// condition (often a file on disk) is looked at on the run's own beat,
    /// not on a timer in the test. Fails as [`Watched::wait_for_line`] does.
    pub fn wait_for_status(
        &mut self,
        limit: Duration,
        what: &str,
        mut condition: impl FnMut() -> bool,
    ) -> String {
        self.wait_for_line(limit, what, |line| is_status_line(line) && condition())
    }

    /// Sends SIGINT (what Ctrl-C sends).
    pub fn interrupt(&self) {
        let sent = Command::new("kill")
            .args(["-INT", &self.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -INT failed");
    }

    /// Kills the child with SIGKILL (if it still runs) and reaps it.
    pub fn kill(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("the child runs");
        let _ = child.kill();
        child.wait().expect("reap the child")
    }

    /// Waits for the child to exit, for at most `limit` (see [`wait_or_kill`]),
    /// and returns its output; `stderr` holds every line, those already read
    /// by [`Watched::wait_for_line`] included.
    pub fn finish(mut self, limit: Duration) -> Output {
        let child = self.child.take().expect("the child runs");
        let mut out = wait_or_kill(child, limit);
        // The child exited, so its stderr is closed: the reader ends.
        let mut seen = std::mem::take(&mut self.seen);
        seen.extend(self.lines.iter());
        let mut text = seen.join("\n");
        text.push('\n');
        out.stderr = text.into_bytes();
        out
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut()
            && child.try_wait().is_ok_and(|s| s.is_none())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Opens the disk backlog in `dir`, waiting (bounded) while an earlier
/// run still holds its lock: an engine waits for its sources only up to its
/// shutdown grace, so a source still closing its connection (and holding
/// the engine's groups) may outlive the run by a moment. The lock is the
/// real condition waited on.
pub fn open_backlog_when_free(dir: &std::path::Path) -> laneway::backlog::DiskBacklog {
    use laneway::backlog::{BacklogError, DiskBacklog, DiskBacklogConfig};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match DiskBacklog::open(dir, DiskBacklogConfig::default()) {
            Ok(b) => return b,
            Err(BacklogError::Unavailable(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("opening the backlog in {}: {e}", dir.display()),
        }
    }
}

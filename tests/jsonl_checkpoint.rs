//! A JSONL file source remembers how far it is done: through the real
//! binary and the real file system, a finished, stopped or SIGKILLed run
//! resumes at its checkpoint, and what is delivered over all runs equals the
//! input byte for byte (topic, messageId, generateTime, payload: the whole
//! line, in the form the JSONL sink writes it).
//!
//! Half the input is stale (generated an hour ago), so it goes through the
//! disk backlog. Runs are synchronised on what they delivered (the output
//! file's line count, looked at on each of the run's status lines), never
//! on time.

use crate::support;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::process::{Watched, laneway_run};
use support::records::as_sent;

/// How long a run may take before the test gives up on it.
const RUN_LIMIT: Duration = Duration::from_secs(300);

const N: usize = 50_000;

/// One input line per message: every other one is stale, payload lengths cover
/// every length mod 8, strings carry escapes and non-ASCII text. Each line
/// is in the form the JSONL sink writes, so a delivered line must equal its
/// input line byte for byte.
fn write_input(path: &Path) -> Vec<Vec<u8>> {
    let now = laneway::message::now_epoch_ms();
    let mut lines = Vec::with_capacity(N);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..N {
        let generated = if i % 2 == 1 {
            now - 3_600_000 - i as i64
        } else {
            now + 3_600_000 + i as i64
        };
        let line = format!(
            "{{\"topic\":\"/pk{p}/dev{d}/thing/event/property/post\",\"messageId\":\"m{i}\",\"generateTime\":{generated},\"payload\":{{\"n\":{i},\"s\":\"{s}\",\"q\":\"a\\\"b\\\\c é\"}}}}",
            p = i % 3,
            d = i % 97,
            s = "x".repeat(i % 23),
        );
        f.write_all(line.as_bytes()).unwrap();
        f.write_all(b"\n").unwrap();
        lines.push(line.into_bytes());
    }
    f.flush().unwrap();
    lines
}

/// A config of one group writing to `output`. `bounded`: the backlog holds
/// at most 300 records, so reading is held back by backpressure and a kill
/// lands while the file is half read (and a stop gives up what cannot be
/// stored after 1 s).
fn write_config(path: &Path, data: &Path, input: &Path, output: &Path, bounded: bool) {
    let (backlog, grace) = if bounded {
        ("{ store = \"disk\", max_records = 300 }", "1s")
    } else {
        ("{ store = \"disk\" }", "10s")
    };
    let text = format!(
        "data_dir = {data:?}\nshutdown_grace = \"{grace}\"\nstatus_interval = \"100ms\"\n\
         [[sources]]\ntype = \"jsonl\"\npath = {input:?}\n\
         [[groups]]\nname = \"g\"\nslots = 2\nbatch_size = 50\nlive_capacity = 200\n\
         sink = {{ type = \"jsonl\", path = {output:?}, sync = true }}\n\
         backlog = {backlog}\n"
    );
    std::fs::write(path, text).unwrap();
}

/// The complete lines of an output file; a last line without its newline
/// (a write cut by SIGKILL, never acknowledged) is counted apart.
fn output_lines(path: &Path) -> (Vec<Vec<u8>>, usize) {
    let bytes = std::fs::read(path).unwrap_or_default();
    // Each line as it was sent (a superseded delivery says so in its line).
    let mut lines: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').map(as_sent).collect();
    // `split` leaves what follows the last newline: empty, or a torn line.
    let torn = lines.pop().is_some_and(|last| !last.is_empty());
    (lines, usize::from(torn))
}

fn count_lines(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    data: PathBuf,
    input: PathBuf,
    sent: Vec<Vec<u8>>,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let input = dir.join("in.jsonl");
    let sent = write_input(&input);
    Setup {
        data: dir.join("data"),
        dir,
        input,
        sent,
        _tmp: tmp,
    }
}

impl Setup {
    /// Starts run number `round` (with a `--json` summary and its status
    /// lines on stderr), writing to its own output file.
    fn start(&self, round: usize, bounded: bool) -> (Watched, PathBuf) {
        let out = self.dir.join(format!("out{round}.jsonl"));
        let config = self.dir.join(format!("c{round}.toml"));
        write_config(&config, &self.data, &self.input, &out, bounded);
        let child = Watched::spawn(laneway_run(&config).arg("--json"));
        (child, out)
    }

    /// Runs round `round` to its end and returns the lines it read.
    fn run_to_end(&self, round: usize) -> (u64, PathBuf) {
        let (run, out) = self.start(round, false);
        let run = run.finish(RUN_LIMIT);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        (ingested(&run.stdout), out)
    }

    /// Waits until `out` holds at least `lines` lines (the run is under
    /// way), failing if the run ends first. The run prints no running
    /// total of its deliveries (its status lines give rates), so the count
    /// is the output file's, read again at each status line (every 100 ms):
    /// the run's own heartbeat paces the look, not a sleep in the test.
    fn wait_for_lines(&self, run: &mut Watched, out: &Path, lines: usize) {
        run.wait_for_status(
            RUN_LIMIT,
            &format!("{lines} lines in {}", out.display()),
            || count_lines(out) >= lines,
        );
    }

    /// The checkpoint's offset, as a count of whole input lines below it
    /// (0 when no checkpoint was written yet), after a run that ended
    /// normally: it leaves no temporary checkpoint behind.
    fn checkpoint_lines(&self) -> usize {
        self.read_checkpoint(false)
    }

    /// The same after a SIGKILL, which may land between writing the
    /// temporary file and renaming it over the checkpoint: the temporary
    /// file may stay (the next run overwrites it), the checkpoint must
    /// still be whole.
    fn checkpoint_lines_after_kill(&self) -> usize {
        self.read_checkpoint(true)
    }

    fn read_checkpoint(&self, killed: bool) -> usize {
        let Ok(entries) = std::fs::read_dir(self.data.join("sources")) else {
            return 0;
        };
        let (temporary, paths): (Vec<PathBuf>, Vec<PathBuf>) = entries
            .map(|e| e.unwrap().path())
            .partition(|p| p.to_string_lossy().ends_with(".tmp"));
        assert!(
            killed || temporary.is_empty(),
            "a temporary checkpoint was left behind: {temporary:?}"
        );
        if killed && paths.is_empty() {
            return 0; // killed before the first checkpoint was in place
        }
        let [path] = paths.as_slice() else {
            panic!("expected one checkpoint, found {paths:?}");
        };
        let text = std::fs::read_to_string(path).unwrap();
        let offset: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("offset "))
            .unwrap()
            .parse()
            .unwrap();
        let mut at = 0u64;
        for (i, line) in self.sent.iter().enumerate() {
            if at == offset {
                return i;
            }
            at += line.len() as u64 + 1;
        }
        assert_eq!(at, offset, "the checkpoint is not on a line boundary");
        self.sent.len()
    }

    /// Which input line each delivered line is, per output file. Every
    /// delivered line must be one of the input lines, byte for byte; a torn
    /// last line (cut by SIGKILL) is allowed and returned apart.
    fn delivered(&self, outputs: &[PathBuf]) -> (Vec<Vec<usize>>, usize) {
        let index: HashMap<&[u8], usize> = self
            .sent
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_slice(), i))
            .collect();
        let mut torn = 0;
        let per_run = outputs
            .iter()
            .map(|out| {
                let (lines, t) = output_lines(out);
                torn += t;
                lines
                    .iter()
                    .map(|line| match index.get(line.as_slice()) {
                        Some(&i) => i,
                        None => panic!(
                            "{} delivered a line that was never sent (changed bytes?): {}",
                            out.display(),
                            String::from_utf8_lossy(line)
                        ),
                    })
                    .collect()
            })
            .collect();
        (per_run, torn)
    }

    /// Asserts every input line arrived, and returns how many deliveries
    /// were repeats.
    fn assert_none_missing(&self, per_run: &[Vec<usize>]) -> usize {
        let mut seen = vec![0usize; self.sent.len()];
        for &i in per_run.iter().flatten() {
            seen[i] += 1;
        }
        let missing: Vec<usize> = (0..self.sent.len()).filter(|&i| seen[i] == 0).collect();
        assert!(
            missing.is_empty(),
            "{} lines lost, for example line {:?}",
            missing.len(),
            missing.iter().take(10).map(|i| i + 1).collect::<Vec<_>>()
        );
        seen.iter().map(|&c| c - 1).sum()
    }

    /// Records the backlog owes (unreleased) now.
    fn backlog_owed(&self) -> usize {
        laneway::backlog::disk::inspect_dir(&self.data.join("backlog").join("g"))
            .map_or(0, |i| i.records as usize)
    }
}

fn ingested(stdout: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(stdout);
    let at = text.find("\"ingested\":").expect("a JSON summary") + 11;
    text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// How many deliveries can repeat after an interruption: those of lines the
/// checkpoint did not cover yet (read again), plus the records the backlog
/// still owed (its own at-least-once window).
fn repeat_bound(delivered_before: &[usize], checkpoint: usize, owed: usize) -> usize {
    delivered_before
        .iter()
        .filter(|&&i| i >= checkpoint)
        .count()
        + owed
}

#[test]
fn a_finished_run_then_a_run_over_the_grown_file_reads_only_the_new_lines() {
    let s = setup();
    let full = std::fs::read(&s.input).unwrap();
    let half = N / 2;
    let cut: usize = s.sent[..half].iter().map(|l| l.len() + 1).sum();
    std::fs::write(&s.input, &full[..cut]).unwrap();
    let (read1, out1) = s.run_to_end(1);
    assert_eq!(read1, half as u64);
    assert_eq!(s.checkpoint_lines(), half);

    // The writer appends the rest; the same file, grown.
    std::fs::write(&s.input, &full).unwrap();
    let (read2, out2) = s.run_to_end(2);
    assert_eq!(read2, (N - half) as u64, "only the appended lines are read");
    assert_eq!(s.checkpoint_lines(), N);

    let (per_run, torn) = s.delivered(&[out1, out2]);
    assert_eq!(torn, 0);
    assert_eq!(s.assert_none_missing(&per_run), 0, "a line arrived twice");
    assert!(per_run[1].iter().all(|&i| i >= half));

    // Nothing left: a third run reads and delivers nothing.
    let (read3, out3) = s.run_to_end(3);
    assert_eq!(read3, 0);
    assert_eq!(count_lines(&out3), 0);
}

#[test]
fn a_stopped_run_resumes_at_its_checkpoint() {
    let s = setup();
    let (mut first, out1) = s.start(1, false);
    s.wait_for_lines(&mut first, &out1, 2_000);
    first.interrupt();
    let first = first.finish(RUN_LIMIT);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let checkpoint = s.checkpoint_lines();
    // A graceful stop settles everything it read: the checkpoint covers it.
    assert_eq!(checkpoint as u64, ingested(&first.stdout));

    let (read2, out2) = s.run_to_end(2);
    assert_eq!(
        read2,
        (N - checkpoint) as u64,
        "the restart reads exactly from the checkpoint"
    );
    let (per_run, torn) = s.delivered(&[out1, out2]);
    assert_eq!(torn, 0, "a graceful stop leaves no torn line");
    let repeats = s.assert_none_missing(&per_run);
    // A graceful stop waits for deliveries in flight and records what the
    // backlog delivered: nothing is delivered again.
    assert_eq!(
        repeats, 0,
        "{repeats} lines delivered twice over a stop at line {checkpoint}"
    );
}

#[test]
fn a_stop_with_full_backlogs_gives_up_what_it_cannot_store_and_reads_it_again() {
    let s = setup();
    let (mut first, out1) = s.start(1, true);
    s.wait_for_lines(&mut first, &out1, 2_000);
    first.interrupt();
    let first = first.finish(RUN_LIMIT);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(
        !stderr.contains("a source did not finish"),
        "the source hung on the full backlog: {stderr}"
    );
    let checkpoint = s.checkpoint_lines();
    assert!(
        (checkpoint as u64) < ingested(&first.stdout),
        "the batches waiting for room were not done, yet the checkpoint covers them"
    );

    let (read2, out2) = s.run_to_end(2);
    assert_eq!(read2, (N - checkpoint) as u64);
    let (per_run, torn) = s.delivered(&[out1, out2]);
    assert_eq!(torn, 0);
    s.assert_none_missing(&per_run);
}

#[test]
fn sigkill_mid_run_then_restart_delivers_every_line_byte_for_byte() {
    let s = setup();
    let mut outputs = Vec::new();
    let mut checkpoints = Vec::new();
    let mut owed = Vec::new();
    // Two kills at different moments, each once its run made progress.
    for (round, lines) in [(1, N / 5), (2, N / 4)] {
        let (mut run, out) = s.start(round, true);
        s.wait_for_lines(&mut run, &out, lines);
        run.kill(); // SIGKILL
        outputs.push(out);
        checkpoints.push(s.checkpoint_lines_after_kill());
        owed.push(s.backlog_owed());
    }
    assert!(
        checkpoints[0] < N,
        "the first kill should land while the file is half read"
    );
    assert!(checkpoints[1] >= checkpoints[0], "the checkpoint went back");

    let (read3, out) = s.run_to_end(3);
    outputs.push(out);
    assert_eq!(
        read3,
        (N - checkpoints[1]) as u64,
        "the restart reads exactly from the checkpoint"
    );
    assert_eq!(s.checkpoint_lines(), N);

    let (per_run, _torn) = s.delivered(&outputs);
    let repeats = s.assert_none_missing(&per_run);
    // Repeats come only from what each kill left in flight.
    let bound = repeat_bound(&per_run[0], checkpoints[0], owed[0])
        + repeat_bound(&per_run[1], checkpoints[1], owed[1]);
    eprintln!(
        "kills at lines {checkpoints:?}, backlog owed {owed:?}: {repeats} repeats (bound {bound})"
    );
    assert!(
        repeats <= bound,
        "{repeats} repeats, at most {bound} possible"
    );
}

#[test]
fn a_replaced_file_is_read_from_line_1_and_says_so() {
    let s = setup();
    let (read1, out1) = s.run_to_end(1);
    assert_eq!(read1, N as u64);
    assert_eq!(count_lines(&out1), N);
    // Same name, other content, shorter than the checkpoint's offset.
    let replacement = &s.sent[..10];
    let mut text = Vec::new();
    for l in replacement {
        text.extend_from_slice(l);
        text.push(b'\n');
    }
    std::fs::write(&s.input, &text).unwrap();
    let out2 = s.dir.join("out2.jsonl");
    let config = s.dir.join("c2.toml");
    write_config(&config, &s.data, &s.input, &out2, false);
    let run = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["run", "-q", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("does not belong to this file") && stderr.contains("line 1"),
        "no clear warning: {stderr}"
    );
    let (mut lines, torn) = output_lines(&out2);
    assert_eq!(torn, 0);
    lines.sort();
    let mut expected = replacement.to_vec();
    expected.sort();
    assert_eq!(lines, expected);
}

/// Runs `config` to its end with a JSON summary and warnings on stderr.
fn run_quiet(config: &Path) -> std::process::Output {
    let child = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["run", "-q", "--json", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = support::process::wait_or_kill(child, RUN_LIMIT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A number in the JSON summary, by key.
fn summary_number(stdout: &[u8], key: &str) -> u64 {
    let text = String::from_utf8_lossy(stdout);
    let needle = format!("\"{key}\":");
    let at = text.find(&needle).expect("a JSON summary") + needle.len();
    text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// The middle of a file rewritten after a run finished it, keeping its
/// first 8 KiB and the 8 KiB before the checkpoint (what the checkpoint's
/// head and tail fingerprints cover): the fingerprint of everything below
/// the checkpoint tells, the file is read again from line 1 with a warning,
/// and every rewritten line is delivered byte for byte. Before, they were
/// all skipped without a word.
#[test]
fn a_file_rewritten_in_the_middle_is_read_again_not_skipped() {
    let s = setup();
    let (read1, _) = s.run_to_end(1);
    assert_eq!(read1, N as u64);
    let full = std::fs::read(&s.input).unwrap();
    let mut rewritten = full.clone();
    let mut changed = Vec::new();
    let mut at = 0usize;
    for line in &s.sent {
        let end = at + line.len() + 1;
        if at >= 8192 && end + 8192 <= full.len() {
            let key = b"\"messageId\":\"m";
            let pos = line.windows(key.len()).position(|w| w == key).unwrap();
            rewritten[at + pos + key.len() - 1] = b'r';
            changed.push(rewritten[at..end - 1].to_vec());
        }
        at = end;
    }
    assert!(changed.len() > N / 2);
    std::fs::write(&s.input, &rewritten).unwrap();
    let out2 = s.dir.join("out2.jsonl");
    let config = s.dir.join("c2.toml");
    write_config(&config, &s.data, &s.input, &out2, false);
    let run = run_quiet(&config);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("does not belong to this file") && stderr.contains("middle"),
        "no clear warning: {stderr}"
    );
    assert_eq!(summary_number(&run.stdout, "ingested"), N as u64);
    let (lines, torn) = output_lines(&out2);
    assert_eq!(torn, 0);
    let delivered: std::collections::HashSet<Vec<u8>> = lines.into_iter().collect();
    let missing = changed.iter().filter(|l| !delivered.contains(*l)).count();
    assert_eq!(missing, 0, "rewritten lines not delivered");
}

/// The writer is mid-line when a run reads the file: the half line is no
/// dead letter, it waits; once the writer finishes it, the next run
/// delivers it whole, once.
#[test]
fn a_half_written_last_line_waits_for_its_newline() {
    let s = setup();
    let full = std::fs::read(&s.input).unwrap();
    let whole = 100usize;
    let cut: usize = s.sent[..whole].iter().map(|l| l.len() + 1).sum();
    let half = cut + s.sent[whole].len() / 2;
    std::fs::write(&s.input, &full[..half]).unwrap();
    let out1 = s.dir.join("out1.jsonl");
    let config = s.dir.join("c1.toml");
    write_config(&config, &s.data, &s.input, &out1, false);
    let run = run_quiet(&config);
    assert_eq!(
        summary_number(&run.stdout, "dead_letter"),
        0,
        "{}",
        String::from_utf8_lossy(&run.stdout)
    );
    let (mut lines, torn) = output_lines(&out1);
    assert_eq!(torn, 0);
    lines.sort();
    let mut expected = s.sent[..whole].to_vec();
    expected.sort();
    assert_eq!(lines, expected);
    // The writer finishes the line.
    let done = cut + s.sent[whole].len() + 1;
    std::fs::write(&s.input, &full[..done]).unwrap();
    let out2 = s.dir.join("out2.jsonl");
    let config = s.dir.join("c2.toml");
    write_config(&config, &s.data, &s.input, &out2, false);
    let run = run_quiet(&config);
    assert_eq!(summary_number(&run.stdout, "dead_letter"), 0);
    let (lines, torn) = output_lines(&out2);
    assert_eq!(torn, 0);
    assert_eq!(lines, [s.sent[whole].clone()]);
}

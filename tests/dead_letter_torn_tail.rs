//! A dead-letter file that a killed run left ending in a torn line: the
//! next run cuts the torn line off before it appends, so every line of the
//! file stays a whole letter (the torn letter's message was never
//! acknowledged, so it is dead-lettered again). Real files, real bytes: the
//! whole letters before the torn one are kept byte for byte, and bodies are
//! not JSON (invalid UTF-8, NULs) so they go out as base64.

use laneway::engine::{DeadLetter, DeadLetters};

fn letter(n: u8) -> DeadLetter {
    DeadLetter::for_input(
        vec![0xff, 0, b'{', n, 0xfe],
        format!("in.jsonl:{n}"),
        "not JSON",
    )
}

/// The file's lines as text, so a failure shows them (letters are ASCII:
/// bodies that are not UTF-8 go out as base64).
fn lines_of(letters: &[DeadLetter]) -> String {
    let mut out = Vec::new();
    for l in letters {
        l.write_line(&mut out);
    }
    String::from_utf8(out).unwrap()
}

fn file_text(path: &std::path::Path) -> String {
    String::from_utf8(std::fs::read(path).unwrap()).unwrap()
}

/// Records `letters` through dead letters opened on `path`, as one run would.
async fn run_recording(path: &std::path::Path, letters: Vec<DeadLetter>) {
    let dead = DeadLetters::to_file(path).unwrap();
    dead.record(letters).await.unwrap();
}

#[tokio::test]
async fn a_torn_last_letter_is_cut_before_the_next_run_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.jsonl");
    run_recording(&path, vec![letter(1), letter(2)]).await;
    let whole = file_text(&path);
    assert_eq!(whole, lines_of(&[letter(1), letter(2)]));

    // The run killed halfway through its third letter: every cut of it.
    let third = lines_of(&[letter(3)]);
    for cut in [1, third.len() / 2, third.len() - 1] {
        std::fs::write(&path, format!("{whole}{}", &third[..cut])).unwrap();

        run_recording(&path, vec![letter(3), letter(4)]).await;
        assert_eq!(
            file_text(&path),
            lines_of(&[letter(1), letter(2), letter(3), letter(4)]),
            "cut {cut}: the torn letter gone, every other one whole and unchanged"
        );
    }
}

#[tokio::test]
async fn a_file_of_one_torn_letter_is_emptied_and_a_whole_file_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.jsonl");
    std::fs::write(&path, b"{\"reason\":\"not JS").unwrap();
    run_recording(&path, vec![letter(5)]).await;
    assert_eq!(file_text(&path), lines_of(&[letter(5)]));

    // A file of whole letters is appended to as it is.
    run_recording(&path, vec![letter(6)]).await;
    assert_eq!(file_text(&path), lines_of(&[letter(5), letter(6)]));
}

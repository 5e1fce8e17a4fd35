//! Reading a backlog directory's files from the outside, by the documented
//! format (docs/backlog-format.md), for the tests that damage them.

use std::path::{Path, PathBuf};

/// The segment files of a backlog directory, in log order.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// `(offset, id)` of every whole frame of a segment: a 64-byte header, then
/// frames of `u32 body length, u32 crc, u64 id, body`, each padded to 8.
pub fn frames(path: &Path) -> Vec<(u64, u64)> {
    let bytes = std::fs::read(path).unwrap();
    let mut at = 64usize;
    let mut out = Vec::new();
    while at + 16 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let id = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap());
        let total = (16 + len).div_ceil(8) * 8;
        if len == 0 || at + total > bytes.len() {
            break;
        }
        out.push((at as u64, id));
        at += total;
    }
    out
}

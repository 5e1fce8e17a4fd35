//! The library's import direction, checked on its source: every module may
//! use only the modules `ALLOWED` gives it (those before it in the flow of
//! a message, and the leaves), every module of `src/` is in the table, and
//! the module map in `src/lib.rs` and in `docs/architecture.md` names every
//! one. A `crate::x` written anywhere in a module's files (code, or a doc
//! link) counts as a use of `x`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LEAVES: &[&str] = &[
    "ack",
    "backoff",
    "secret",
    "env",
    "broker_url",
    "filesystem",
    "knob",
];

/// Each module and what it may use besides the leaves (a leaf lists the
/// leaves it may use).
const ALLOWED: &[(&str, &[&str])] = &[
    ("ack", &[]),
    ("backoff", &[]),
    ("secret", &[]),
    ("filesystem", &[]),
    ("knob", &[]),
    ("env", &["secret"]),
    ("broker_url", &["env", "secret", "knob"]),
    ("message", &[]),
    ("source", &["message"]),
    ("backlog", &["message"]),
    ("sink", &["message"]),
    ("amqp", &["message", "source", "backlog", "sink"]),
    ("amqp1", &["message", "source"]),
    ("pulsar", &["message", "source"]),
    ("kafka", &["message", "source", "sink"]),
    ("http", &["message", "sink"]),
    ("engine", &["message", "source", "backlog", "sink"]),
    ("admin", &["message", "source", "backlog", "sink", "engine"]),
    (
        "config",
        &[
            "message", "source", "backlog", "sink", "amqp", "amqp1", "pulsar", "kafka", "http",
            "engine", "admin",
        ],
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules named by `crate::name` in `text`.
fn uses(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.insert(name);
        }
    }
    found
}

/// The top-level modules of `src/` (not the program in `src/bin`) and the
/// files of each.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "bin" {
            continue;
        }
        let files = modules.entry(name).or_default();
        if path.is_dir() {
            rust_files(&path, files);
        } else {
            files.push(path);
        }
    }
    modules
}

#[test]
fn every_module_uses_only_what_comes_before_it() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for (module, files) in modules() {
        let Some(may) = allowed.get(module.as_str()) else {
            wrong.push(format!(
                "src/{module} is not in ALLOWED: give it its place in the flow"
            ));
            continue;
        };
        let leaf = LEAVES.contains(&module.as_str());
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for used in uses(&text) {
                let ok = used == module
                    || may.contains(&used.as_str())
                    || (!leaf && LEAVES.contains(&used.as_str()));
                if !ok {
                    wrong.push(format!("{} uses crate::{used}", file.display()));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the flow:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_module_maps_name_every_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let map = lib.split("#![").next().unwrap();
    let architecture = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let mut missing = Vec::new();
    for module in modules().keys() {
        let named = format!("`{module}`");
        let linked = format!("[`{module}`]");
        if !map.contains(&named) && !map.contains(&linked) {
            missing.push(format!("src/lib.rs's module map does not name {module}"));
        }
        if !architecture.contains(&named) {
            missing.push(format!("docs/architecture.md does not name {module}"));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn the_check_sees_a_use_written_any_way() {
    let text = "use crate::engine::Group;\n/// [`crate::config`]\nlet x = crate::amqp1::url();";
    let found: Vec<String> = uses(text).into_iter().collect();
    assert_eq!(found, ["amqp1", "config", "engine"]);
}

//! `--apply`: the recommended knobs written into the group's table of the
//! config file, everything else in the file as it was.
//!
//! Invariants: comments, blank lines, key order and every other value are
//! kept (the file is edited as a TOML document, not re-serialised); a knob
//! already present keeps its place and its trailing comment, a missing one
//! is added to the group's table; the file is replaced in one rename, and
//! only after the edited text has passed the same checks as `laneway
//! check-config`.

use std::path::Path;

use laneway::config::FileConfig;
use toml_edit::{DocumentMut, Item, Table, Value};

use super::trial::Knobs;

/// Writes `knobs` into the `[[groups]]` table named `group` of the config
/// at `path`, and checks the result as `check-config` would.
pub fn apply(path: &Path, group: &str, knobs: &Knobs) -> Result<(), String> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("--apply: {shown}: {e}"))?;
    let edited = edit(&text, group, knobs).map_err(|e| format!("--apply: {shown}: {e}"))?;
    // Checked before it replaces the file: a refused edit leaves it as it was.
    FileConfig::parse(&edited, &shown)
        .map_err(|e| format!("--apply: the edited file would not pass check-config: {e}"))?;
    let tmp = path.with_extension("toml.tune-tmp");
    std::fs::write(&tmp, &edited)
        .map_err(|e| format!("--apply: writing {}: {e}", tmp.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("--apply: replacing {shown}: {e}")
    })?;
    FileConfig::load(path).map_err(|e| format!("--apply: {e}"))?;
    Ok(())
}

/// The config text with the knobs set in `group`'s table.
pub fn edit(text: &str, group: &str, knobs: &Knobs) -> Result<String, String> {
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("not TOML: {e}"))?;
    let groups = doc
        .get_mut("groups")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or("no [[groups]] tables to write into")?;
    let table = groups
        .iter_mut()
        .find(|t| t.get("name").and_then(Item::as_str) == Some(group))
        .ok_or_else(|| format!("no [[groups]] table with name = {group:?}"))?;
    set(table, "slots", Value::from(knobs.slots as i64));
    // A fixed count replaces "auto", whose bounds would then be refused.
    table.remove("min_slots");
    table.remove("max_slots");
    set(table, "batch_size", Value::from(knobs.batch_size as i64));
    set(table, "backlog_share", Value::from(knobs.backlog_share));
    set(
        table,
        "live_capacity",
        Value::from(knobs.live_capacity as i64),
    );
    Ok(doc.to_string())
}

/// Sets `key` to `value`, keeping an existing entry's place and decoration
/// (its comments); a new key goes after the table's last plain value.
fn set(table: &mut Table, key: &str, mut value: Value) {
    match table.get_mut(key).and_then(Item::as_value_mut) {
        Some(old) => {
            *value.decor_mut() = old.decor().clone();
            *old = value;
        }
        None => {
            table.insert(key, Item::Value(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# top comment\n\n[[groups]]\nname = \"a\"\nslots = 4      # in flight\n# a note\nsink = { type = \"null\" }\n\n[[groups]]\nname = \"b\"\nslots = 2\n";

    #[test]
    fn a_fixed_pick_replaces_auto_and_its_bounds() {
        let file = "[[groups]]\nname = \"a\"\nslots = \"auto\"\nmin_slots = 2\nmax_slots = 64\n";
        let knobs = Knobs {
            slots: 8,
            batch_size: 256,
            backlog_share: 0.2,
            live_capacity: 10_000,
        };
        let out = edit(file, "a", &knobs).unwrap();
        assert!(out.contains("slots = 8\n"), "{out}");
        assert!(
            !out.contains("min_slots") && !out.contains("max_slots"),
            "{out}"
        );
        FileConfig::parse(&out, "t.toml").unwrap();
    }

    #[test]
    fn only_the_named_group_changes_and_comments_stay() {
        let knobs = Knobs {
            slots: 16,
            batch_size: 64,
            backlog_share: 0.1,
            live_capacity: 10_000,
        };
        let out = edit(FILE, "a", &knobs).unwrap();
        assert!(
            out.starts_with(
                "# top comment\n\n[[groups]]\nname = \"a\"\nslots = 16      # in flight\n# a note\n"
            ),
            "{out}"
        );
        assert!(out.contains("batch_size = 64"));
        assert!(out.contains("backlog_share = 0.1"));
        assert!(out.ends_with("name = \"b\"\nslots = 2\n"), "{out}");
        assert!(FileConfig::parse(&out, "t.toml").is_ok(), "{out}");
        assert!(edit(FILE, "c", &knobs).unwrap_err().contains("\"c\""));
    }
}

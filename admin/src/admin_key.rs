//! APISIX's first-start behaviour for the admin key (spec §1.5): an empty key
//! of an `admin`-role entry is replaced by 32 random ASCII letters and written
//! back into config.yaml, so the operator finds it there.
//!
//! The file is edited as text, not re-serialised, so comments and layout
//! survive: only the `key:` line of the entry changes (or a minimal
//! `admin_key` section is added). The edited text is parsed again and must
//! yield exactly the expected keys before it replaces the file; anything this
//! editor does not understand (e.g. a flow-style `admin_key: [...]`) leaves the
//! file alone and the key is logged instead.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;
use strait_engine::config::{AdminRole, StraitConfig};

const KEY_LETTERS: usize = 32;

pub fn ensure_admin_key(config_path: &Path, config: &mut StraitConfig) -> Option<String> {
    if !config.needs_generated_admin_key() {
        return None;
    }
    let mut expected = config.admin.keys.clone();
    let mut generated = Vec::new();
    for (index, key) in expected.iter_mut().enumerate() {
        if key.role == AdminRole::Admin && key.key.is_empty() {
            match random_letters(KEY_LETTERS) {
                Ok(letters) => {
                    key.key = letters.clone();
                    generated.push((index, letters));
                }
                Err(e) => {
                    // Without randomness there is no safe key; an empty key
                    // matches no request, so the API stays closed.
                    log::error!("cannot generate an admin key (reading /dev/urandom: {e}); the Admin API will refuse every request until a key is set in {}", config_path.display());
                    return None;
                }
            }
        }
    }
    let written = fs::read_to_string(config_path).map_err(|e| e.to_string()).and_then(|text| {
        let edited =
            rewrite(&text, &generated).ok_or("its admin_key section has a layout this editor does not handle")?;
        let reparsed = StraitConfig::parse(&edited).map_err(|e| format!("the edited file would not parse: {e}"))?;
        if reparsed.admin.keys != expected {
            return Err("the edited file would not hold the generated key".to_string());
        }
        replace_file(config_path, &edited).map_err(|e| e.to_string())
    });
    config.admin.keys = expected;
    let first = generated.first().map(|(_, key)| key.clone());
    match written {
        Ok(()) => log::warn!(
            "generated a new admin key and saved it to {} (deployment.admin.admin_key)",
            config_path.display()
        ),
        Err(e) => {
            for (index, key) in &generated {
                log::warn!(
                    "generated admin key for deployment.admin.admin_key[{index}]: {key} (could not save it to {}: {e})",
                    config_path.display()
                );
            }
        }
    }
    first
}

/// Letters from /dev/urandom, without modulo bias (bytes ≥ 208 are redrawn).
fn random_letters(count: usize) -> std::io::Result<String> {
    const LETTERS: &[u8; 52] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut urandom = File::open("/dev/urandom")?;
    let mut out = String::with_capacity(count);
    let mut buffer = [0u8; 64];
    while out.len() < count {
        urandom.read_exact(&mut buffer)?;
        for byte in buffer {
            if out.len() < count && usize::from(byte) < LETTERS.len() * 4 {
                out.push(char::from(LETTERS[usize::from(byte) % LETTERS.len()]));
            }
        }
    }
    Ok(out)
}

/// Same folder temp file, fsync, rename, fsync the folder: the config file is
/// either the old or the new text after a crash. Permissions are kept.
fn replace_file(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = dir.join(format!(".{name}.strait-tmp"));
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(text.as_bytes())?;
        file.set_permissions(fs::metadata(path)?.permissions())?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// The text with each `(entry index, key)` written into
/// `deployment.admin.admin_key[index].key`; `None` if the layout is not one
/// this line editor understands.
fn rewrite(text: &str, keys: &[(usize, String)]) -> Option<String> {
    let crlf = text.contains("\r\n");
    let normal = text.replace("\r\n", "\n");
    let mut lines: Vec<String> = normal.lines().map(str::to_string).collect();
    edit(&mut lines, keys)?;
    let mut out = lines.join("\n");
    out.push('\n');
    Some(if crlf { out.replace('\n', "\r\n") } else { out })
}

fn edit(lines: &mut Vec<String>, keys: &[(usize, String)]) -> Option<()> {
    let Some(deployment) = find_child(lines, None, "deployment")? else {
        // No deployment section at all: the config used the default single key.
        let [(0, key)] = keys else { return None };
        if lines.last().is_some_and(|l| !l.trim().is_empty()) {
            lines.push(String::new());
        }
        lines.push("deployment:".into());
        lines.extend(section_lines("  ", 1, &["admin:", "admin_key:"], key));
        return Some(());
    };
    let step = child_indent(lines, deployment).unwrap_or(indent(&lines[deployment]) + 2) - indent(&lines[deployment]);
    let Some(admin) = find_child(lines, Some(deployment), "admin")? else {
        let [(0, key)] = keys else { return None };
        let pad = " ".repeat(step);
        let base = indent(&lines[deployment]) / step.max(1) + 1;
        let new = section_lines(&pad, base, &["admin:", "admin_key:"], key);
        lines.splice(deployment + 1..deployment + 1, new);
        return Some(());
    };
    let admin_key = find_child(lines, Some(admin), "admin_key")?;
    let admin_key = match admin_key {
        Some(line) if !inline_value(&lines[line]).is_empty() => {
            // `admin_key: ~` / `null` / `[]` mean "the default key": turn the
            // line into a block holding that one entry.
            let value = inline_value(&lines[line]);
            if !["~", "null", "[]"].contains(&value.as_str()) {
                return None;
            }
            let [(0, key)] = keys else { return None };
            let at = indent(&lines[line]);
            lines[line] = format!("{}admin_key:", " ".repeat(at));
            let item_pad = " ".repeat(at + step);
            lines.splice(line + 1..line + 1, item_lines(&item_pad, key));
            return Some(());
        }
        Some(line) => line,
        None => {
            let [(0, key)] = keys else { return None };
            let at = child_indent(lines, admin).unwrap_or(indent(&lines[admin]) + step);
            let mut new = vec![format!("{}admin_key:", " ".repeat(at))];
            new.extend(item_lines(&" ".repeat(at + step), key));
            lines.splice(admin + 1..admin + 1, new);
            return Some(());
        }
    };
    let items = sequence_items(lines, admin_key);
    if items.is_empty() {
        // `admin_key:` with nothing under it is null: the default key.
        let [(0, key)] = keys else { return None };
        let pad = " ".repeat(indent(&lines[admin_key]) + step);
        lines.splice(admin_key + 1..admin_key + 1, item_lines(&pad, key));
        return Some(());
    }
    // Edit from the last item up so earlier line numbers stay valid.
    let mut sorted: Vec<&(usize, String)> = keys.iter().collect();
    sorted.sort_by_key(|k| std::cmp::Reverse(k.0));
    for (index, key) in sorted {
        let (start, end) = *items.get(*index)?;
        set_item_key(lines, start, end, key)?;
    }
    Some(())
}

/// `deployment:` + nested keys + one admin entry, indented `pad` per level.
fn section_lines(pad: &str, level: usize, keys: &[&str], key: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (depth, name) in keys.iter().enumerate() {
        out.push(format!("{}{name}", pad.repeat(level + depth)));
    }
    out.extend(item_lines(&pad.repeat(level + keys.len()), key));
    out
}

fn item_lines(pad: &str, key: &str) -> Vec<String> {
    vec![format!("{pad}- name: admin"), format!("{pad}  key: {key}"), format!("{pad}  role: admin")]
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// The value written after `key:` on its line, without a trailing comment.
fn inline_value(line: &str) -> String {
    let rest = line.split_once(':').map_or("", |(_, r)| r);
    strip_comment(rest).trim().to_string()
}

/// Cuts a ` # comment`; a `#` inside a value (no space before it) stays.
fn strip_comment(text: &str) -> &str {
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1] == b' ' || bytes[i - 1] == b'\t') {
            return &text[..i];
        }
    }
    text
}

/// The line range of a block key's children: until the next content line
/// indented no deeper than the key (a `- ` item at the key's own indent still
/// belongs to it: YAML's indentless sequence).
fn block_end(lines: &[String], key_line: usize) -> usize {
    let at = indent(&lines[key_line]);
    let mut end = key_line + 1;
    for (i, line) in lines.iter().enumerate().skip(key_line + 1) {
        if !is_content(line) {
            continue;
        }
        let deeper = indent(line) > at || (indent(line) == at && line.trim_start().starts_with('-'));
        if !deeper {
            break;
        }
        end = i + 1;
    }
    end
}

fn child_indent(lines: &[String], parent: usize) -> Option<usize> {
    let end = block_end(lines, parent);
    lines[parent + 1..end].iter().find(|l| is_content(l)).map(|l| indent(l)).filter(|&i| i > indent(&lines[parent]))
}

/// The line of `name:` among `parent`'s direct children (top level for
/// `None`). `Some(None)`: not there. `None`: the parent holds an inline value.
fn find_child(lines: &[String], parent: Option<usize>, name: &str) -> Option<Option<usize>> {
    let (start, end, at) = match parent {
        None => (0, lines.len(), 0),
        Some(p) => {
            if !inline_value(&lines[p]).is_empty() {
                return None;
            }
            match child_indent(lines, p) {
                Some(at) => (p + 1, block_end(lines, p), at),
                None => return Some(None),
            }
        }
    };
    let prefix = format!("{name}:");
    Some((start..end).find(|&i| {
        let line = &lines[i];
        is_content(line)
            && indent(line) == at
            && line
                .trim_start()
                .strip_prefix(&prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t'))
    }))
}

/// `(first line, end line)` of each `- ` item under a block sequence key.
fn sequence_items(lines: &[String], key_line: usize) -> Vec<(usize, usize)> {
    let end = block_end(lines, key_line);
    let mut starts = Vec::new();
    let mut dash_indent = None;
    for (i, line) in lines.iter().enumerate().take(end).skip(key_line + 1) {
        if !is_content(line) {
            continue;
        }
        let is_dash = line.trim_start() == "-" || line.trim_start().starts_with("- ");
        if is_dash && dash_indent.is_none_or(|d| d == indent(line)) {
            dash_indent = Some(indent(line));
            starts.push(i);
        }
    }
    let mut items = Vec::new();
    for (n, &start) in starts.iter().enumerate() {
        items.push((start, starts.get(n + 1).copied().unwrap_or(end)));
    }
    items
}

/// Writes `key` into the item spanning `start..end`, block or flow style.
fn set_item_key(lines: &mut Vec<String>, start: usize, end: usize, key: &str) -> Option<()> {
    let dash_line = lines[start].clone();
    let after_dash = dash_line.trim_start().strip_prefix('-')?;
    let content_col = indent(&dash_line) + 1 + (after_dash.len() - after_dash.trim_start().len());
    if after_dash.trim_start().starts_with('{') {
        lines[start] = set_flow_key(&dash_line, key)?;
        return Some(());
    }
    // The `key:` line may be the dash line itself (`- key: ''`) or a child.
    let found = (start..end).find_map(|i| {
        let line = &lines[i];
        let body_col = if i == start { content_col } else { indent(line) };
        if !is_content(line) || line.len() < body_col {
            return None;
        }
        let rest = line[body_col..].strip_prefix("key:")?;
        if !(rest.is_empty() || rest.starts_with(' ')) {
            return None;
        }
        let comment = &rest[strip_comment(rest).len()..];
        let comment = if comment.is_empty() { String::new() } else { format!("  {comment}") };
        Some((i, format!("{}key: {key}{comment}", &line[..body_col])))
    });
    if let Some((i, line)) = found {
        lines[i] = line;
        return Some(());
    }
    // No `key:` at all: add one beside the entry's other fields.
    let col = if after_dash.trim().is_empty() {
        child_indent(lines, start).unwrap_or(indent(&dash_line) + 2)
    } else {
        content_col
    };
    lines.insert(start + 1, format!("{}key: {key}", " ".repeat(col)));
    Some(())
}

/// `- {name: admin, key: "", role: admin}` with the key's value replaced.
fn set_flow_key(line: &str, key: &str) -> Option<String> {
    let open = line.find('{')?;
    let close = line.rfind('}')?;
    let inner = &line[open + 1..close];
    let mut fields: Vec<String> = inner.split(',').map(|f| f.trim().to_string()).collect();
    // A quoted comma would break this split; the re-parse check catches it.
    match fields.iter_mut().find(|f| f.starts_with("key:")) {
        Some(field) => *field = format!("key: {key}"),
        None => fields.push(format!("key: {key}")),
    }
    Some(format!("{}{{{}}}{}", &line[..open], fields.join(", "), &line[close + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn run(text: &str) -> (Option<String>, String, StraitConfig) {
        let dir = TempDir::new("admin-key");
        let path = dir.path().join("config.yaml");
        fs::write(&path, text).unwrap();
        let mut config = StraitConfig::parse(text).unwrap();
        let key = ensure_admin_key(&path, &mut config);
        (key, fs::read_to_string(&path).unwrap(), config)
    }

    fn assert_letters(key: &str) {
        assert_eq!(key.len(), 32);
        assert!(key.bytes().all(|b| b.is_ascii_alphabetic()), "{key}");
    }

    #[test]
    fn an_empty_key_line_is_rewritten_and_comments_are_kept() {
        let text = "# Strait config\napisix:\n  proxy_mode: stream   # stream only\ndeployment:\n  admin:\n    # who may call the Admin API\n    admin_key:\n      - name: admin\n        key: ''   # generated at first start\n        role: admin\n      - name: viewer\n        key: seen\n        role: viewer\n    allow_admin: ~\n";
        let (key, written, config) = run(text);
        let key = key.expect("a key is generated");
        assert_letters(&key);
        let expected =
            text.replace("key: ''   # generated at first start", &format!("key: {key}  # generated at first start"));
        assert_eq!(written, expected);
        assert_eq!(config.admin.keys[0].key, key);
        assert_eq!(config.admin.keys[1].key, "seen");
        assert_eq!(StraitConfig::parse(&written).unwrap(), config);
    }

    #[test]
    fn keys_are_random_not_fixed() {
        let a = run("deployment: {}\n");
        let b = run("apisix: {}\n");
        assert_ne!(a.0, b.0);
    }

    #[test]
    fn a_missing_section_is_appended() {
        let text = "# only listeners here\napisix:\n  proxy_mode: stream\n";
        let (key, written, _) = run(text);
        let key = key.unwrap();
        assert!(written.starts_with(text), "{written}");
        assert!(written.contains(&format!("key: {key}")));
        assert_eq!(StraitConfig::parse(&written).unwrap().admin.keys[0].key, key);
    }

    #[test]
    fn missing_admin_or_admin_key_is_inserted_in_place() {
        for text in [
            "deployment:\n  role: traditional\napisix: {}\n",
            "deployment:\n    admin:\n        allow_admin: ~\n# tail comment\n",
            "deployment:\n  admin:\n    admin_key: ~\n",
            "deployment:\n  admin:\n    admin_key:\n  role: traditional\n",
            "deployment:\n  admin:\n    admin_key:\n    - name: admin\n      role: admin\n",
            "deployment:\n  admin:\n    admin_key:\n      - {name: admin, key: \"\", role: admin}\n",
        ] {
            let (key, written, _) = run(text);
            let key = key.unwrap();
            let parsed = StraitConfig::parse(&written).unwrap();
            assert_eq!(parsed.admin.keys.len(), 1, "{written}");
            assert_eq!(parsed.admin.keys[0].key, key, "{written}");
        }
    }

    #[test]
    fn nothing_happens_when_keys_are_set_or_not_required() {
        for text in [
            "deployment:\n  admin:\n    admin_key:\n      - {name: a, key: k, role: admin}\n",
            "deployment:\n  admin:\n    admin_key_required: false\n",
        ] {
            let (key, written, _) = run(text);
            assert_eq!(key, None);
            assert_eq!(written, text);
        }
    }

    #[test]
    fn an_unwritable_file_still_yields_a_key() {
        let dir = TempDir::new("admin-key-missing");
        let path = dir.path().join("absent").join("config.yaml");
        let mut config = StraitConfig::parse("").unwrap();
        let key = ensure_admin_key(&path, &mut config).unwrap();
        assert_letters(&key);
        assert_eq!(config.admin.keys[0].key, key);
    }
}

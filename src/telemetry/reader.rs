//! Reading our own JSON logs back: the dated files of one program in order,
//! the last lines, and a readable rendering of one line. Used by
//! `spfs service logs` and `spfs doctor`.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::files::is_dated_file;

/// `PREFIX.YYYY-MM-DD.log` files in `dir`, oldest first.
pub fn dated_files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| is_dated_file(&e.file_name().to_string_lossy(), prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The last `n` lines over all of a program's files, oldest first.
pub fn last_lines(dir: &Path, prefix: &str, n: usize) -> io::Result<Vec<String>> {
    let mut lines: Vec<String> = Vec::new();
    for file in dated_files(dir, prefix).iter().rev() {
        let text = std::fs::read_to_string(file)?;
        let mut these: Vec<String> = text.lines().map(str::to_owned).collect();
        these.append(&mut lines);
        lines = these;
        if lines.len() >= n {
            break;
        }
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines.split_off(skip))
}

/// The newest line whose `event` is one of `events`, searching newest files first.
pub fn last_event(dir: &Path, prefix: &str, events: &[&str]) -> Option<Value> {
    for file in dated_files(dir, prefix).iter().rev() {
        let text = std::fs::read_to_string(file).ok()?;
        for line in text.lines().rev() {
            if let Ok(value) = serde_json::from_str::<Value>(line) {
                if events.iter().any(|e| value["event"] == *e) {
                    return Some(value);
                }
            }
        }
    }
    None
}

/// Fields shown in the readable form after the message, in this order when present.
const KEY_FIELDS: &[&str] = &[
    "outcome",
    "reason",
    "error",
    "elapsed_ms",
    "startup_ms",
    "root_pid",
    "env_spec",
    "service_pid",
];

/// `TIME LEVEL EVENT MESSAGE key=value...`; a line that is not JSON comes back as is.
pub fn readable(line: &str) -> String {
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(line) else {
        return line.to_owned();
    };
    let text = |key: &str| fields.get(key).and_then(Value::as_str).unwrap_or("");
    // 2026-11-26T07:13:15.038442726Z -> 2026-11-26 07:13:15.038
    let time = text("timestamp");
    let time = if time.len() >= 23 {
        format!("{} {}", &time[..10], &time[11..23])
    } else {
        time.to_owned()
    };
    let mut out = format!(
        "{time} {:<5} {:<28} {}",
        text("level").to_uppercase(),
        text("event"),
        text("message")
    );
    let mut keys: Vec<&str> = KEY_FIELDS
        .iter()
        .copied()
        .filter(|k| fields.contains_key(*k))
        .collect();
    keys.extend(
        fields
            .keys()
            .map(String::as_str)
            .filter(|k| !KEY_FIELDS.contains(k))
            .filter(|k| !["timestamp", "level", "event", "message"].contains(k)),
    );
    for key in keys {
        let value = match &fields[key] {
            Value::String(s) => s.clone(),
            Value::Number(n) => match n.as_f64() {
                Some(f) if key.ends_with("_ms") => format!("{f:.2}"),
                _ => n.to_string(),
            },
            other => other.to_string(),
        };
        out.push_str(&format!(" {key}={value}"));
    }
    out
}

/// Follows the file a symlink points to, across rotation: calls `emit` for
/// every complete line appended after this call. Runs until the process ends.
pub fn follow(link: &Path, mut emit: impl FnMut(&str) -> io::Result<()>) -> io::Result<()> {
    let current = |link: &Path| std::fs::canonicalize(link).ok();
    let mut path = current(link);
    let mut offset = path
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len());
    let mut pending = String::new();
    loop {
        if let Some(file_path) = &path {
            if let Ok(mut file) = std::fs::File::open(file_path) {
                let len = file.metadata()?.len();
                if len < offset {
                    offset = 0; // truncated
                }
                file.seek(SeekFrom::Start(offset))?;
                let mut chunk = String::new();
                let read = file.read_to_string(&mut chunk)?;
                offset += read as u64;
                pending.push_str(&chunk);
                while let Some(end) = pending.find('\n') {
                    let line: String = pending.drain(..=end).collect();
                    emit(line.trim_end_matches('\n'))?;
                }
            }
        }
        // Rotation: the symlink now names another file; the old one is complete.
        let now = current(link);
        if now.is_some() && now != path {
            path = now;
            offset = 0;
            continue;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

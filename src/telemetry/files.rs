//! Daily log files: `PREFIX.YYYY-MM-DD.log`, a `PREFIX.log` symlink on the
//! current one, and deletion of files older than the newest `KEEP_DAYS`.
//!
//! Written here rather than by `tracing-appender`, for three guarantees:
//!
//! - **Private, never redirected**: the dir must pass the runtime dir's rules
//!   (ours, not group/other writable, not a symlink; created 0700), and files
//!   are opened `O_NOFOLLOW`, mode 0600, so nobody can point our lines at
//!   another file or read them.
//! - **Whole lines**: each line is one `write(2)` with `O_APPEND`; a short
//!   write (a full filesystem) is taken back with `ftruncate`, so a reader
//!   never meets half a line glued to the next.
//! - **Losses counted**: a line that cannot be written is counted, and once
//!   writing works again a `log.lines_dropped` line says how many went.
//!
//! Pruning is by exact date pattern: the launcher's `spfs` prefix would
//! otherwise also match (and delete) the service's `spfs-fuse-macos.*` files.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tracing_subscriber::fmt::MakeWriter;

use crate::private_dir::DirError;

/// The variable that moves the log dir, and a safe value to suggest.
pub const LOG_DIR_SETTING: (&str, &str) = ("SPFS_LOG_DIR", "$HOME/.spfs-logs");

/// How many daily files of each program are kept.
pub const KEEP_DAYS: usize = 14;

pub struct DailyLog {
    dir: PathBuf,
    prefix: &'static str,
    current: Mutex<Current>,
    /// Lines not written since the last `log.lines_dropped` report.
    dropped: AtomicU64,
}

struct Current {
    /// Days since the epoch (UTC) of `file`.
    day: u64,
    file: Option<File>,
}

fn today() -> u64 {
    super::unix_now().max(0) as u64 / 86_400
}

/// `PREFIX.YYYY-MM-DD.log` for today (UTC), the file lines go to.
pub fn current_file_name(prefix: &str) -> String {
    let date = time::OffsetDateTime::now_utc().date();
    format!(
        "{prefix}.{:04}-{:02}-{:02}.log",
        date.year(),
        date.month() as u8,
        date.day()
    )
}

/// Opens a log file for appending: created 0600, never through a symlink,
/// and only if it is a regular file of ours with no other name (a hard link
/// to someone else's file is refused); an older file left 0644 becomes 0600.
pub fn open_private(path: &Path) -> io::Result<File> {
    let file = open_nofollow(path)?;
    let meta = file.metadata()?;
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}: {why}; remove it", path.display()),
        ))
    };
    if !meta.is_file() {
        return refuse("not a regular file".into());
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return refuse(format!("owned by uid {}, not by you", meta.uid()));
    }
    if meta.nlink() > 1 {
        return refuse(format!("it has {} hard links", meta.nlink()));
    }
    if meta.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| match err.raw_os_error() {
            Some(libc::ELOOP) => io::Error::new(
                err.kind(),
                format!(
                    "{} is a symlink; log files are never opened through one (remove it)",
                    path.display()
                ),
            ),
            _ => io::Error::new(err.kind(), format!("{}: {err}", path.display())),
        })
}

/// Writes `line` with one `write(2)`, or nothing: a short write is cut off
/// again, as long as no other process has appended after it.
pub fn write_whole(file: &File, line: &[u8]) -> io::Result<()> {
    let mut writer = file;
    let written = writer.write(line)?;
    if written == line.len() {
        return Ok(());
    }
    // O_APPEND: the offset is now the end of our partial line.
    let end = writer.stream_position()?;
    if file.metadata()?.len() == end {
        file.set_len(end - written as u64)?;
    }
    Err(io::Error::new(
        io::ErrorKind::StorageFull,
        format!("wrote {written} of {} bytes", line.len()),
    ))
}

impl DailyLog {
    /// Checks (or creates, 0700) the dir and opens today's file. The error
    /// says what is wrong and what to do.
    pub fn open(dir: &Path, prefix: &'static str) -> Result<DailyLog, String> {
        crate::private_dir::ensure(dir, "log dir", LOG_DIR_SETTING).map_err(|err| match err {
            DirError::Unsafe { problem, fix } => {
                format!(
                    "log dir {} is unsafe: {problem}.\n  fix: {fix}",
                    dir.display()
                )
            }
            DirError::Io { context, source } => format!("{context}: {source}"),
        })?;
        let path = dir.join(current_file_name(prefix));
        let file = open_private(&path).map_err(|e| format!("cannot open the log file: {e}"))?;
        let log = DailyLog {
            dir: dir.to_owned(),
            prefix,
            current: Mutex::new(Current {
                day: today(),
                file: Some(file),
            }),
            dropped: AtomicU64::new(0),
        };
        log.on_new_day();
        Ok(log)
    }

    /// Lines dropped and not yet reported.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes one line whole (see the module docs), first reporting any
    /// lines dropped before it.
    pub fn write_line(&self, line: &[u8]) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let day = today();
        if current.day != day || current.file.is_none() {
            current.file = open_private(&self.dir.join(current_file_name(self.prefix))).ok();
            if current.day != day {
                current.day = day;
                self.on_new_day();
            }
        }
        let Some(file) = &current.file else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let pending = self.dropped.load(Ordering::Relaxed);
        if pending > 0 {
            if write_whole(file, &dropped_report(pending)).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.dropped.fetch_sub(pending, Ordering::Relaxed);
        }
        if write_whole(file, line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Points the symlink at today's file and prunes; errors only cost tidiness.
    /// A link already on today's file means today's first process did both:
    /// the launcher then skips listing the dir, which every `spfs run` would pay.
    fn on_new_day(&self) {
        let target = current_file_name(self.prefix);
        let link = self.dir.join(format!("{}.log", self.prefix));
        if std::fs::read_link(&link).ok().as_deref() == Some(Path::new(&target)) {
            return;
        }
        // Replace atomically: a reader running `tail -F` never sees it missing.
        let temp = self
            .dir
            .join(format!(".{}.log.{}", self.prefix, std::process::id()));
        let _ = std::fs::remove_file(&temp);
        if std::os::unix::fs::symlink(&target, &temp).is_ok()
            && std::fs::rename(&temp, &link).is_err()
        {
            let _ = std::fs::remove_file(&temp);
        }
        self.prune();
    }

    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut dated: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| is_dated_file(name, self.prefix))
            .collect();
        if dated.len() <= KEEP_DAYS {
            return;
        }
        // ISO dates sort as text.
        dated.sort();
        for old in &dated[..dated.len() - KEEP_DAYS] {
            let _ = std::fs::remove_file(self.dir.join(old));
        }
    }
}

/// The `log.lines_dropped` line, in the format of every other line
/// (`telemetry::json`). Written by hand: it is written from inside the writer.
fn dropped_report(dropped: u64) -> Vec<u8> {
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let line = serde_json::json!({
        "timestamp": timestamp,
        "level": "warn",
        "pid": std::process::id(),
        "event": "log.lines_dropped",
        "message": "log lines could not be written (filesystem full or file unusable) and were dropped",
        "dropped": dropped,
    });
    format!("{line}\n").into_bytes()
}

/// Exactly `PREFIX.YYYY-MM-DD.log`.
pub fn is_dated_file(name: &str, prefix: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|r| r.strip_suffix(".log"))
    else {
        return false;
    };
    let bytes = rest.as_bytes();
    bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        })
}

/// Collects one formatted event and writes it as one line when dropped.
pub struct LineWriter<'a> {
    log: &'a DailyLog,
    buf: Vec<u8>,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.log.write_line(&self.buf);
        }
    }
}

impl<'a> MakeWriter<'a> for DailyLog {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            log: self,
            buf: Vec::with_capacity(512),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dated_file_names_are_matched_exactly() {
        assert!(is_dated_file("spfs.2026-11-26.log", "spfs"));
        assert!(!is_dated_file("spfs-fuse-macos.2026-11-26.log", "spfs"));
        assert!(is_dated_file(
            "spfs-fuse-macos.2026-11-26.log",
            "spfs-fuse-macos"
        ));
        assert!(!is_dated_file("spfs.log", "spfs"));
        assert!(!is_dated_file("spfs-fuse-macos.stderr", "spfs-fuse-macos"));
    }

    #[test]
    fn a_full_device_drops_lines_and_counts_them() {
        let full = OpenOptions::new().append(true).open("/dev/full").unwrap();
        assert!(write_whole(&full, b"{}\n").is_err());
        let dir = tempfile::tempdir().unwrap();
        let log = DailyLog::open(&dir.path().join("logs"), "spfs").unwrap();
        log.current.lock().unwrap().file = Some(full);
        log.write_line(b"{\"a\":1}\n");
        log.write_line(b"{\"a\":2}\n");
        assert_eq!(log.dropped(), 2);
        // Writable again: the report comes first, then the line.
        log.current.lock().unwrap().file = None;
        log.write_line(b"{\"a\":3}\n");
        assert_eq!(log.dropped(), 0);
        let text = std::fs::read_to_string(dir.path().join("logs").join(current_file_name("spfs")))
            .unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["event"], "log.lines_dropped");
        assert_eq!(lines[0]["dropped"], 2);
        assert_eq!(lines[1]["a"], 3);
    }

    #[test]
    fn files_are_private_and_symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let log = DailyLog::open(&logs, "spfs").unwrap();
        log.write_line(b"{}\n");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&logs), 0o700);
        assert_eq!(mode(&logs.join(current_file_name("spfs"))), 0o600);
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, logs.join("other.log")).unwrap();
        let err = open_private(&logs.join("other.log")).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");

        // A hard link to another file, and an old world-readable file.
        std::fs::hard_link(&victim, logs.join("linked.log")).unwrap();
        let err = open_private(&logs.join("linked.log")).unwrap_err();
        assert!(err.to_string().contains("hard links"), "{err}");
        let old = logs.join("old.log");
        std::fs::write(&old, "").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        open_private(&old).unwrap();
        assert_eq!(mode(&old), 0o600);
    }

    #[test]
    fn prune_keeps_the_newest_and_spares_other_programs() {
        let dir = tempfile::tempdir().unwrap();
        for day in 1..=20 {
            std::fs::write(dir.path().join(format!("spfs.2026-01-{day:02}.log")), "").unwrap();
        }
        std::fs::write(dir.path().join("spfs-fuse-macos.2026-01-01.log"), "").unwrap();
        let log = DailyLog::open(dir.path(), "spfs").unwrap();
        drop(log);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert!(names.contains(&"spfs-fuse-macos.2026-01-01.log".to_string()));
        assert!(!names.contains(&"spfs.2026-01-01.log".to_string()));
        let kept = names.iter().filter(|n| is_dated_file(n, "spfs")).count();
        assert_eq!(kept, KEEP_DAYS);
        let link = std::fs::read_link(dir.path().join("spfs.log")).unwrap();
        assert_eq!(link, PathBuf::from(current_file_name("spfs")));
    }
}

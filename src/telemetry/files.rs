//! Daily log files: `tracing-appender` writes and rotates `PREFIX.YYYY-MM-DD.log`;
//! this wrapper keeps a `PREFIX.log` symlink on the current file and deletes
//! files older than the newest `KEEP_DAYS`.
//!
//! Pruning here, not with the appender's `max_log_files`: that one matches by
//! prefix, and the launcher's `spfs` prefix would also match (and delete) the
//! service's `spfs-fuse-macos.*` files in the same directory.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_appender::rolling::{RollingFileAppender, RollingWriter, Rotation};
use tracing_subscriber::fmt::MakeWriter;

/// How many daily files of each program are kept.
pub const KEEP_DAYS: usize = 14;

pub struct DailyLog {
    appender: RollingFileAppender,
    dir: PathBuf,
    prefix: &'static str,
    /// Days since the epoch (UTC) that the symlink and pruning were last done for.
    day: AtomicU64,
}

fn today() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0)
}

/// `PREFIX.YYYY-MM-DD.log` for today (UTC), the name the appender writes to.
pub fn current_file_name(prefix: &str) -> String {
    let date = time::OffsetDateTime::now_utc().date();
    format!(
        "{prefix}.{:04}-{:02}-{:02}.log",
        date.year(),
        date.month() as u8,
        date.day()
    )
}

impl DailyLog {
    pub fn open(dir: &Path, prefix: &'static str) -> io::Result<DailyLog> {
        std::fs::create_dir_all(dir)?;
        let appender = RollingFileAppender::builder()
            .rotation(Rotation::DAILY)
            .filename_prefix(prefix)
            .filename_suffix("log")
            .build(dir)
            .map_err(io::Error::other)?;
        let log = DailyLog {
            appender,
            dir: dir.to_owned(),
            prefix,
            day: AtomicU64::new(today()),
        };
        log.on_new_day();
        Ok(log)
    }

    /// Points the symlink at today's file and prunes; errors only cost tidiness.
    fn on_new_day(&self) {
        let target = current_file_name(self.prefix);
        let link = self.dir.join(format!("{}.log", self.prefix));
        if std::fs::read_link(&link).ok().as_deref() != Some(Path::new(&target)) {
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

impl<'a> MakeWriter<'a> for DailyLog {
    type Writer = RollingWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        let day = today();
        if self.day.swap(day, Ordering::Relaxed) != day {
            self.on_new_day();
        }
        self.appender.make_writer()
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

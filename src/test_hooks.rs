//! Points where a test can make the release binaries stall, so it can
//! kill a process exactly there or race a freeze against work under way.
//! Off unless their variables are set; nothing else reads them.
//!
//! - `SPFS_TEST_PAUSE=POINT:FILE`: on reaching [`pause`]`(POINT)`, the
//!   process creates FILE and sleeps (ten minutes, or until a caught
//!   Ctrl-C, or until the test deletes FILE), so the test, which waits
//!   for FILE, kills or interrupts it there (`SIGKILL`, `SIGINT`), or
//!   changes something under it and lets it go on.
//! - `SPFS_TEST_WRITE_STALL=DURATION`: every data write of an editable
//!   runtime stalls that long before it reaches the disk, as a slow disk
//!   or network filesystem would make it.

use std::sync::OnceLock;
use std::time::Duration;

/// Stops here if the test asked for `point` (see the module doc).
pub fn pause(point: &str) {
    static ASKED: OnceLock<Option<(String, String)>> = OnceLock::new();
    let asked = ASKED.get_or_init(|| {
        let text = std::env::var("SPFS_TEST_PAUSE").ok()?;
        let (point, file) = text.split_once(':')?;
        Some((point.to_owned(), file.to_owned()))
    });
    if let Some((wanted, file)) = asked {
        if wanted == point {
            let _ = std::fs::write(file, std::process::id().to_string());
            // A caught Ctrl-C (`crate::interrupt`) ends the pause: the work
            // then meets it at its next check, as it would have.
            // So does the test deleting FILE: the process then goes on.
            let until = std::time::Instant::now() + Duration::from_secs(600);
            let waiting = || std::path::Path::new(file).exists() && !crate::interrupt::requested();
            while waiting() && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// How long every data write stalls, if a test asked.
pub fn write_stall() -> Option<Duration> {
    static STALL: OnceLock<Option<Duration>> = OnceLock::new();
    *STALL.get_or_init(|| {
        let text = std::env::var("SPFS_TEST_WRITE_STALL").ok()?;
        crate::settings::parse_duration(&text).ok()
    })
}

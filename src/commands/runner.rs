//! The one way a command runs: its `Result` becomes the exit status, an
//! error goes to stderr as `TOOL: error: ...`, and a closed stdout
//! (`spfs service status | true`, `spfs doctor | head -1`) ends the command
//! quietly, as SIGPIPE ends other Unix tools. Commands write their results
//! through [`Out`], which turns write failures into errors instead of the
//! panics of `println!`.

use std::io::Write;
use std::process::ExitCode;

use crate::error::{Error, Result};

/// Runs a command: its error goes to stderr as `TOOL: error: ...`
/// with exit status 1; a closed stdout ends it as SIGPIPE ends `cat`.
pub fn run(tool: &str, command: impl FnOnce() -> Result<ExitCode>) -> ExitCode {
    match command() {
        Ok(code) => code,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            die_of_broken_pipe()
        }
        Err(err) => {
            eprintln!("{tool}: error: {}", err.with_fix());
            match err.is_interrupted() {
                // as a shell shows a command ended by Ctrl-C
                true => ExitCode::from(130),
                false => ExitCode::FAILURE,
            }
        }
    }
}

/// The reader went away (`spfs layers | head -1`): end quietly, with the
/// status a shell shows for a tool killed by SIGPIPE.
fn die_of_broken_pipe() -> ExitCode {
    crate::telemetry::flush();
    // SAFETY: restoring the default action and raising the signal in our own
    // process; nothing else runs on this thread in between.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    ExitCode::from(141)
}

/// stdout for a command's results; write errors become [`Error::Io`].
pub struct Out(std::io::BufWriter<std::io::StdoutLock<'static>>);

impl Out {
    pub fn new() -> Out {
        Out(std::io::BufWriter::new(std::io::stdout().lock()))
    }

    pub fn line(&mut self, text: impl std::fmt::Display) -> Result<()> {
        writeln!(self.0, "{text}").map_err(|e| Error::io("cannot write to stdout", e))
    }

    pub fn copy(&mut self, reader: &mut dyn std::io::Read) -> Result<u64> {
        std::io::copy(reader, &mut self.0).map_err(|e| Error::io("cannot write to stdout", e))
    }

    /// Sends what was written so far (for output that follows a log).
    pub fn flush(&mut self) -> Result<()> {
        self.0
            .flush()
            .map_err(|e| Error::io("cannot write to stdout", e))
    }

    pub fn finish(mut self) -> Result<()> {
        self.0
            .flush()
            .map_err(|e| Error::io("cannot write to stdout", e))
    }
}

impl Default for Out {
    fn default() -> Self {
        Out::new()
    }
}

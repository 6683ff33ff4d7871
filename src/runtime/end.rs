//! Why a runtime ended, and what that means for its changes.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Its last process exited.
    LastProcessExited,
    /// `Unmount` asked for it.
    Request,
    /// A `Mount` for the same root process replaced it.
    Replaced,
    /// The service is stopping under it.
    Shutdown,
}

impl EndReason {
    /// The name in `service.runtime_ended` log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::LastProcessExited => "last_process_exited",
            EndReason::Request => "request",
            EndReason::Replaced => "replaced",
            EndReason::Shutdown => "shutdown",
        }
    }

    /// Whether an editable runtime that ended so keeps its changes (as a
    /// stopped runtime): a durable one always does, and so does any whose
    /// service stopped under it (nothing unsaved is lost).
    pub fn keeps_changes(self, durable: bool) -> bool {
        durable || self == EndReason::Shutdown
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

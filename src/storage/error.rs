//! `StorageError`: everything that can go wrong reading or writing an spfs
//! repository, as data. Each message says what was wrong and names the
//! file when there is one; [`StorageError::fix`] says what to do.

use std::path::PathBuf;

use crate::encoding::{Digest, EncodingError};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operating-system error on a file or folder of the repository.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The folder is not an spfs repository.
    #[error("{} is not an spfs repository: {reason}", path.display())]
    NotARepository { path: PathBuf, reason: String },

    /// The repository was written by an spfs whose format we do not read.
    #[error("repository {} has format version {found} (in {}), but this tool reads format 0.x and writes {supported}", path.display(), path.join("VERSION").display())]
    IncompatibleVersion {
        path: PathBuf,
        found: String,
        supported: String,
    },

    /// No object with this digest is in the repository.
    #[error("unknown object {0}: it is not in this repository")]
    UnknownObject(Digest),

    /// No payload with this digest is in the repository.
    #[error("unknown payload {0}: its file contents are not in this repository")]
    UnknownPayload(Digest),

    /// A tag or a version of a tag that does not exist.
    #[error("unknown tag {spec}: {reason}")]
    UnknownTag { spec: String, reason: String },

    /// A partial digest matches more than one object.
    #[error("ambiguous reference {partial}: it matches {}", matches.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))]
    AmbiguousReference {
        partial: String,
        matches: Vec<Digest>,
    },

    /// Text that should be a tag spec is not.
    #[error("invalid tag {spec:?}: {reason}")]
    InvalidTagSpec { spec: String, reason: String },

    /// Bytes or text that do not decode (no file involved).
    #[error(transparent)]
    Encoding(#[from] EncodingError),

    /// A file of the repository is damaged: it does not decode or its
    /// contents do not match its name.
    #[error("corrupt repository file {}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },

    /// Something on disk we cannot commit into a layer.
    #[error("cannot commit {}: {reason}", path.display())]
    Unsupported {
        path: PathBuf,
        reason: String,
        fix: &'static str,
    },

    /// Ctrl-C or SIGTERM asked the work to stop (`crate::interrupt`).
    #[error("interrupted (Ctrl-C or SIGTERM)")]
    Interrupted,

    /// Another writer held a tag lock for too long.
    #[error("tag file {} is locked by another writer (the lock file has been there for {waited_secs}s)", path.display())]
    TagLocked {
        path: PathBuf,
        lock: PathBuf,
        waited_secs: u64,
    },
}

/// What to do about an operating-system error, by its kind.
fn io_fix(source: &std::io::Error) -> &'static str {
    match source.raw_os_error() {
        Some(libc::ENOSPC) => {
            "the disk is full: free space on it (or move the repository) and run the command again"
        }
        Some(libc::EDQUOT) => {
            "your disk quota is used up: free space in it and run the command again"
        }
        Some(libc::EROFS) => {
            "the filesystem is mounted read-only: use a repository on a writable one"
        }
        Some(libc::EACCES | libc::EPERM) => {
            "you may not change it: check its owner and mode, or use a repository of your own"
        }
        Some(libc::EIO) => {
            "the disk reported an I/O error: check the disk, then run the command again"
        }
        _ => "check that the path exists and that you may read and write it",
    }
}

impl StorageError {
    /// What to do about it.
    pub fn fix(&self) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        let text: Cow<'_, str> = match self {
            StorageError::Io { source, .. } => io_fix(source).into(),
            StorageError::Interrupted => {
                "nothing half-written was kept; run the command again to finish the work".into()
            }
            StorageError::NotARepository { .. } => {
                "point the storage root at an existing repository, or create one".into()
            }
            StorageError::IncompatibleVersion { found, .. } => format!(
                "use the spfs that wrote version {found}, or point the storage root at another repository"
            )
            .into(),
            StorageError::UnknownObject(_) => {
                "check the digest, or sync it from the repository that has it".into()
            }
            StorageError::UnknownPayload(_) => {
                "sync the layer again from the repository that has it".into()
            }
            StorageError::UnknownTag { .. } => {
                "list the tags with `spfs ls-tags` and check the name and ~N version".into()
            }
            StorageError::AmbiguousReference { .. } => "give more characters of the digest".into(),
            StorageError::InvalidTagSpec { .. } => "write a tag as [org/]name[~N]: letters, digits, '-', '_' and '.', the org may also hold '/'".into(),
            StorageError::Encoding(err) => return Some(err.fix().into()),
            StorageError::Corrupt { .. } => {
                "remove the file and sync it again from a repository that has a good copy".into()
            }
            StorageError::Unsupported { fix, .. } => (*fix).into(),
            StorageError::TagLocked { lock, .. } => format!(
                "if no spfs is running, remove the stale lock file {}",
                lock.display()
            )
            .into(),
        };
        Some(text)
    }

    /// The message with its fix, for text that goes on (a nested error).
    pub fn with_fix(&self) -> String {
        crate::telemetry::with_fix(&self.to_string(), self.fix().as_deref())
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        StorageError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        StorageError::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Bytes that should be an encoded object (or tag record) are not.
    pub(crate) fn invalid_object(reason: impl Into<String>) -> Self {
        StorageError::Encoding(EncodingError::InvalidObject(reason.into()))
    }

    /// Attach a file name to bytes that did not decode
    /// ([`EncodingError::InvalidObject`]), making them
    /// [`StorageError::Corrupt`]; other errors pass through.
    pub fn in_file(self, path: impl Into<PathBuf>) -> Self {
        match self {
            StorageError::Encoding(EncodingError::InvalidObject(reason)) => {
                StorageError::corrupt(path, reason)
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_errors_fix_names_its_cause() {
        let fix = |errno| {
            StorageError::io("write", "/repo/x", std::io::Error::from_raw_os_error(errno))
                .fix()
                .unwrap()
                .into_owned()
        };
        assert!(fix(libc::ENOSPC).contains("the disk is full"));
        assert!(fix(libc::EDQUOT).contains("quota"));
        assert!(fix(libc::EROFS).contains("read-only"));
        assert!(fix(libc::EACCES).contains("owner and mode"));
        assert!(fix(libc::ENOENT).contains("exists"));
    }
}

//! `StorageError`: everything that can go wrong reading or writing an spfs
//! repository, as data. Each message says what was wrong, names the file
//! when there is one, and says what to do.

use std::path::PathBuf;

use crate::encoding::{Digest, EncodingError};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operating-system error on a file or folder of the repository.
    #[error("cannot {action} {}: {source}.\n  fix: check that the path exists and that you may read and write it", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The folder is not an spfs repository.
    #[error("{} is not an spfs repository: {reason}.\n  fix: point the storage root at an existing repository, or create one", path.display())]
    NotARepository { path: PathBuf, reason: String },

    /// The repository was written by an spfs whose format we do not read.
    #[error("repository {} has format version {found} (in {}), but this tool reads format 0.x and writes {supported}.\n  fix: use the spfs that wrote version {found}, or point the storage root at another repository", path.display(), path.join("VERSION").display())]
    IncompatibleVersion {
        path: PathBuf,
        found: String,
        supported: String,
    },

    /// No object with this digest is in the repository.
    #[error("unknown object {0}: it is not in this repository.\n  fix: check the digest, or sync it from the repository that has it")]
    UnknownObject(Digest),

    /// No payload with this digest is in the repository.
    #[error("unknown payload {0}: its file contents are not in this repository.\n  fix: sync the layer again from the repository that has it")]
    UnknownPayload(Digest),

    /// A tag or a version of a tag that does not exist.
    #[error("unknown tag {spec}: {reason}.\n  fix: list the tags with `spfs ls-tags` and check the name and ~N version")]
    UnknownTag { spec: String, reason: String },

    /// A partial digest matches more than one object.
    #[error("ambiguous reference {partial}: it matches {}.\n  fix: give more characters of the digest", matches.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))]
    AmbiguousReference {
        partial: String,
        matches: Vec<Digest>,
    },

    /// Text that should be a tag spec is not.
    #[error("invalid tag {spec:?}: {reason}.\n  fix: write a tag as [org/]name[~N]: letters, digits, '-', '_' and '.', the org may also hold '/'")]
    InvalidTagSpec { spec: String, reason: String },

    /// Bytes or text that do not decode (no file involved).
    #[error(transparent)]
    Encoding(#[from] EncodingError),

    /// A file of the repository is damaged: it does not decode or its
    /// contents do not match its name.
    #[error("corrupt repository file {}: {reason}.\n  fix: remove the file and sync it again from a repository that has a good copy", path.display())]
    Corrupt { path: PathBuf, reason: String },

    /// Something on disk we cannot commit into a layer.
    #[error("cannot commit {}: {reason}.\n  fix: {fix}", path.display())]
    Unsupported {
        path: PathBuf,
        reason: String,
        fix: &'static str,
    },

    /// Another writer held a tag lock for too long.
    #[error("tag file {} is locked by another writer (the lock file has been there for {waited_secs}s).\n  fix: if no spfs is running, remove the stale lock file {}", path.display(), lock.display())]
    TagLocked {
        path: PathBuf,
        lock: PathBuf,
        waited_secs: u64,
    },
}

impl StorageError {
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

//! spfs repositories, byte-compatible with spfs 0.44: where objects,
//! payloads and tags are kept and how they are read and written (the
//! objects themselves and their encodings are `crate::graph` and
//! `crate::encoding`, as spfs keeps `graph` beside `storage`).
//!
//! - [`tag`]: tag specs (`org/name~N`) and the records of `.tag` stream files.
//! - [`fs`]: [`FsRepository`], a repository on a local filesystem: objects,
//!   payloads and tags.
//! - [`proxy`]: the local repository and the secondary ones as one, in order.
//! - [`config`]: spfs's configuration: where the local repository is, the
//!   remotes, and which of them a runtime reads through.
//! - [`error`]: [`StorageError`], the errors of all of the above.

pub mod config;
pub mod error;
pub mod fs;
pub mod proxy;
pub mod tag;

pub use error::StorageError;
pub use fs::FsRepository;
pub use tag::{Tag, TagSpec};

#[cfg(test)]
mod decoder_corpus_tests;

/// Paths of the fixture repositories made by the real spfs 0.44.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::path::PathBuf;

    pub const REPOS: [&str; 3] = ["repo-a", "repo-legacy", "repo-mask"];

    pub fn path(rel: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/spfs")).join(rel)
    }

    /// Every object file of a fixture repository: (digest text, bytes).
    pub fn objects(repo: &str) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let base = path(repo).join("objects");
        for folder in std::fs::read_dir(&base).unwrap() {
            let folder = folder.unwrap();
            let prefix = folder.file_name().into_string().unwrap();
            for file in std::fs::read_dir(folder.path()).unwrap() {
                let file = file.unwrap();
                let name = file.file_name().into_string().unwrap();
                out.push((
                    format!("{prefix}{name}"),
                    std::fs::read(file.path()).unwrap(),
                ));
            }
        }
        out.sort();
        out
    }
}

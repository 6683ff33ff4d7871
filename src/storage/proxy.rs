//! The repositories a runtime reads through, as one: the local repository
//! first, then each secondary repository in order (spfs's proxy repository).
//! Objects, tags and payloads are each looked up in that order, so a payload
//! missing locally is read from the first remote that has it.

use std::path::{Path, PathBuf};

use super::error::StorageError;
use super::fs::FsRepository;
use super::tag::{Tag, TagSpec};
use crate::encoding::{Digest, PartialDigest};
use crate::graph::Object;

pub struct ProxyRepository {
    repos: Vec<FsRepository>,
}

impl ProxyRepository {
    /// Opens every repository; the first is the local one. A local repository
    /// that does not exist yet reads as empty (spfs creates it on first write);
    /// a missing remote is an error naming it.
    pub fn open(roots: &[PathBuf]) -> Result<ProxyRepository, StorageError> {
        let mut repos = Vec::with_capacity(roots.len());
        for (index, root) in roots.iter().enumerate() {
            if index == 0 && !root.exists() {
                continue;
            }
            repos.push(FsRepository::open(root)?);
        }
        Ok(ProxyRepository { repos })
    }

    pub fn from_repositories(repos: Vec<FsRepository>) -> ProxyRepository {
        ProxyRepository { repos }
    }

    pub fn repositories(&self) -> &[FsRepository] {
        &self.repos
    }

    /// Whether any of the repositories has object `digest`.
    pub fn has_object(&self, digest: &Digest) -> bool {
        self.repos.iter().any(|repo| repo.has_object(digest))
    }

    /// Roots, for messages.
    pub fn roots(&self) -> Vec<&Path> {
        self.repos.iter().map(|r| r.root()).collect()
    }

    /// The object from the first repository that has it (verified on read: a
    /// corrupt copy is an error, not a reason to look further).
    pub fn read_object(&self, digest: &Digest) -> Result<Object, StorageError> {
        for repo in &self.repos {
            if repo.has_object(digest) {
                return repo.read_object(digest);
            }
        }
        Err(StorageError::UnknownObject(*digest))
    }

    /// The tag from the first repository that has a stream of that name.
    pub fn resolve_tag(&self, spec: &TagSpec) -> Result<Tag, StorageError> {
        self.first(spec, |repo| repo.resolve_tag(spec))
    }

    /// The whole stream (newest first) from the first repository that has it.
    pub fn tag_stream(&self, spec: &TagSpec) -> Result<Vec<Tag>, StorageError> {
        self.first(spec, |repo| repo.tag_stream(spec))
    }

    /// The first repository's answer that is not an error, else the first error.
    fn first<T>(
        &self,
        spec: &TagSpec,
        lookup: impl Fn(&FsRepository) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut first_error = None;
        for repo in &self.repos {
            match lookup(repo) {
                Ok(found) => return Ok(found),
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| StorageError::UnknownTag {
            spec: spec.to_string(),
            reason: "no repository is configured".into(),
        }))
    }

    /// Every object (in any repository) whose digest starts with `partial`.
    pub fn find_digests(&self, partial: &PartialDigest) -> Result<Vec<Digest>, StorageError> {
        let mut found = Vec::new();
        for repo in &self.repos {
            for digest in repo.find_digests(partial)? {
                if !found.contains(&digest) {
                    found.push(digest);
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// Where the payload `digest` is, trying each repository in order.
    pub fn payload_paths(&self, digest: &Digest) -> impl Iterator<Item = PathBuf> + '_ {
        let digest = *digest;
        self.repos.iter().map(move |r| r.payload_path(&digest))
    }
}

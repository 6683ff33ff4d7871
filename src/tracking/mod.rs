//! Working with file trees as spfs tracks them (no FUSE here):
//!
//! - [`manifest`]: [`Manifest`], an in-memory path tree; conversion from and
//!   to a stored [`crate::graph::Manifest`] (in spfs's tree order,
//!   so digests match the real tool); merging layers, masks included.
//! - [`walk`]: reading a directory tree by directory fds, and opening
//!   each file it found only if it is still what the walk saw.
//! - [`commit`]: committing a directory on disk as a layer, and a stack of
//!   layers as a platform.
//! - [`annotations`]: `--annotation` pairs and files, annotation-only
//!   layers, and reading a stack's annotations back (`--get`, `--get-all`).
//! - [`spec_file`]: spfs's `*.spfs.yaml` spec files in a ref (run specs
//!   spliced in; live layers refused for now).
//! - [`env_spec`]: refs (`base+app`, tags, digests, directories) resolved to
//!   the stack of layers a runtime shows.

pub mod annotations;
pub mod commit;
pub mod env_spec;
pub mod manifest;
pub mod spec_file;
pub mod walk;

pub use commit::{commit_dir, commit_platform, manifest_of_dir, walk_dir, CommitStats, DirWalk};
pub use manifest::{Entry, Manifest};

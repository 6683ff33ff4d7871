//! Generated code for `proto/spfs/vfs/v1/vfs.proto` (package `spfs.vfs.v1`).

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("spfs.vfs.v1");

/// The name health checks use for the control API.
pub const VFS_SERVICE_NAME: &str = "spfs.vfs.v1.VfsService";

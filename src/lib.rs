//! SPFS on a machine without mount namespaces: one per-user background service
//! owns the FUSE mount at `/spfs` and a gRPC control API; the `spfs` commands
//! start it on demand and ask it to show a stack of layers to one process tree.
//!
//! Module map (the cold start reads top to bottom in [`launcher`]):
//!
//! - [`launcher`]: `ensure_service_running`: probe, spawn lock, detached spawn,
//!   readiness pipe, confirm.
//! - [`service`]: the background service: socket, health, control API,
//!   runtimes table, pidfile, shutdown.
//! - [`fs`]: the FUSE filesystem and mounting it safely: views over merged
//!   manifests (`fs::view`), which process belongs to which runtime
//!   (`fs::router`), and views kept for the next run of a stack
//!   (`fs::linger`).
//! - [`client`]: gRPC channels over the unix socket.
//! - [`commands`]: what the two binaries do for each subcommand.
//! - [`telemetry`]: JSON-lines log files with daily rotation, reading them
//!   back, and OpenTelemetry traces and metrics (off unless configured).
//! - [`platform`]: Linux and macOS process facts, exit watching, FUSE checks.
//! - [`storage`]: spfs repositories, byte-compatible with spfs 0.44: digests,
//!   the object graph and its encodings, tags, the filesystem repository,
//!   spfs's configuration.
//! - [`runtime`]: runtimes as objects on disk: an editable runtime's
//!   changes (scratch: written files, deletion markers), listed, committed
//!   as a layer and reset against its stack (`runtime::changes`), and its
//!   state file.
//! - [`tracking`]: in-memory manifests (merging layers, masks), committing
//!   a directory as a layer, and refs resolved to stacks of layers.
//! - [`paths`], [`config`], [`error`]: where things live, settings, user-facing errors.
//! - [`proto`]: code generated from `proto/spfs/vfs/v1/vfs.proto`.

pub mod client;
pub mod commands;
pub mod contract;
pub mod encoding;
pub mod error;
pub mod graph;
pub mod launcher;
pub mod paths;
pub mod platform;
mod private_dir;
pub mod proto;
pub mod runtime;
pub mod service;
pub mod settings;
pub mod storage;
pub mod sync;
pub mod telemetry;
pub mod tracking;
pub mod vfs;

pub use error::{Error, Result};
pub use launcher::ensure_service_running;
pub use settings::Settings;

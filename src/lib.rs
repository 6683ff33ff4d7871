//! SPFS on a machine without mount namespaces: one per-user background service
//! owns the FUSE mount at `/spfs` and a gRPC control API; the `spfs` commands
//! start it on demand and ask it to show a stack of layers to one process tree.
//!
//! Module map, bottom up: each module imports only those above it in
//! this list (tests aside), and no file of `src/` imports another in a loop.
//!
//! - [`contract`]: what launcher and service agree on (version and its
//!   headers, the readiness pipe's lines, start reasons, name rules, the
//!   pidfile's read side); imports nothing of the crate.
//! - [`telemetry`]: JSON-lines log files with daily rotation, reading them
//!   back, OpenTelemetry (off unless configured), and the small helpers of
//!   every message (`short`, `with_fix`, `ms_since`, `unix_now`).
//! - [`platform`]: Linux and macOS process facts, exit watching, FUSE
//!   availability, the mount table (no fuser types).
//! - [`dirfd`]: a tree worked on through directory fds, never following a
//!   symlink (removing, walking, opening what a walk saw).
//! - [`encoding`], [`graph`]: digests and the encodings; spfs's object
//!   graph (Platform, Layer, Manifest, Blob), as spfs keeps them beside
//!   storage.
//! - [`storage`]: spfs repositories, byte-compatible with spfs 0.44: the
//!   filesystem repository, tags, the proxy over several, spfs's
//!   configuration.
//! - [`tracking`]: in-memory manifests (merging layers, masks), committing
//!   a directory as a layer, and [`tracking::env_spec::EnvSpec`], a ref
//!   parsed once and resolved to a stack of layers.
//! - [`error`], [`paths`], [`settings`]: the errors users meet (each with
//!   its fix), where things live, this project's settings (`SPFS_*`).
//! - [`startup`]: how a command or shell enters a runtime: the user's
//!   shell, the runtime's `startup.d` scripts sourced in it, the files the
//!   shells read (spfs's `startup.sh` and `.cshrc`, and zsh's).
//! - [`runtime`]: runtimes as objects on disk: an editable runtime's
//!   changes (scratch: written files, deletion markers), listed, committed
//!   and reset against its stack, its state file, why it ended.
//! - [`vfs`]: the FUSE filesystem (spfs's `spfs-vfs`) and mounting it:
//!   views over merged manifests, overlays of changes, which process is in
//!   which runtime (`vfs::membership`), the trees alive (`vfs::registry`),
//!   inode numbering. fuser's types appear nowhere else.
//! - [`proto`], [`client`]: code generated from
//!   `proto/spfs/vfs/v1/vfs.proto`, and channels over the unix socket.
//! - [`service`]: the background service, [`service::run`] its one entry
//!   point: startup in guarded steps, the gRPC edge, the runtime lifecycle,
//!   the runtime table.
//! - [`launcher`]: [`ensure_service_running`] and `spfs run`'s `Mount`: the
//!   cold path as a driver over explicit steps, every retry in one place.
//! - [`commands`]: what the two binaries do for each subcommand.
//!
//! Beside the map: `sync` (locks a panic does not poison), `interrupt`
//! (Ctrl-C during work that must end cleanly), `private_dir`
//! (the checks of the directories only the user may write), and
//! `test_hooks` (where a test can make the binaries stall, to kill them
//! at an exact point).

pub mod client;
pub mod commands;
pub mod contract;
pub mod dirfd;
pub mod encoding;
pub mod error;
pub mod graph;
mod interrupt;
pub mod launcher;
pub mod paths;
pub mod platform;
mod private_dir;
pub mod proto;
pub mod runtime;
pub mod service;
pub mod settings;
pub mod startup;
pub mod storage;
mod sync;
pub mod telemetry;
mod test_hooks;
pub mod tracking;
pub mod vfs;

pub use error::{Error, Result};
pub use launcher::ensure_service_running;
pub use settings::Settings;

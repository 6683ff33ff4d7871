//! Runtimes as objects on disk: what an editable runtime changed (its
//! [`scratch`] directory) and what the runtime is (its [`state`] file), kept
//! in one directory per runtime name under the scratch dir
//! (`Paths::scratch_dir`). The service writes them while the runtime's
//! processes change files; `spfs commit`, `spfs diff` and `spfs reset` read
//! them; a durable runtime's directory outlives its processes and the
//! service, so `spfs run --rerun NAME` finds it again.
//!
//! - [`scratch`], the on-disk format (upper/, masks/, runtime.json).
//! - [`changes`], the changes against the runtime's stack: listed (`spfs
//!   diff`), committed as a layer (`spfs commit`), dropped (`spfs reset`).
//! - [`in_use`], the lock a service holds on a live runtime's directory,
//!   so no other service or command takes it for a stopped one.
//! - [`writes`], whether the runtime's changes take writes (shared by
//!   every overlay of them), and the gate a freeze waits at.
//! - [`record`], the runtime's record in spfs's format in the local
//!   repository (`spfs/runtimes/meta|data/NAME`), which spfs's own tools
//!   and library read.
//! - [`state`], `runtime.json`; [`info`], a runtime as the tools show it;
//!   [`end`], why a runtime ended and whether its changes are kept.
//!
//! The live side (which processes are in which runtime, which view they
//! see) is the service's: `service::table`, `service::lifecycle` and `vfs`.

pub mod changes;
pub mod end;
pub mod in_use;
pub mod info;
pub mod record;
pub mod scratch;
pub mod state;
pub mod writes;

pub use end::EndReason;
pub use info::RuntimeInfo;
pub use scratch::Scratch;
pub use state::RuntimeState;

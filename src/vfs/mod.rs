//! The FUSE filesystem at the mountpoint (spfs calls its own `spfs-vfs`),
//! and mounting it.
//!
//! Each runtime sees its own immutable [`view::View`] of its layers (runtimes
//! of the same stack share one), or, once editable, an [`overlay::Overlay`]
//! of its changes over that view; a process outside every runtime sees an
//! empty directory. Writes reach only editable runtimes' scratch
//! directories (everywhere else they fail with EROFS); the filesystem never
//! touches its own mountpoint. `docs/architecture.md` has the whole picture.
//!
//! - [`filesystem`]: the FUSE callbacks ([`SpfsFs`]), and what each request
//!   is for (`trees`: the tree an inode names, the caller's own tree for
//!   changes, cache times); open files and directories (`handles`).
//! - [`mount`](mod@mount): mounting safely ([`mount()`], [`FuseMount`]): the mountpoint
//!   checks, `allow_other`, the platforms' mount options.
//! - [`router`]: what a request sees, over [`membership`] (which process
//!   is in which runtime) and [`registry`] (every tree alive, shared views,
//!   views that [`linger`] after their last runtime).
//! - [`inode`]: inode numbers carry the tree and the node.
//! - [`view`], [`overlay`], [`shown`]: the trees themselves.
//!
//! fuser's types are used only here.

pub mod filesystem;
mod handles;
pub mod inode;
pub mod linger;
pub mod membership;
pub mod mount;
pub mod overlay;
pub mod registry;
pub mod router;
pub mod shown;
mod trees;
pub mod view;

pub use filesystem::SpfsFs;
pub use mount::{
    check_mountpoint_owner, check_not_another_users_mount, choose_allow_other, mount,
    prepare_mountpoint, FuseMount, MountpointState,
};
pub use router::Router;
pub use shown::Shown;

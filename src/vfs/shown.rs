//! What a runtime shows: the read-only [`View`] of its layers, or (once it
//! was editable) an [`Overlay`] of its changes on them. Both are trees of
//! nodes with an inode space of their own.

use std::sync::Arc;

use super::overlay::Overlay;
use super::view::View;

#[derive(Clone)]
pub enum Shown {
    View(Arc<View>),
    Overlay(Arc<Overlay>),
}

impl Shown {
    /// The names in the directory at `path` (components below the root),
    /// when known without reading the disk: always for a view, and for an
    /// overlay with no changes yet (its layers); None when changes could
    /// hold some there.
    pub fn names_in(&self, path: &[&str]) -> Option<Vec<std::ffi::OsString>> {
        match self {
            Shown::View(view) => Some(view.names_in(path)),
            Shown::Overlay(overlay) if !overlay.scratch.is_made() => {
                Some(overlay.lower.names_in(path))
            }
            Shown::Overlay(_) => None,
        }
    }

    /// The inode space (view id) it is numbered in.
    pub fn id(&self) -> u64 {
        match self {
            Shown::View(view) => view.id,
            Shown::Overlay(overlay) => overlay.id,
        }
    }

    /// The read-only layers below.
    pub fn layers(&self) -> &Arc<View> {
        match self {
            Shown::View(view) => view,
            Shown::Overlay(overlay) => &overlay.lower,
        }
    }
}

impl From<Arc<View>> for Shown {
    fn from(view: Arc<View>) -> Shown {
        Shown::View(view)
    }
}

impl From<Arc<Overlay>> for Shown {
    fn from(overlay: Arc<Overlay>) -> Shown {
        Shown::Overlay(overlay)
    }
}

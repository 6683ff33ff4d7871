//! A runtime's changes on disk: what its processes wrote and deleted in
//! `/spfs`, never touching a repository. One directory per runtime:
//!
//! ```text
//! <scratch dir>/<name>/
//!   runtime.json   what the runtime is (`state`)
//!   upper/         every file, directory and symlink created, written or
//!                  changed in the runtime; a file of a layer is copied here
//!                  whole on its first open for writing or metadata change
//!   masks/         deletions: a regular file at masks/P means nothing of the
//!                  layers is shown at or below P. With no upper/P, P was
//!                  deleted; with upper/P as well, upper/P replaced it (a
//!                  directory made again after its deletion shows none of
//!                  the layers' entries). Directories under masks/ only hold
//!                  other markers.
//!   work/          copies of the layers' files on their way into upper/
//!                  (renamed there when complete); whatever is left here
//!                  is a crash's leftover, deleted when the runtime is
//!                  next shown, and never a change
//!   dropped/       changes on their way out after a commit put them in a
//!                  layer (`Scratch::drop_all`); a crash's leftover too
//! ```
//!
//! The format is plain files so a crash of the service loses nothing that
//! was written, and so `spfs commit`, `spfs diff` and `spfs reset` read it
//! directly. Paths given to this module are relative to the mountpoint
//! (`bin/tool`), made only of normal components.
//!
//! The directory of a runtime that is not durable is made on its first
//! change ([`Scratch::make`]), not when it is mounted: most runtimes of an
//! empty environment (`spfs run - -- CMD`) never write, and making and
//! deleting four entries on disk was a third of their `Mount`. Until then
//! the runtime has no changes, its state waits in memory, and nothing is
//! left on disk at its end.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::in_use::{self, InUse};
use super::state::RuntimeState;
use super::writes::Writes;
use crate::dirfd::{self, Dir};

/// Where [`Scratch::drop_all`] sets changes aside before deleting them.
const DROPPED: &str = "dropped";

pub struct Scratch {
    root: PathBuf,
    upper: PathBuf,
    masks: PathBuf,
    /// The directory and its state file are on disk.
    made: AtomicBool,
    /// This `Scratch` made `root` itself (a failed `make` is completed, but
    /// a directory someone else made is never taken over).
    root_made: AtomicBool,
    /// The latest state saved: written when the directory is made (or
    /// made again, [`Scratch::recover_if_lost`]).
    latest: Mutex<Option<RuntimeState>>,
    /// Whether writes land here, for every overlay of these changes.
    writes: Writes,
    /// Held while the runtime runs (see `runtime::in_use`).
    in_use: Mutex<Option<InUse>>,
}

/// A relative path of normal components only, or InvalidInput.
pub fn check_relative(path: &Path) -> io::Result<()> {
    let ok = path.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a path below the mountpoint", path.display()),
        ))
    }
}

impl Scratch {
    /// The directory of a new runtime, made now (private to the user).
    pub fn create(root: &Path) -> io::Result<Scratch> {
        let scratch = Scratch::plan(root)?;
        scratch.make()?;
        Ok(scratch)
    }

    /// The directory of a new runtime, made on its first change
    /// ([`Scratch::make`]). AlreadyExists when something is at `root`.
    pub fn plan(root: &Path) -> io::Result<Scratch> {
        match std::fs::symlink_metadata(root) {
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", root.display()),
            )),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Scratch::at(root, false)),
            Err(err) => Err(err),
        }
    }

    /// Opens the directory of an existing runtime. An `upper/` or `masks/`
    /// missing (a crash while changes were dropped, see
    /// [`Scratch::drop_all`]) is made again, empty; anything else in their
    /// place is refused.
    pub fn open(root: &Path) -> io::Result<Scratch> {
        let scratch = Scratch::at(root, true);
        scratch.make_missing_dirs()?;
        Ok(scratch)
    }

    /// Opens the directory of a stopped runtime to run it again (`--rerun`),
    /// marking it in use; refused while another service runs it.
    pub fn reenter(root: &Path) -> io::Result<Scratch> {
        super::state::check_own(root)?;
        let scratch = Scratch::open(root)?;
        scratch.take_in_use()?;
        Ok(scratch)
    }

    /// Opens the directory of a running runtime, to read its changes: one
    /// that was never made, or is being made (nothing changed yet), reads
    /// as no changes.
    pub fn open_to_read(root: &Path) -> io::Result<Scratch> {
        let missing = ["upper", "masks"].iter().any(|dir| {
            std::fs::symlink_metadata(root.join(dir))
                .is_err_and(|err| err.kind() == io::ErrorKind::NotFound)
        });
        match missing {
            true => Ok(Scratch::at(root, false)),
            false => Scratch::open(root),
        }
    }

    fn at(root: &Path, made: bool) -> Scratch {
        Scratch {
            root: root.to_owned(),
            upper: root.join("upper"),
            masks: root.join("masks"),
            made: AtomicBool::new(made),
            root_made: AtomicBool::new(false),
            latest: Mutex::new(None),
            writes: Writes::default(),
            in_use: Mutex::new(None),
        }
    }

    /// Marks the directory as a live runtime's; refused when another
    /// service holds it.
    fn take_in_use(&self) -> io::Result<()> {
        let name = self.root.file_name().unwrap_or_default().to_string_lossy();
        let taken = InUse::take(&self.root)?.ok_or_else(|| in_use::held_error(&name))?;
        *crate::sync::lock(&self.in_use) = Some(taken);
        Ok(())
    }

    /// The runtime ended: its directory is no longer marked in use.
    pub fn release(&self) {
        crate::sync::lock(&self.in_use).take();
    }

    /// Whether the runtime's changes take writes (see [`Writes`]).
    pub fn writes(&self) -> &Writes {
        &self.writes
    }

    /// Whether the directory is on disk (it holds changes, or may).
    pub fn is_made(&self) -> bool {
        self.made.load(Ordering::Acquire)
    }

    /// Makes the directory, with the state saved for it, unless it is
    /// made already. A half-made one (a failure before) is completed; a
    /// directory that appeared at its path meanwhile is refused
    /// (AlreadyExists), never taken over: it is another runtime's.
    pub fn make(&self) -> io::Result<()> {
        if self.is_made() {
            return Ok(());
        }
        let latest = self.lock_latest();
        if self.is_made() {
            return Ok(());
        }
        if let Some(parent) = self.root.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        if !self.root_made.load(Ordering::Acquire) {
            std::fs::DirBuilder::new().mode(0o700).create(&self.root)?;
            self.root_made.store(true, Ordering::Release);
            // marked before its state is written: a listed runtime is marked
            self.take_in_use()?;
        }
        self.make_missing_dirs()?;
        if let Some(state) = latest.as_ref() {
            state.write(&self.root, state.durable)?;
        }
        self.made.store(true, Ordering::Release);
        Ok(())
    }

    /// Makes `upper/` and `masks/` if they are missing; a file or symlink
    /// in their place is refused.
    fn make_missing_dirs(&self) -> io::Result<()> {
        for (dir, mode) in [(&self.upper, 0o755), (&self.masks, 0o700)] {
            match std::fs::DirBuilder::new().mode(mode).create(dir) {
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                    if !std::fs::symlink_metadata(dir)?.is_dir() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{} is not a directory", dir.display()),
                        ));
                    }
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// The directory of a made runtime is gone from under it (a cache
    /// cleaner deleted it): makes it again, empty, with the runtime's last
    /// state, and says so (true). Its changes are lost; the runtime goes on.
    pub fn recover_if_lost(&self) -> io::Result<bool> {
        if !self.is_made() || std::fs::symlink_metadata(&self.upper).is_ok() {
            return Ok(false);
        }
        let latest = self.lock_latest();
        if let Some(parent) = self.root.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&self.root) {
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            other => other?,
        }
        self.take_in_use()?;
        self.make_missing_dirs()?;
        if let Some(state) = latest.as_ref() {
            state.write(&self.root, state.durable)?;
        }
        tracing::warn!(
            event = "service.scratch_recreated",
            scratch_dir = %self.root.display(),
            "a running runtime's scratch directory was deleted by something else; made again, empty (its changes were lost)"
        );
        Ok(true)
    }

    fn lock_latest(&self) -> MutexGuard<'_, Option<RuntimeState>> {
        self.latest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The nearest directory of it that exists, for the free space of its disk.
    pub fn disk_dir(&self) -> &Path {
        self.root
            .ancestors()
            .find(|dir| dir.is_dir())
            .unwrap_or(Path::new("/"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The tree of created and changed files.
    pub fn upper(&self) -> &Path {
        &self.upper
    }

    /// The tree of deletion markers.
    pub fn masks_dir(&self) -> &Path {
        &self.masks
    }

    pub fn read_state(&self) -> Result<RuntimeState, String> {
        RuntimeState::read(&self.root)
    }

    /// Saves `state`; synced to disk when the runtime is durable. A
    /// durable runtime's directory is made now, so it can be re-entered
    /// whatever happens; another's keeps the state until it is made.
    pub fn write_state(&self, state: &RuntimeState) -> io::Result<()> {
        let mut latest = self.lock_latest();
        *latest = Some(state.clone());
        if !self.is_made() {
            drop(latest);
            return match state.durable {
                true => self.make(),
                false => Ok(()),
            };
        }
        state.write(&self.root, state.durable)
    }

    /// Saves the state of a runtime kept after its end, synced to disk
    /// (its directory made if it was not: a stopped runtime is on disk).
    pub fn keep_state(&self, state: &RuntimeState) -> io::Result<()> {
        *self.lock_latest() = Some(state.clone());
        self.make()?;
        state.write(&self.root, true)
    }

    /// Every deletion marker, as paths relative to the mountpoint. Read by
    /// directory fds (the markers' tree is as deep as the runtime's).
    pub fn masks(&self) -> io::Result<BTreeSet<PathBuf>> {
        let mut found = BTreeSet::new();
        if !self.is_made() {
            return Ok(found);
        }
        let mut pending = vec![(Dir::open_exact(&self.masks)?, PathBuf::new())];
        while let Some((dir, relative)) = pending.pop() {
            for (name, stat) in dir.entries()? {
                let path = relative.join(&name);
                if dirfd::is_dir(&stat) {
                    pending.push((dir.child(&name)?, path));
                } else {
                    found.insert(path);
                }
            }
        }
        Ok(found)
    }

    /// Records that nothing of the layers shows at or below `path`. Markers
    /// below it are dropped (this one covers them); under an ancestor that
    /// is already masked there is nothing to add.
    pub fn add_mask(&self, path: &Path) -> io::Result<()> {
        check_relative(path)?;
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        let mut dir = Dir::open_exact(&self.masks)?;
        for component in parent.iter() {
            dir = match dir.stat_at(component)? {
                Some(stat) if dirfd::is_dir(&stat) => dir.child(component)?,
                // an ancestor is masked already
                Some(_) => return Ok(()),
                None => dir.make_dir(component, 0o700)?,
            };
        }
        dir.remove(name)?;
        dir.create_file(name, 0o600).map(drop)
    }

    /// Forgets the markers at and below `path` (the layers show there again).
    pub fn remove_mask(&self, path: &Path) -> io::Result<()> {
        check_relative(path)?;
        Dir::open_exact(&self.masks)?.remove_below(path)
    }

    /// Whether a marker hides the layers at `path` itself (not an ancestor).
    pub fn is_masked_here(&self, path: &Path) -> bool {
        self.stat_in(&self.masks, path)
            .is_ok_and(|stat| stat.is_some_and(|s| !dirfd::is_dir(&s)))
    }

    /// What `upper/` holds at `path` (not following a symlink), if anything.
    pub fn upper_entry(&self, path: &Path) -> io::Result<Option<nix::sys::stat::FileStat>> {
        self.stat_in(&self.upper, path)
    }

    fn stat_in(&self, top: &Path, path: &Path) -> io::Result<Option<nix::sys::stat::FileStat>> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Ok(None);
        };
        match Dir::open_exact(top)?.descend(parent)? {
            Some(dir) => dir.stat_at(name),
            None => Ok(None),
        }
    }

    /// Drops changes: with no paths, every one (`upper/` and `masks/` are
    /// emptied, and kept); else the files, directories and markers at and
    /// below each path (relative to the mountpoint), so the layers show
    /// there again. A marker on an ancestor of a path still hides the
    /// layers there: reset that ancestor to show them.
    ///
    /// Only the runtime's own changes are ever touched: each path is walked
    /// from `upper/` (and `masks/`) name by name without following a
    /// symlink, and a path whose parent there is a symlink or a file has
    /// nothing to reset (a link a process made in the runtime is a change
    /// itself, dropped when its own path is reset, never followed). Every
    /// path is checked before anything is dropped.
    pub fn reset(&self, paths: &[PathBuf]) -> io::Result<()> {
        for path in paths {
            check_relative(path)?;
            if path.as_os_str().is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "an empty path is not a path below the mountpoint",
                ));
            }
        }
        if !self.is_made() {
            // Nothing changed yet: nothing to drop.
            return Ok(());
        }
        self.recover_if_lost()?;
        let upper = Dir::open_exact(&self.upper)?;
        let masks = Dir::open_exact(&self.masks)?;
        if paths.is_empty() {
            upper.clear()?;
            return masks.clear();
        }
        for path in paths {
            upper.remove_below(path)?;
            masks.remove_below(path)?;
        }
        Ok(())
    }

    /// Drops every change after the runtime's new state was saved (its
    /// changes are in a layer on its stack now: `spfs commit`), so a crash
    /// at any point leaves one whole state: `masks/` is renamed aside
    /// first, then `upper/` (each one rename), then both are made again
    /// and what was set aside is deleted. Any subset of the changes left
    /// over the new stack shows exactly what the stack shows (the layer
    /// holds them all, masks included); a missing `upper/` or `masks/` is
    /// made again by [`Scratch::open`]; what was set aside is deleted when
    /// the runtime is next shown ([`Scratch::clear_leftovers`]).
    pub fn drop_all(&self) -> io::Result<()> {
        if !self.is_made() {
            return Ok(());
        }
        self.recover_if_lost()?;
        let aside = self.root.join(DROPPED);
        match std::fs::DirBuilder::new().mode(0o700).create(&aside) {
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            other => other?,
        }
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let masks_aside = aside.join(format!("masks.{n}"));
        std::fs::rename(&self.masks, &masks_aside)?;
        crate::test_hooks::pause("drop_all.masks_aside");
        if let Err(err) = std::fs::rename(&self.upper, aside.join(format!("upper.{n}"))) {
            // the changes stay whole, for the old state the caller saves back
            std::fs::rename(&masks_aside, &self.masks)?;
            return Err(err);
        }
        self.make_missing_dirs()?;
        remove_any(&aside)
    }

    /// Deletes what a crash left half done: copies on their way into
    /// `upper/` (`work/`) and changes set aside to be dropped. Never
    /// anyone's change.
    pub fn clear_leftovers(&self) {
        if self.is_made() {
            for leftover in ["work", DROPPED] {
                let _ = remove_any(&self.root.join(leftover));
            }
        }
    }

    /// Deletes the whole runtime directory, if this `Scratch` has one: an
    /// unmade one deletes nothing (whatever is at its path is another's).
    pub fn destroy(self) -> io::Result<()> {
        match self.is_made() {
            true => remove_any(&self.root),
            false => Ok(()),
        }
    }
}

/// Deletes stopped runtime `name`'s directory `dir`, holding its in-use
/// mark while it does, so no service re-enters it meanwhile; refused
/// (ResourceBusy) while another service runs it.
pub fn remove_stopped(dir: &Path, name: &str) -> std::io::Result<()> {
    let held = match InUse::take(dir) {
        Ok(Some(held)) => Some(held),
        Ok(None) => return Err(in_use::held_error(name)),
        // Not a runtime's directory as we make them (a file, no rights
        // to add the lock): deleted as it is.
        Err(_) => None,
    };
    let removed = remove_any(dir);
    drop(held);
    removed
}

/// Removes a file or a whole tree (never following a symlink below
/// `path`'s parent, at any depth); a missing path is fine.
pub fn remove_any(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no entry to remove", path.display()),
        ));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    match crate::dirfd::Dir::open(parent) {
        Ok(dir) => dir.remove(name),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_cover_what_is_below_them_and_are_kept_as_files() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = Scratch::create(&dir.path().join("rt")).unwrap();
        scratch.add_mask(Path::new("a/b/c")).unwrap();
        scratch.add_mask(Path::new("a/d")).unwrap();
        let all: Vec<_> = scratch.masks().unwrap().into_iter().collect();
        assert_eq!(all, [PathBuf::from("a/b/c"), PathBuf::from("a/d")]);
        // masking `a` covers both, and nothing can be added below it
        scratch.add_mask(Path::new("a")).unwrap();
        scratch.add_mask(Path::new("a/e")).unwrap();
        let all: Vec<_> = scratch.masks().unwrap().into_iter().collect();
        assert_eq!(all, [PathBuf::from("a")]);
        assert!(scratch.is_masked_here(Path::new("a")));
        scratch.remove_mask(Path::new("a")).unwrap();
        assert!(scratch.masks().unwrap().is_empty());
        assert!(scratch.add_mask(Path::new("../x")).is_err());
        let reopened = Scratch::open(scratch.root()).unwrap();
        assert!(reopened.masks().unwrap().is_empty());
    }

    fn state(durable: bool) -> RuntimeState {
        RuntimeState {
            name: "rt".into(),
            env_spec: "-".into(),
            stack: Vec::new(),
            repositories: Vec::new(),
            editable: true,
            durable,
            created_unix: 1,
            command: Vec::new(),
        }
    }

    #[test]
    fn a_planned_directory_is_made_on_the_first_change_with_its_latest_state() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("runtimes/rt");
        let scratch = Scratch::plan(&root).unwrap();
        scratch.write_state(&state(false)).unwrap();
        assert!(!root.exists(), "nothing on disk before a change");
        assert!(scratch.masks().unwrap().is_empty());
        scratch.reset(&[]).unwrap();
        assert!(scratch.reset(&[PathBuf::from("/abs")]).is_err());
        let mut later = state(false);
        later.editable = false;
        scratch.write_state(&later).unwrap();
        scratch.make().unwrap();
        assert!(scratch.upper().is_dir() && scratch.masks_dir().is_dir());
        assert_eq!(scratch.read_state().unwrap(), later);
        let reader = Scratch::open_to_read(&root).unwrap();
        assert!(reader.is_made());
        assert!(Scratch::plan(&root).is_err(), "a name in use is refused");
    }

    #[test]
    fn a_directory_made_by_another_is_never_taken_over_or_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rt");
        // Two runtimes were given the same name before either made anything.
        let first = Scratch::plan(&root).unwrap();
        let second = Scratch::plan(&root).unwrap();
        first.make().unwrap();
        std::fs::write(first.upper().join("kept"), "x").unwrap();
        let err = second.make().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        second.destroy().unwrap();
        assert!(
            first.upper().join("kept").exists(),
            "the first's changes stay"
        );
        // A directory that appeared at its path before it was made is refused.
        let third = Scratch::plan(&dir.path().join("rt3")).unwrap();
        std::fs::create_dir_all(dir.path().join("rt3")).unwrap();
        assert!(third.make().is_err(), "made by someone else meanwhile");
    }

    #[test]
    fn a_durable_or_kept_runtime_is_on_disk_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let durable = Scratch::plan(&dir.path().join("durable")).unwrap();
        durable.write_state(&state(true)).unwrap();
        assert!(durable.is_made());
        assert!(durable.read_state().unwrap().durable);
        let kept = Scratch::plan(&dir.path().join("kept")).unwrap();
        kept.write_state(&state(false)).unwrap();
        kept.keep_state(&state(false)).unwrap();
        assert!(Scratch::open(kept.root()).unwrap().read_state().is_ok());
        let never = Scratch::open_to_read(&dir.path().join("never")).unwrap();
        assert!(!never.is_made() && never.masks().unwrap().is_empty());
        assert!(never.disk_dir().is_dir());
    }
}

//! What is done to a runtime, step by step: attached by `Mount` (a new
//! one, or a stopped one re-entered with `--rerun`), shown another stack
//! (`ChangeStack`), made editable or read-only (`Edit`), its changes
//! dropped (`Reset`), removed. Each request is checked (the caller's own
//! process tree, names), what it shows is built (`service::build`), and the
//! runtime table (`service::table`) records the result.
//!
//! What may block: the table's work reads `/proc` (membership, with a
//! 20 ms second look for a process caught mid-exec), fsyncs a durable
//! runtime's state and deletes scratch files; a build reads repositories;
//! a freeze (`Overlay::set_editable(false)`) waits for writes under way.
//! So each request runs on the blocking pool, as one task ([`blocking`];
//! `Mount` and `ChangeStack`, which build, within the build limits and
//! awaited with their deadline): the gRPC handlers (`service::api`) and so
//! the async workers never block.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::build::{self, BuildLimits, Built};
use super::error::RuntimeError;
use super::guard::Caller;
use super::table::{check_name, RuntimeMember, RuntimeTable, ScratchFor};
use crate::platform;
use crate::runtime::{EndReason, RuntimeInfo, RuntimeState, Scratch};
use crate::telemetry::{short, unix_now};
use crate::tracking::env_spec::EnvSpec;
use crate::vfs::overlay::Overlay;
use crate::vfs::view::{Budget, View};
use crate::vfs::Shown;

pub struct Lifecycle {
    pub table: Arc<RuntimeTable>,
    /// What one build may cost (SPFS_MOUNT_TIMEOUT, SPFS_MOUNT_MAX_ENTRIES).
    pub limits: BuildLimits,
}

/// What one `Mount` asks for, its wire form checked (`service::api`).
pub struct MountAsk {
    pub pid: i32,
    /// None: one is made up.
    pub name: Option<String>,
    pub env_spec: EnvSpec,
    /// Absolute paths, local first.
    pub repositories: Vec<PathBuf>,
    pub editable: bool,
    pub durable: bool,
    /// Re-enter the stopped runtime `name` (the env spec is not used).
    pub rerun: bool,
    /// What it runs (`RuntimeState::command`).
    pub command: Vec<String>,
}

/// A runtime a `Mount` attached: what it is, the view it was built from
/// (or shares), and what it shows.
pub struct Attached {
    pub runtime: RuntimeInfo,
    pub built: Built,
    pub shown: Shown,
}

/// What one `Edit` asks for.
#[derive(Clone, Copy, Debug)]
pub struct Edit {
    pub editable: bool,
    /// A commit's freeze: refused unless the runtime takes writes now.
    pub only_if_editable: bool,
    /// Also make it durable (`spfs edit --keep-runtime`).
    pub durable: bool,
}

/// What one `ChangeStack` asks for.
pub struct StackChange {
    pub name: String,
    pub env_spec: EnvSpec,
    /// Refuse unless the stack is still this (empty: no check).
    pub expected_stack: String,
    pub drop_changes: bool,
    /// Editable or read-only from now on; `None` keeps what it is.
    pub editable: Option<bool>,
}

/// Runs `work` on the blocking pool and waits for it.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RuntimeError::Internal(e.to_string()))?
}

/// Sets its flag when dropped.
#[derive(Default)]
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Lifecycle {
    /// `Mount`, on the blocking pool as one task (one hand-off: a warm
    /// `spfs run` waits for it), bounded by the build limits. The task
    /// checks the ask, builds what the runtime shows, and attaches it; a
    /// re-entered runtime goes back to the stopped list if anything fails.
    pub async fn mount(
        self: &Arc<Self>,
        caller: Option<Caller>,
        ask: MountAsk,
    ) -> Result<Attached, RuntimeError> {
        let shown_spec = ask.env_spec.to_string();
        let this = Arc::clone(self);
        self.bounded(shown_spec, move |budget| {
            this.mount_now(caller, ask, budget)
        })
        .await
    }

    /// Runs `work` on the blocking pool with the budget of one build, and
    /// waits for it at most the build's deadline (and a grace for what the
    /// build cannot check: a read hung on a dead filesystem). If this
    /// request goes away (the client did) or times out, the budget is
    /// cancelled: the build stops, and nothing is attached after it.
    async fn bounded<T: Send + 'static>(
        &self,
        spec: String,
        work: impl FnOnce(&Budget) -> Result<T, RuntimeError> + Send + 'static,
    ) -> Result<T, RuntimeError> {
        let cancel = CancelOnDrop::default();
        let budget = self.limits.budget(Arc::clone(&cancel.0));
        let task = tokio::task::spawn_blocking(move || work(&budget));
        let grace = std::time::Duration::from_millis(500);
        let done = tokio::time::timeout(self.limits.timeout + grace, task)
            .await
            .map_err(|_| RuntimeError::Timeout {
                spec,
                seconds: self.limits.timeout.as_secs_f64(),
            })?
            .map_err(|e| RuntimeError::Internal(e.to_string()))?;
        drop(cancel);
        done
    }

    /// The whole of a `Mount`, blocking.
    fn mount_now(
        &self,
        caller: Option<Caller>,
        mut ask: MountAsk,
        budget: &Budget,
    ) -> Result<Attached, RuntimeError> {
        authorize(caller, ask.pid)?;
        // A script's Mount may name no runtime: give it one of its own.
        let name = ask
            .name
            .get_or_insert_with(|| crate::contract::generated_name(ask.pid))
            .clone();
        check_name(&name)?;
        if !ask.rerun {
            return self.attach_new(ask, name, budget);
        }
        let (state, scratch) = self.table.take_stopped(&name)?;
        let attached = self.attach_saved(&ask, state.clone(), scratch, budget);
        if attached.is_err() {
            self.table.put_back(state);
        }
        attached
    }

    /// Builds what `spec` shows in `repositories`; refused when the request
    /// went away meanwhile, so nothing is attached after it.
    fn build(
        &self,
        spec: &EnvSpec,
        repositories: &[PathBuf],
        budget: &Budget,
    ) -> Result<Built, RuntimeError> {
        let built = build::build_view(self.table.router(), repositories, spec, budget)?;
        if budget.cancelled.load(Ordering::Relaxed) {
            return Err(RuntimeError::Internal(
                "the request went away while its view was built".into(),
            ));
        }
        Ok(built)
    }

    fn attach_new(
        &self,
        ask: MountAsk,
        name: String,
        budget: &Budget,
    ) -> Result<Attached, RuntimeError> {
        let built = self.build(&ask.env_spec, &ask.repositories, budget)?;
        let state = RuntimeState {
            name: name.clone(),
            env_spec: ask.env_spec.as_str().to_owned(),
            stack: built.stack.clone(),
            repositories: ask.repositories,
            editable: ask.editable,
            durable: ask.durable,
            created_unix: unix_now(),
            command: ask.command,
        };
        // A durable read-only runtime is kept too (as spfs keeps it): its
        // state needs a directory, and it shows a read-only overlay.
        if !ask.editable && !ask.durable {
            let shown = Shown::View(Arc::clone(&built.view));
            let runtime = self.table.attach(ask.pid, state, shown.clone(), None)?;
            return Ok(Attached {
                runtime,
                built,
                shown,
            });
        }
        let scratch = self.table.new_scratch(&name, ScratchFor::Mount(ask.pid))?;
        let attached = self.attach_with_scratch(ask.pid, state, &built, Arc::clone(&scratch));
        if attached.is_err() {
            if let Ok(scratch) = Arc::try_unwrap(scratch) {
                let _ = scratch.destroy();
            }
        }
        attached.map(|(runtime, shown)| Attached {
            runtime,
            built,
            shown,
        })
    }

    /// Re-enters a stopped runtime: its stack and changes come from disk.
    fn attach_saved(
        &self,
        ask: &MountAsk,
        mut state: RuntimeState,
        scratch: Arc<Scratch>,
        budget: &Budget,
    ) -> Result<Attached, RuntimeError> {
        let spec = EnvSpec::parse(&state.stack_spec())?;
        let built = self.build(&spec, &state.repositories, budget)?;
        state.editable |= ask.editable;
        state.durable |= ask.durable;
        state.command = ask.command.clone();
        let (runtime, shown) = self.attach_with_scratch(ask.pid, state, &built, scratch)?;
        Ok(Attached {
            runtime,
            built,
            shown,
        })
    }

    fn attach_with_scratch(
        &self,
        pid: i32,
        state: RuntimeState,
        built: &Built,
        scratch: Arc<Scratch>,
    ) -> Result<(RuntimeInfo, Shown), RuntimeError> {
        scratch.write_state(&state).map_err(|e| {
            RuntimeError::scratch(format!("cannot save runtime {:?}", state.name), e)
        })?;
        let shown = self.overlay_for(&built.view, &scratch, state.editable)?;
        let runtime = self
            .table
            .attach(pid, state, shown.clone(), Some(scratch))?;
        Ok((runtime, shown))
    }

    /// A new overlay of `scratch`'s changes over `view`.
    fn overlay_for(
        &self,
        view: &Arc<View>,
        scratch: &Arc<Scratch>,
        editable: bool,
    ) -> Result<Shown, RuntimeError> {
        let overlay = Overlay::new(
            self.table.router().next_view_id(),
            Arc::clone(view),
            Arc::clone(scratch),
            editable,
        )
        .map_err(|e| RuntimeError::scratch("cannot read the runtime's changes", e))?;
        Ok(Shown::Overlay(Arc::new(overlay)))
    }

    /// `Unmount` (and a `Mount` that finished after shutdown began): ends
    /// the runtime whose root is `pid` now.
    pub fn unmount(&self, pid: i32, reason: EndReason) -> Option<RuntimeInfo> {
        self.table.remove(pid, reason)
    }

    /// `ChangeStack`: on the blocking pool as one task, bounded by the
    /// build limits: the runtime found, the new stack built, then swapped in.
    pub async fn change_stack(
        self: &Arc<Self>,
        pid: i32,
        change: StackChange,
    ) -> Result<RuntimeInfo, RuntimeError> {
        let this = Arc::clone(self);
        self.bounded(change.env_spec.to_string(), move |budget| {
            let member = this.table.member(&change.name, pid)?;
            let current = member.state.stack.join("+");
            if !change.expected_stack.is_empty() && change.expected_stack != current {
                return Err(RuntimeError::StackChanged {
                    name: change.name,
                    expected: short(&change.expected_stack),
                    actual: short(&current),
                });
            }
            let built = this.build(&change.env_spec, &member.state.repositories, budget)?;
            this.swap_stack(member, change, built)
        })
        .await
    }

    /// The second half of `ChangeStack`: freezes the old overlay (no write
    /// lands in it from here on), drops the changes if asked, and shows the
    /// new stack; on failure the runtime goes on as it was, not silently
    /// read-only.
    fn swap_stack(
        &self,
        member: RuntimeMember,
        change: StackChange,
        built: Built,
    ) -> Result<RuntimeInfo, RuntimeError> {
        let mut state = member.state.clone();
        state.env_spec = change.env_spec.as_str().to_owned();
        state.stack = built.stack.clone();
        state.editable = change.editable.unwrap_or(member.state.editable);
        if let Shown::Overlay(overlay) = &member.shown {
            overlay.set_editable(false);
        }
        let changed = self.show(&member, state, &built.view, change.drop_changes);
        if let (Err(_), Shown::Overlay(overlay)) = (&changed, &member.shown) {
            overlay.set_editable(member.state.editable);
        }
        let runtime = changed?;
        tracing::info!(
            event = "service.stack_changed",
            runtime = runtime.name(),
            env_spec = %change.env_spec,
            drop_changes = change.drop_changes,
            editable = runtime.state.editable,
            "runtime shows another stack"
        );
        Ok(runtime)
    }

    /// Runtime `member` shows `view` (with its changes, unless dropped)
    /// and has `state` from now on.
    fn show(
        &self,
        member: &RuntimeMember,
        state: RuntimeState,
        view: &Arc<View>,
        drop_changes: bool,
    ) -> Result<RuntimeInfo, RuntimeError> {
        let scratch = match (&member.scratch, state.editable) {
            (Some(scratch), _) => Some(Arc::clone(scratch)),
            (None, true) => Some(
                self.table
                    .new_scratch(&state.name, ScratchFor::Runtime(member.id))?,
            ),
            (None, false) => None,
        };
        if let (Some(scratch), true) = (&scratch, drop_changes) {
            drop_changes_for(scratch, &member.state, &state)?;
        }
        let shown = match &scratch {
            Some(scratch) => self.overlay_for(view, scratch, state.editable)?,
            None => Shown::View(Arc::clone(view)),
        };
        self.table.update(member, state, shown, scratch)
    }

    /// `Edit`: accept writes, or refuse them keeping the changes.
    pub fn edit(&self, name: &str, pid: i32, edit: Edit) -> Result<RuntimeInfo, RuntimeError> {
        let Edit {
            editable,
            only_if_editable,
            durable,
        } = edit;
        let member = self.table.member(name, pid)?;
        let mut state = member.state.clone();
        state.editable = editable;
        state.durable |= durable;
        let freeze_once = only_if_editable && !editable;
        match (&member.shown, editable) {
            (Shown::Overlay(overlay), _) => {
                if freeze_once && !overlay.freeze_if_editable() {
                    return Err(RuntimeError::NotEditable(name.to_owned()));
                }
                if !freeze_once {
                    overlay.set_editable(editable);
                }
                let shown = member.shown.clone();
                self.table
                    .update(&member, state, shown, member.scratch.clone())
            }
            (Shown::View(_), false) if freeze_once => {
                Err(RuntimeError::NotEditable(name.to_owned()))
            }
            (Shown::View(_), false) => self.table.get(name),
            (Shown::View(view), true) => {
                let scratch = self
                    .table
                    .new_scratch(name, ScratchFor::Runtime(member.id))?;
                let shown = self.overlay_for(view, &scratch, true)?;
                self.table.update(&member, state, shown, Some(scratch))
            }
        }
    }

    /// `Reset`: drops the changes (all, or under `paths`); the runtime shows
    /// a fresh overlay of what is left. Every path is checked before
    /// anything is dropped; if dropping fails part way (the disk refused),
    /// the runtime still shows what is on disk now, never a tree that
    /// names files already gone.
    pub fn reset(
        &self,
        name: &str,
        pid: i32,
        paths: &[PathBuf],
    ) -> Result<RuntimeInfo, RuntimeError> {
        let member = self.table.member(name, pid)?;
        let Some(scratch) = member.scratch.clone() else {
            return self.table.get(name);
        };
        let editable = member.state.editable;
        // No write may land between dropping the changes and the new overlay.
        if let Shown::Overlay(overlay) = &member.shown {
            overlay.set_editable(false);
        }
        let dropped = scratch
            .reset(paths)
            .map_err(|e| RuntimeError::scratch("cannot drop the changes", e));
        let shown = self
            .overlay_for(member.shown.layers(), &scratch, editable)
            .and_then(|shown| {
                let state = member.state.clone();
                self.table.update(&member, state, shown, Some(scratch))
            });
        match shown {
            Ok(info) => dropped.map(|()| info),
            Err(err) => {
                // The old overlay goes on as it was, not silently read-only.
                if let Shown::Overlay(overlay) = &member.shown {
                    overlay.set_editable(editable);
                }
                Err(dropped.err().unwrap_or(err))
            }
        }
    }
}

/// Drops a runtime's changes for a new stack, so a crash at any point
/// leaves one whole state: the new state is saved first (a commit's layer
/// on the stack then holds every change still on disk), then the changes
/// go ([`Scratch::drop_all`]). On failure the old state is saved back.
fn drop_changes_for(
    scratch: &Scratch,
    old: &RuntimeState,
    new: &RuntimeState,
) -> Result<(), RuntimeError> {
    scratch
        .write_state(new)
        .map_err(|e| RuntimeError::scratch(format!("cannot save runtime {:?}", new.name), e))?;
    crate::test_hooks::pause("stack_change.saved");
    scratch.drop_all().map_err(|e| {
        let _ = scratch.write_state(old);
        RuntimeError::scratch("cannot drop the changes", e)
    })
}

/// A runtime may only be given to the caller's own process tree: the root pid
/// must be the caller or an ancestor, and (unless the caller is root) run as
/// the caller's user.
fn authorize(caller: Option<Caller>, root: i32) -> Result<(), RuntimeError> {
    let caller = caller.ok_or(RuntimeError::UnknownCaller)?;
    let caller_pid = caller.pid.ok_or(RuntimeError::UnknownCaller)?;
    if !platform::is_same_or_ancestor(root, caller_pid) {
        return Err(RuntimeError::NotAnAncestor {
            root,
            caller: caller_pid,
        });
    }
    if caller.uid != 0 {
        let owner = platform::process_uid(root).map_err(|_| RuntimeError::NoSuchProcess(root))?;
        if owner != caller.uid {
            return Err(RuntimeError::OtherUser {
                root,
                owner,
                caller: caller.uid,
            });
        }
    }
    Ok(())
}

//! What each subcommand of `spfs` and `spfs-fuse-macos` does. The binaries
//! only parse arguments and call these.

mod about;
mod check;
mod commit;
mod current;
mod doctor;
mod edit;
mod inspect;
mod logs;
mod repo;
mod run;
mod runner;
mod runtime;
mod service;
mod tags;

pub use about::{config, init_repo, version};
pub use check::check;
pub use commit::{commit, write, CommitOptions, CommitSource};
pub use doctor::doctor;
pub use edit::{change_stack, diff, edit, reset};
pub use inspect::{info, list_objects, ls, read, AnnotationAsk, DigestStyle};
pub use logs::{logs, LogsOptions};
pub use run::{join, mount, run, shell, RunOptions};
pub use runtime::{runtime_info, runtime_list, runtime_prune, runtime_remove};
pub use service::{serve, start, status, stop};
pub use tags::{log, ls_tags, tag, tags, untag};

use crate::settings::Settings;
use crate::telemetry::{self, Program};

/// Reads the settings and starts the launcher's log.
fn launcher_settings() -> crate::error::Result<Settings> {
    let settings = Settings::from_env()?;
    telemetry::init(Program::Launcher, &settings.paths.log_dir);
    Ok(settings)
}

/// Runs `future` on a tokio runtime made for short client work: one
/// thread, nothing to spin up.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot create a tokio runtime")
        .block_on(future)
}

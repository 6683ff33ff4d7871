//! `spfs-fuse-macos`: the background service, and `mount` for scripts.
//! Parses arguments and calls `spfs::commands`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "spfs-fuse-macos",
    version,
    about = "The per-user SPFS FUSE service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service in the foreground (the launcher normally starts it)
    Service {
        /// Where to mount (default: $SPFS_MOUNTPOINT, else /spfs)
        mountpoint: Option<PathBuf>,
        /// Ask the running service to stop, and wait until it has gone
        #[arg(long, conflicts_with = "mountpoint")]
        stop: bool,
        /// With --stop: stop even though runtimes are active
        #[arg(long, requires = "stop")]
        force: bool,
        /// Stop after this long with no active runtime and no request: seconds (`600`, `2.5`) or `500ms`
        #[arg(long, value_name = "DURATION", value_parser = parse_idle)]
        idle_timeout: Option<std::time::Duration>,
    },
    /// Show REF's layers to a process tree (default: the calling process)
    Mount {
        /// Root of the process tree: yourself or one of your ancestors
        #[arg(long, value_name = "PID")]
        root_process: Option<i32>,
        /// Allow PID 1, or a process outside your session (their whole tree sees the layers)
        #[arg(long)]
        force: bool,
        #[arg(value_name = "REF")]
        reference: String,
    },
}

fn parse_idle(text: &str) -> Result<std::time::Duration, String> {
    spfs::settings::parse_duration(text)
}

fn main() -> ExitCode {
    let code = match Cli::parse().command {
        Command::Service {
            stop: true, force, ..
        } => spfs::commands::stop("spfs-fuse-macos service --stop", force),
        Command::Service {
            mountpoint,
            idle_timeout,
            ..
        } => spfs::commands::serve(mountpoint, idle_timeout),
        Command::Mount {
            root_process,
            reference,
            force,
        } => spfs::commands::mount(root_process, &reference, force),
    };
    spfs::telemetry::flush();
    code
}

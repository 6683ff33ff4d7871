//! `spfs`: the user's commands. Parses arguments and calls `spfs::commands`.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "spfs",
    version,
    about = "Run commands in a stack of SPFS layers shown at /spfs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run CMD with REF's layers at /spfs (starts the service if needed)
    Run {
        /// Layers to show, bottom to top: `base+app`, or `-` for none
        #[arg(value_name = "REF")]
        reference: String,
        /// The command and its arguments, after `--`
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Start your $SHELL with REF's layers at /spfs
    Shell {
        #[arg(value_name = "REF")]
        reference: String,
    },
    /// List the layers in the store (SPFS_STORAGE)
    Layers,
    /// Check FUSE, the service binary, runtime dir, mountpoint, service health and the last start
    Doctor,
    /// Control the background service
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
}

#[derive(Subcommand)]
enum ServiceAction {
    /// Start the service if it is not running
    Start,
    /// Stop the service and wait until it has gone
    Stop,
    /// Show the service and its active runtimes (exit 3 if not running)
    Status {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Show the service's log (or the launcher's) as readable lines
    Logs {
        /// Keep printing new lines, across daily rotation
        #[arg(short, long)]
        follow: bool,
        /// How many of the last lines to show
        #[arg(short = 'n', long = "lines", default_value_t = 20)]
        lines: usize,
        /// Print the raw JSON lines
        #[arg(long)]
        json: bool,
        /// The launcher's log instead of the service's
        #[arg(long)]
        launcher: bool,
    },
}

fn main() -> ExitCode {
    let code = match Cli::parse().command {
        Command::Run { reference, command } => spfs::commands::run(&reference, &command),
        Command::Shell { reference } => spfs::commands::shell(&reference),
        Command::Layers => spfs::commands::layers(),
        Command::Doctor => spfs::commands::doctor(),
        Command::Service { action } => match action {
            ServiceAction::Start => spfs::commands::start(),
            ServiceAction::Stop => spfs::commands::stop("spfs service stop"),
            ServiceAction::Status { json } => spfs::commands::status(json),
            ServiceAction::Logs {
                follow,
                lines,
                json,
                launcher,
            } => spfs::commands::logs(spfs::commands::LogsOptions {
                follow,
                lines,
                json,
                launcher,
            }),
        },
    };
    spfs::telemetry::flush();
    code
}

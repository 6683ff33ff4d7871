//! `spfs`: the user's commands. Parses arguments and calls `spfs::commands`.

use std::ffi::OsString;
use std::process::ExitCode;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use spfs::commands::{CommitOptions, CommitSource, DigestStyle};
use spfs::graph::ObjectKind;

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

/// What `spfs run` and `spfs shell` share: the ref and the runtime's options.
#[derive(Args)]
struct RunArgs {
    /// What to show, bottom to top: tags, digests or absolute directories
    /// joined by `+` (`base+app`), or `-` for none (editable by default)
    #[arg(value_name = "REF", required_unless_present = "rerun")]
    reference: Option<String>,
    /// Make the runtime editable: writes go to its scratch directory
    #[arg(short, long, conflicts_with = "no_edit")]
    edit: bool,
    /// Keep an empty environment (`-`) read-only; it is editable by default
    #[arg(long)]
    no_edit: bool,
    /// Name the runtime (its processes carry it as SPFS_RUNTIME); default: a new name
    #[arg(long, value_name = "NAME", conflicts_with = "rerun")]
    runtime_name: Option<String>,
    /// Keep the runtime and its changes after its processes exit (re-enter with --rerun)
    #[arg(short = 'k', long, env = "SPFS_KEEP_RUNTIME", value_parser = clap::builder::FalseyValueParser::new())]
    keep_runtime: bool,
    /// Re-enter the stopped runtime NAME, with its stack and changes
    #[arg(long, value_name = "NAME", conflicts_with = "reference")]
    rerun: Option<String>,
    /// Store KEY=VALUE with the runtime (an annotation layer on its stack; repeatable)
    #[arg(
        long = "annotation",
        value_name = "KEY=VALUE",
        conflicts_with = "rerun"
    )]
    annotations: Vec<String>,
    /// Store the annotations of a YAML or JSON mapping (`-`: stdin; repeatable)
    #[arg(
        long = "annotation-file",
        value_name = "FILE",
        conflicts_with = "rerun"
    )]
    annotation_files: Vec<std::path::PathBuf>,
}

impl RunArgs {
    fn split(self) -> (String, spfs::commands::RunOptions) {
        let options = spfs::commands::RunOptions {
            name: self.runtime_name,
            edit: self.edit,
            no_edit: self.no_edit,
            keep_runtime: self.keep_runtime,
            rerun: self.rerun,
            annotations: self.annotations,
            annotation_files: self.annotation_files,
        };
        (self.reference.unwrap_or_default(), options)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run CMD with REF's layers at /spfs (starts the service if needed)
    Run {
        #[command(flatten)]
        runtime: RunArgs,
        /// The command and its arguments, after `--`
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Start your $SHELL with REF's layers at /spfs
    Shell {
        #[command(flatten)]
        runtime: RunArgs,
    },
    /// Run CMD (else your $SHELL) in a running runtime, from any terminal
    Join {
        /// The running runtime's name
        #[arg(
            value_name = "NAME",
            required_unless_present = "pid",
            conflicts_with = "pid"
        )]
        name: Option<String>,
        /// The runtime process PID is in
        #[arg(long, value_name = "PID")]
        pid: Option<i32>,
        /// The command and its arguments, after `--`
        #[arg(last = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// The runtimes: running, and stopped ones kept on disk
    #[command(visible_alias = "rt")]
    Runtime {
        #[command(subcommand)]
        action: RuntimeAction,
    },
    /// Commit the changes of the runtime you are in (layer|platform), a directory (--path) or a stack of refs (--ref)
    Commit {
        /// `layer`: the runtime's changes as a layer, put on its stack (the
        /// runtime ends read-only); `platform`: that, then a platform of the whole stack
        #[arg(value_parser = ["layer", "platform"], required_unless_present_any = ["path", "reference"], conflicts_with_all = ["path", "reference"])]
        kind: Option<String>,
        /// Tag the result (repeatable)
        #[arg(short, long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Commit this directory as one layer
        #[arg(long, conflicts_with = "reference")]
        path: Option<PathBuf>,
        /// Make a platform of these refs, bottom to top (`base+app`)
        #[arg(long = "ref", value_name = "REF")]
        reference: Option<String>,
        /// Commit even when there is nothing to commit
        #[arg(long)]
        allow_empty: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Make the runtime you are in editable (its changes go to its scratch directory)
    Edit {
        /// Make it read-only instead, keeping its changes
        #[arg(long, conflicts_with = "keep_runtime")]
        off: bool,
        /// Also make it durable: kept, with its changes, after its processes exit
        #[arg(short = 'k', long)]
        keep_runtime: bool,
    },
    /// Drop the changes of the runtime you are in (all, or those at and below PATHS)
    Reset {
        /// Paths in /spfs to reset (`/spfs/bin/tool` or `bin/tool`); default: every change
        #[arg(value_name = "PATHS", conflicts_with = "reference")]
        paths: Vec<String>,
        /// Make the runtime editable afterwards (the default when --ref is empty or `-`)
        #[arg(short, long)]
        edit: bool,
        /// Show these layers instead of the runtime's stack, with no changes (`-`: none)
        #[arg(short = 'r', long = "ref", value_name = "REF")]
        reference: Option<String>,
    },
    /// List the changes of the runtime you are in, or between two refs: + added, ~ changed, - removed
    Diff {
        /// The ref to compare with; default: the runtime's stack (its changes are listed)
        #[arg(value_name = "FROM")]
        from: Option<String>,
        /// The ref to compare FROM with; default: what the runtime you are in shows
        #[arg(value_name = "TO")]
        to: Option<String>,
    },
    /// Tag an object
    Tag {
        /// What to tag: a tag or a (partial) digest
        #[arg(value_name = "TARGET_REF")]
        target: String,
        /// The tags to add
        #[arg(required = true, value_name = "TAG")]
        tags: Vec<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove one version of a tag (TAG~N or --latest), or all of them (--all)
    Untag {
        #[arg(value_name = "TAG")]
        tag: String,
        /// Remove the newest version
        #[arg(long)]
        latest: bool,
        /// Remove every version
        #[arg(short, long)]
        all: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show the versions of a tag, newest first
    Log {
        #[arg(value_name = "TAG")]
        tag: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List every tag
    Tags {
        /// Show the full digest each tag points to
        #[arg(long)]
        target: bool,
        /// Show the short digest each tag points to
        #[arg(long)]
        short: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the tags and tag folders under PATH
    #[command(name = "ls-tags", visible_alias = "list-tags")]
    LsTags {
        #[arg(default_value = "/")]
        path: String,
        /// List every tag below PATH
        #[arg(long)]
        recursive: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the layers in the repository
    Layers {
        #[command(flatten)]
        style: Style,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the platforms in the repository
    Platforms {
        #[command(flatten)]
        style: Style,
        #[command(flatten)]
        remote: Remote,
    },
    /// Describe objects: a layer's manifest, a platform's stack, ...
    Info {
        #[arg(value_name = "REF")]
        references: Vec<String>,
        #[command(flatten)]
        remote: Remote,
        #[command(flatten)]
        get: GetAnnotations,
    },
    /// List a directory of a ref
    #[command(visible_aliases = ["list-dir", "list"])]
    Ls {
        #[arg(value_name = "REF")]
        reference: String,
        #[arg(default_value = "/spfs")]
        path: String,
        /// Long listing: mode and size
        #[arg(short, long)]
        long: bool,
        /// Everything below PATH
        #[arg(short = 'R', long)]
        recursive: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Write a blob, or a file of a ref, to stdout
    #[command(visible_aliases = ["read-file", "cat", "cat-file"])]
    Read {
        #[arg(value_name = "REF")]
        reference: String,
        path: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Store stdin (or a file) as a blob
    #[command(visible_alias = "write-file")]
    Write {
        #[arg(short, long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Read this file instead of stdin
        #[arg(short, long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Check the repository: every object intact, nothing referred to missing
    Check {
        /// Check only these refs and what they refer to
        #[arg(value_name = "REF")]
        references: Vec<String>,
        /// Read every payload and check it hashes to its name (finds files
        /// changed in place; spfs's own check does not)
        #[arg(long)]
        rehash: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Check FUSE, the service binary, runtime dir, mountpoint, service health and the last start
    Doctor,
    /// Print the version
    Version,
    /// Print the spfs configuration this spfs reads, as JSON
    Config,
    /// Create an empty repository
    Init {
        #[command(subcommand)]
        what: InitWhat,
    },
    /// Control the background service
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
}

/// `spfs run` alone. Scripts and build tools call it thousands of times, and
/// building the parser of every subcommand costs about 0.1 ms, so a command
/// line starting with `run` is parsed with this first. Whatever it does not
/// accept (`--help`, a mistake) goes to the full parser, so help and errors
/// are the same either way.
#[derive(Parser)]
#[command(name = "spfs")]
struct RunOnly {
    #[command(subcommand)]
    command: RunCommand,
}

#[derive(Subcommand)]
enum RunCommand {
    Run {
        #[command(flatten)]
        runtime: RunArgs,
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
}

fn parse() -> Command {
    if std::env::args_os().nth(1).is_some_and(|a| a == "run") {
        if let Ok(RunOnly {
            command: RunCommand::Run { runtime, command },
        }) = RunOnly::try_parse()
        {
            return Command::Run { runtime, command };
        }
    }
    Cli::parse().command
}

#[derive(Subcommand)]
enum InitWhat {
    /// An empty filesystem repository at PATH (an existing one is left as it is)
    Repo { path: std::path::PathBuf },
}

/// `--get KEY` / `--get-all`: a runtime's annotations.
#[derive(Args)]
struct GetAnnotations {
    /// Print the runtime's annotation KEY (repeatable)
    #[arg(long = "get", visible_alias = "annotation", value_name = "KEY")]
    keys: Vec<String>,
    /// Print all the runtime's annotations, as YAML
    #[arg(long = "get-all", visible_alias = "all-annotations")]
    all: bool,
}

impl GetAnnotations {
    fn ask(self) -> spfs::commands::AnnotationAsk {
        spfs::commands::AnnotationAsk {
            keys: self.keys,
            all: self.all,
        }
    }
}

/// `-r/--remote NAME`: a configured remote instead of the local repository.
#[derive(Args)]
struct Remote {
    /// Use this configured remote instead of the local repository
    #[arg(short = 'r', long = "remote", value_name = "REMOTE")]
    name: Option<String>,
}

#[derive(Args)]
struct Style {
    /// Show short digests
    #[arg(long)]
    short: bool,
    /// Show short digests and the tags that point to them
    #[arg(long)]
    tags: bool,
}

impl From<Style> for DigestStyle {
    fn from(style: Style) -> Self {
        DigestStyle {
            short: style.short,
            tags: style.tags,
        }
    }
}

#[derive(Subcommand)]
enum RuntimeAction {
    /// One line per runtime, running then stopped
    #[command(visible_alias = "ls")]
    List {
        /// Names only
        #[arg(short, long)]
        quiet: bool,
    },
    /// A runtime as JSON (default: the one this command runs in, SPFS_RUNTIME)
    Info {
        #[arg(value_name = "NAME")]
        name: Option<String>,
        #[command(flatten)]
        get: GetAnnotations,
    },
    /// Delete stopped runtimes and their changes; end running ones (--force)
    #[command(visible_alias = "rm")]
    Remove {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// End them even though processes still run in them (their processes lose /spfs)
        #[arg(short, long)]
        force: bool,
        /// Also remove durable runtimes (--keep-runtime), with their changes
        #[arg(long)]
        remove_durable: bool,
    },
    /// Delete every stopped runtime and its changes (durable ones with --remove-durable)
    Prune {
        /// Also remove durable runtimes (--keep-runtime), with their changes
        #[arg(long)]
        remove_durable: bool,
    },
    /// Show another stack in the runtime you are in, keeping its changes
    ChangeStack {
        /// The whole new stack, bottom to top (`base+app`; `-` for none)
        #[arg(value_name = "REF")]
        reference: String,
        /// Drop the runtime's changes too
        #[arg(long)]
        drop_changes: bool,
    },
}

#[derive(Subcommand)]
enum ServiceAction {
    /// Start the service if it is not running
    Start,
    /// Stop the service and wait until it has gone (refused while runtimes are active)
    Stop {
        /// Stop even though runtimes are active: their commands lose /spfs
        #[arg(long)]
        force: bool,
    },
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
    let code = parse().run();
    spfs::telemetry::flush();
    code
}

impl Command {
    fn run(self) -> ExitCode {
        match self {
            Command::Run { runtime, command } => {
                let (reference, options) = runtime.split();
                spfs::commands::run(&reference, &command, &options)
            }
            Command::Shell { runtime } => {
                let (reference, options) = runtime.split();
                spfs::commands::shell(&reference, &options)
            }
            Command::Join { name, pid, command } => {
                spfs::commands::join(name.as_deref(), pid, &command)
            }
            Command::Runtime { action } => action.run(),
            Command::Commit {
                kind,
                tags,
                path,
                reference,
                allow_empty,
                remote,
            } => {
                let source = match (&path, &reference, &kind) {
                    (Some(path), _, _) => CommitSource::Path(path),
                    (_, Some(reference), _) => CommitSource::Ref(reference),
                    (_, _, kind) => CommitSource::Runtime(kind.as_deref().unwrap_or("layer")),
                };
                spfs::commands::commit(CommitOptions {
                    source,
                    tags: &tags,
                    allow_empty,
                    remote: remote.name.as_deref(),
                })
            }
            Command::Edit { off, keep_runtime } => spfs::commands::edit(off, keep_runtime),
            Command::Reset {
                paths,
                edit,
                reference,
            } => spfs::commands::reset(&paths, edit, reference.as_deref()),
            Command::Diff { from, to } => spfs::commands::diff(from.as_deref(), to.as_deref()),
            Command::Doctor => spfs::commands::doctor(),
            Command::Version => spfs::commands::version(),
            Command::Config => spfs::commands::config(),
            Command::Init {
                what: InitWhat::Repo { path },
            } => spfs::commands::init_repo(&path),
            Command::Service { action } => action.run(),
            tags @ (Command::Tag { .. }
            | Command::Untag { .. }
            | Command::Log { .. }
            | Command::Tags { .. }
            | Command::LsTags { .. }) => tags.run_on_tags(),
            objects => objects.run_on_objects(),
        }
    }

    /// The commands on a repository's tags.
    fn run_on_tags(self) -> ExitCode {
        match self {
            Command::Tag {
                target,
                tags,
                remote,
            } => spfs::commands::tag(&target, &tags, remote.name.as_deref()),
            Command::Untag {
                tag,
                latest,
                all,
                remote,
            } => spfs::commands::untag(&tag, latest, all, remote.name.as_deref()),
            Command::Log { tag, remote } => spfs::commands::log(&tag, remote.name.as_deref()),
            Command::Tags {
                target,
                short,
                remote,
            } => spfs::commands::tags(target, short, remote.name.as_deref()),
            Command::LsTags {
                path,
                recursive,
                remote,
            } => spfs::commands::ls_tags(&path, recursive, remote.name.as_deref()),
            _ => unreachable!("Command::run hands only tag commands here"),
        }
    }

    /// The commands on a repository's objects: listed, described, read,
    /// written, checked.
    fn run_on_objects(self) -> ExitCode {
        match self {
            Command::Layers { style, remote } => spfs::commands::list_objects(
                ObjectKind::Layer,
                style.into(),
                remote.name.as_deref(),
            ),
            Command::Platforms { style, remote } => spfs::commands::list_objects(
                ObjectKind::Platform,
                style.into(),
                remote.name.as_deref(),
            ),
            Command::Info {
                references,
                remote,
                get,
            } => spfs::commands::info(&references, remote.name.as_deref(), &get.ask()),
            Command::Ls {
                reference,
                path,
                long,
                recursive,
                remote,
            } => spfs::commands::ls(&reference, &path, long, recursive, remote.name.as_deref()),
            Command::Read {
                reference,
                path,
                remote,
            } => spfs::commands::read(&reference, path.as_deref(), remote.name.as_deref()),
            Command::Write { tags, file, remote } => {
                spfs::commands::write(&tags, file.as_deref(), remote.name.as_deref())
            }
            Command::Check {
                references,
                rehash,
                remote,
            } => spfs::commands::check(&references, remote.name.as_deref(), rehash),
            _ => unreachable!("Command::run hands only object commands here"),
        }
    }
}

impl RuntimeAction {
    fn run(self) -> ExitCode {
        match self {
            RuntimeAction::List { quiet } => spfs::commands::runtime_list(quiet),
            RuntimeAction::Info { name, get } => {
                spfs::commands::runtime_info(name.as_deref(), &get.ask())
            }
            RuntimeAction::Remove {
                names,
                force,
                remove_durable,
            } => spfs::commands::runtime_remove(&names, force, remove_durable),
            RuntimeAction::Prune { remove_durable } => {
                spfs::commands::runtime_prune(remove_durable)
            }
            RuntimeAction::ChangeStack {
                reference,
                drop_changes,
            } => spfs::commands::change_stack(&reference, drop_changes),
        }
    }
}

impl ServiceAction {
    fn run(self) -> ExitCode {
        match self {
            ServiceAction::Start => spfs::commands::start(),
            ServiceAction::Stop { force } => spfs::commands::stop("spfs service stop", force),
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
        }
    }
}

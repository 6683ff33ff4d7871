//! `spfs run`, `spfs shell` and `spfs-fuse-macos mount`: ensure the service,
//! `Mount` the env spec for a process, and (for run and shell) `exec` the
//! command in this very process, so the runtime ends exactly when the command
//! does and its exit status is ours.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use tracing::Instrument;

use super::runner::{self, Out};
use super::{block_on, launcher_settings};
use crate::error::Result;
use crate::launcher;
use crate::platform;
use crate::proto::MountRequest;
use crate::startup;
use crate::tracking::env_spec::EnvSpec;

/// How `spfs run` and `spfs shell` set up the runtime.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// `--runtime-name`; else one is made up.
    pub name: Option<String>,
    /// `-e/--edit`: writes go to the runtime's scratch directory. An empty
    /// environment (`-` or `""`) is editable whatever this says, as in spfs.
    pub edit: bool,
    /// `--no-edit`: an empty environment stays read-only.
    pub no_edit: bool,
    /// `--keep-runtime`: the runtime and its changes outlive its processes.
    pub keep_runtime: bool,
    /// `--rerun NAME`: re-enter a stopped runtime (the ref is not used).
    pub rerun: Option<String>,
    /// `--annotation KEY=VALUE`, in command-line order.
    pub annotations: Vec<String>,
    /// `--annotation-file FILE` (`-`: stdin), in command-line order.
    pub annotation_files: Vec<std::path::PathBuf>,
}

/// `spfs run REF -- CMD...`
pub fn run(reference: &str, command: &[OsString], options: &RunOptions) -> ExitCode {
    let Some((program, args)) = command.split_first() else {
        eprintln!("spfs run: error: no command given; usage: spfs run REF -- CMD [ARGS...]");
        return ExitCode::from(2);
    };
    run_in_env("spfs run", reference, Some((program, args)), options)
}

/// `spfs shell REF`: the user's `$SHELL` (else `/bin/sh`) in the
/// environment, after its startup scripts.
pub fn shell(reference: &str, options: &RunOptions) -> ExitCode {
    run_in_env("spfs shell", reference, None, options)
}

/// What runs in the runtime: a command, or (None) an interactive shell.
type Entry<'a> = Option<(&'a OsString, &'a [OsString])>;

fn run_in_env(tool: &str, reference: &str, entry: Entry, options: &RunOptions) -> ExitCode {
    runner::run(tool, || {
        // Bad input is refused before anything is started or logged.
        let (request, env_spec) = mount_request(reference, options, entry)?;
        let settings = launcher_settings()?;
        let name = request.name.clone();
        // One trace per command: the start (if any) and the Mount call are its children.
        let span = tracing::info_span!("spfs.run", env_spec = %env_spec);
        let mounted = block_on(launcher::mount(&settings, &request).instrument(span.clone()));
        drop(span);
        let mounted = match mounted {
            Ok(mounted) => mounted,
            Err(err) => {
                crate::telemetry::flush();
                return Err(err);
            }
        };
        let startup = mounted.startup_scripts.filter(|s| s.known);
        let paths = &settings.paths;
        let known = startup.as_ref().map(|s| s.names.as_slice());
        let mut command = entry_command(&paths.runtime_dir, &paths.mountpoint, entry, known)?;
        tracing::info!(
            event = "launcher.exec",
            command = %command.get_program().to_string_lossy(),
            "running the command"
        );
        // Spans and metrics go out now: exec ends this process image.
        crate::telemetry::flush();
        // Only returns on failure. The name goes with the command and
        // everything it starts, as spfs does, so a process that outlives its
        // parents stays in the runtime.
        let err = command.env(crate::contract::RUNTIME_VAR, &name).exec();
        eprintln!(
            "{tool}: error: cannot run {}: {err}",
            command.get_program().to_string_lossy()
        );
        Ok(ExitCode::from(match err.kind() {
            std::io::ErrorKind::NotFound => 127,
            _ => 126,
        }))
    })
}

/// `spfs join NAME|--pid PID [-- CMD...]`: runs CMD (else an interactive
/// shell) in the running runtime NAME, or the one process PID is in, from
/// any terminal: it gets that runtime's view and `SPFS_RUNTIME`, after the
/// startup scripts, as spfs's `spfs join` does. Never starts a service (no
/// service: no runtime to join).
pub fn join(name: Option<&str>, pid: Option<i32>, command: &[OsString]) -> ExitCode {
    let tool = "spfs join";
    runner::run(tool, || {
        let settings = launcher_settings()?;
        // The startup files go into the runtime dir: only one that is ours alone.
        settings.paths.ensure_runtime_dir()?;
        let runtimes = block_on(running_runtimes(&settings))?;
        let name = match (name, pid) {
            (Some(name), _) => runtimes
                .iter()
                .find(|r| r.name() == name)
                .map(|r| r.name().to_owned())
                .ok_or_else(|| crate::error::Error::Usage(format!(
                    "no running runtime named {:?}; `spfs runtime list` shows the runtimes (a stopped one is entered with `spfs run --rerun NAME`)",
                    crate::telemetry::short(name)
                )))?,
            (None, Some(pid)) => runtime_of_pid(&runtimes, pid)?,
            (None, None) => return Err(crate::error::Error::Usage("give a runtime NAME or --pid PID".into())),
        };
        let paths = &settings.paths;
        // Always through the shell: only once it carries the runtime's name
        // is this process in the runtime and sees its startup scripts.
        let shell = startup::Shell::from_env();
        let made = match command.split_first() {
            Some((program, args)) => {
                startup::command(&paths.runtime_dir, &paths.mountpoint, &shell, program, args)
            }
            None => startup::interactive(&paths.runtime_dir, &paths.mountpoint, &shell),
        };
        let mut command =
            made.map_err(|e| crate::error::Error::io("cannot write the shell's startup files", e))?;
        tracing::info!(event = "launcher.exec", command = %command.get_program().to_string_lossy(), "running the command");
        crate::telemetry::flush();
        let err = command.env(crate::contract::RUNTIME_VAR, &name).exec();
        eprintln!(
            "{tool}: error: cannot run {}: {err}",
            command.get_program().to_string_lossy()
        );
        Ok(ExitCode::from(126))
    })
}

/// The running runtimes of this user's service (none started here).
async fn running_runtimes(
    settings: &crate::settings::Settings,
) -> Result<Vec<crate::runtime::RuntimeInfo>> {
    let socket = settings.paths.socket();
    let channel = match crate::launcher::probe::probe(&socket).await {
        crate::launcher::probe::Probe::Serving { channel, .. } => channel,
        crate::launcher::probe::Probe::Absent { .. } => {
            return Err(crate::error::Error::NoRuntime {
                why: format!(
                    "no spfs service is running on {}, so no runtime runs",
                    socket.display()
                ),
                hint: "start one with `spfs run` or `spfs shell`".into(),
            })
        }
        other => return Err(other.refusal(&settings.paths)),
    };
    let status = crate::client::ControlClient::new(channel)
        .status(crate::telemetry::otel::traced(
            crate::proto::StatusRequest {},
        ))
        .await
        .map_err(|s| crate::error::Error::rpc("Status failed", s))?
        .into_inner();
    Ok(status
        .runtimes
        .into_iter()
        .map(crate::client::runtime_info)
        .collect())
}

/// The runtime `pid` is in: the nearest of its ancestors (itself first)
/// that is a running runtime's root process.
fn runtime_of_pid(runtimes: &[crate::runtime::RuntimeInfo], pid: i32) -> Result<String> {
    let mut current = pid;
    for _ in 0..65_536 {
        if let Some(found) = runtimes.iter().find(|r| r.root_pid == Some(current)) {
            return Ok(found.name().to_owned());
        }
        match platform::process_info(current) {
            Ok(info) if info.ppid > 0 && info.ppid != current => current = info.ppid,
            Ok(_) => break,
            Err(_) if current == pid => {
                return Err(crate::error::Error::Usage(format!(
                    "there is no process {pid}"
                )))
            }
            Err(_) => break,
        }
    }
    Err(crate::error::Error::Usage(format!(
        "process {pid} is in no running runtime (none of its ancestors is a runtime's root); `spfs runtime list` shows the runtimes, `spfs join NAME` enters one by name"
    )))
}

/// The process image the runtime starts with: the command itself when the
/// runtime has no startup script for the user's shell (no extra process),
/// else that shell, which sources them and execs the command; for
/// `spfs shell`, the shell (see `crate::startup`). `startup_names`: what
/// the service said `startup.d` holds, when it could tell.
fn entry_command(
    runtime_dir: &std::path::Path,
    mountpoint: &std::path::Path,
    entry: Entry,
    startup_names: Option<&[String]>,
) -> Result<std::process::Command> {
    let shell = startup::Shell::from_env();
    let made = match entry {
        Some((program, args)) if !startup::has_scripts(mountpoint, shell.family, startup_names) => {
            let mut command = std::process::Command::new(program);
            command.args(args);
            Ok(command)
        }
        Some((program, args)) => startup::command(runtime_dir, mountpoint, &shell, program, args),
        None => startup::interactive(runtime_dir, mountpoint, &shell),
    };
    made.map_err(|err| crate::error::Error::io("cannot write the shell's startup files", err))
}

/// The `Mount` of `spfs run REF` with `options`, for this process, and the
/// ref it shows (empty for a `--rerun`: the stack comes from the stopped
/// runtime).
fn mount_request(
    reference: &str,
    options: &RunOptions,
    entry: Entry,
) -> Result<(MountRequest, EnvSpec)> {
    let pid = std::process::id() as i32;
    let (user_spec, repositories) = match &options.rerun {
        Some(_) => (EnvSpec::empty(), Vec::new()),
        None => spec_and_repositories(reference)?,
    };
    // An empty REF is editable by default, whatever annotations go below it.
    let empty_ref = user_spec.is_empty();
    let env_spec = with_annotations(user_spec, options)?;
    let name = match (&options.rerun, &options.name) {
        (Some(name), _) | (None, Some(name)) => name.clone(),
        (None, None) => crate::contract::generated_name(pid),
    };
    // Refused here too, before a service is started for it.
    crate::contract::check_name(&name).map_err(|_| {
        crate::error::Error::Usage(format!(
            "runtime name {:?} is not usable: {}",
            crate::telemetry::short(&name),
            crate::contract::NAME_RULES
        ))
    })?;
    let request = MountRequest {
        root_pid: pid.into(),
        env_spec: match options.rerun {
            Some(_) => String::new(),
            None => env_spec.as_str().to_owned(),
        },
        repositories,
        name,
        editable: options.edit || (options.rerun.is_none() && empty_ref && !options.no_edit),
        durable: options.keep_runtime,
        rerun: options.rerun.is_some(),
        // as spfs records it: a shell as one empty string
        command: match entry {
            Some((program, args)) => std::iter::once(program)
                .chain(args)
                .map(|word| word.to_string_lossy().into_owned())
                .collect(),
            None => vec![String::new()],
        },
    };
    Ok((request, env_spec))
}

/// `spec` with the annotations of `options` below it, as spfs stacks
/// them: each pair its own annotation-only layer in the local repository,
/// the files' pairs first, then the `--annotation`s, the last given lowest.
fn with_annotations(spec: EnvSpec, options: &RunOptions) -> Result<EnvSpec> {
    use crate::tracking::annotations;
    if options.annotations.is_empty() && options.annotation_files.is_empty() {
        return Ok(spec);
    }
    let mut pairs = Vec::new();
    for file in &options.annotation_files {
        let text = read_annotation_file(file)?;
        let parsed = annotations::parse_mapping(&text).map_err(|why| {
            crate::error::Error::Usage(format!(
                "the annotation file {} is not usable: {why}; give a YAML or JSON mapping of names to values",
                file.display()
            ))
        })?;
        pairs.extend(parsed);
    }
    for pair in &options.annotations {
        pairs.extend(annotations::parse_pair(pair).map_err(crate::error::Error::Usage)?);
    }
    let config = crate::paths::load_spfs_config()?;
    let repo = crate::storage::fs::FsRepository::create(&config.local_root)?;
    let mut layers = Vec::new();
    for (key, value) in pairs.iter().rev() {
        let digest = annotations::write_layer(&repo, key, value, config.annotation_size_limit)?;
        layers.push(digest.to_base32());
    }
    if !spec.is_empty() {
        layers.push(spec.as_str().to_owned());
    }
    Ok(EnvSpec::parse(&layers.join("+"))?)
}

fn read_annotation_file(path: &std::path::Path) -> Result<String> {
    use std::io::Read;
    let mut text = String::new();
    let read = match path.as_os_str() == "-" {
        true => std::io::stdin().take(16 << 20).read_to_string(&mut text),
        false => std::fs::File::open(path).and_then(|f| f.take(16 << 20).read_to_string(&mut text)),
    };
    read.map_err(|e| {
        crate::error::Error::io(
            format!("cannot read the annotation file {}", path.display()),
            e,
        )
    })?;
    Ok(text)
}

/// `spfs-fuse-macos mount [--root-process PID] [--force] REF`, for scripts:
/// the runtime belongs to `PID` (default: the caller, our parent) and its
/// descendants. PID 1 and processes outside the caller's session (whose
/// trees hold other logins' processes) need `--force`.
pub fn mount(root_process: Option<i32>, reference: &str, force: bool) -> ExitCode {
    let tool = "spfs-fuse-macos mount";
    let pid = root_process.unwrap_or_else(|| nix::unistd::getppid().as_raw());
    if !platform::is_self_or_ancestor(pid) {
        eprintln!(
            "{tool}: error: process {pid} is not this process or one of its ancestors; only your own process tree can be given a runtime"
        );
        return ExitCode::from(2);
    }
    if let Err(why) = check_root_process(pid, force) {
        eprintln!("{tool}: error: {why}");
        return ExitCode::from(2);
    }
    runner::run(tool, || {
        let settings = launcher_settings()?;
        let (env_spec, repositories) = spec_and_repositories(reference)?;
        let request = MountRequest {
            root_pid: pid.into(),
            env_spec: env_spec.as_str().to_owned(),
            repositories,
            ..MountRequest::default()
        };
        block_on(launcher::mount(&settings, &request))?;
        let mut out = Out::new();
        out.line(format_args!(
            "mounted {:?} for process {pid}",
            env_spec.to_string()
        ))?;
        out.finish()?;
        Ok(ExitCode::SUCCESS)
    })
}

/// A root process whose tree is wider than the caller's login: PID 1 (every
/// process on the machine) or one outside the caller's session.
fn check_root_process(pid: i32, force: bool) -> std::result::Result<(), String> {
    if force {
        return Ok(());
    }
    let session = |p: i32| nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(p)));
    if pid == 1 {
        return Err("process 1 is the root of every process on this machine, so all of them would see these layers; pass --force if that is what you want".into());
    }
    match (session(pid), session(0)) {
        (Ok(theirs), Ok(ours)) if theirs != ours => Err(format!(
            "process {pid} is outside your session (session {theirs}, yours {ours}), so processes of other logins would see these layers; give a process of your own session, or pass --force"
        )),
        _ => Ok(()),
    }
}

/// Parses the ref (so a typo never starts a service) and reads the
/// caller's spfs configuration: the repositories the ref means, local first.
fn spec_and_repositories(reference: &str) -> Result<(EnvSpec, Vec<String>)> {
    let env_spec = EnvSpec::parse(reference)?;
    let env_spec =
        crate::tracking::spec_file::expand(&env_spec).map_err(crate::error::Error::Usage)?;
    let roots = crate::paths::load_spfs_config()?.runtime_repositories()?;
    let repositories = roots
        .into_iter()
        .map(|root| root.to_string_lossy().into_owned())
        .collect();
    Ok((env_spec, repositories))
}

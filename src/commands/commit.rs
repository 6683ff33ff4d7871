//! `spfs commit` and `spfs write`: put a directory, a stack of refs, the
//! changes of the runtime we are in, or a stream of bytes into the
//! repository, then tag it. The new digest goes to
//! stdout (for scripts); `created ...` lines go to stderr as spfs logs them.

use std::path::Path;
use std::process::ExitCode;

use super::repo::{self, Out, Progress};
use super::{block_on, current};
use crate::encoding::Digest;
use crate::error::{Error, Result};
use crate::proto::Editability;
use crate::runtime::changes;
use crate::runtime::RuntimeInfo;
use crate::storage::fs::FsRepository;
use crate::storage::proxy::ProxyRepository;
use crate::storage::tag::TagSpec;
use crate::tracking::commit::{commit_dir, commit_platform, CommitStats};
use crate::tracking::env_spec::EnvSpec;

/// What `spfs commit` was asked to commit.
pub enum CommitSource<'a> {
    /// `spfs commit --path DIR`: the directory as one layer.
    Path(&'a Path),
    /// `spfs commit --ref A+B`: a platform of the items, bottom to top.
    Ref(&'a str),
    /// `spfs commit layer|platform`: the changes of the runtime we are in.
    Runtime(&'a str),
}

pub struct CommitOptions<'a> {
    pub source: CommitSource<'a>,
    pub tags: &'a [String],
    pub allow_empty: bool,
    pub remote: Option<&'a str>,
}

pub fn commit(options: CommitOptions) -> ExitCode {
    repo::run("spfs commit", || {
        // Every tag is checked before anything is written.
        let tags = parse_tags(options.tags)?;
        let (repo, digest) = match options.source {
            CommitSource::Path(dir) => commit_path(options.remote, dir, options.allow_empty)?,
            CommitSource::Ref(reference) => commit_ref(options.remote, reference)?,
            CommitSource::Runtime(kind) => {
                if options.remote.is_some() {
                    return Err(Error::Usage(
                        "--remote works with --path and --ref only; a runtime's changes go to its own repository".into(),
                    ));
                }
                let kind = match kind {
                    "layer" => RuntimeCommit::Layer,
                    "platform" => RuntimeCommit::Platform,
                    other => {
                        return Err(Error::Usage(format!(
                            "don't know how to commit a {other:?}; give `layer` or `platform`"
                        )))
                    }
                };
                return commit_runtime(kind, options.allow_empty, &tags);
            }
        };
        finish(&repo, digest, &tags)
    })
}

fn parse_tags(tags: &[String]) -> Result<Vec<TagSpec>> {
    tags.iter().map(|t| repo::tag_spec(t)).collect()
}

/// Commits `dir` as a layer; returns the repository it went to and the digest.
fn commit_path(
    remote: Option<&str>,
    dir: &Path,
    allow_empty: bool,
) -> Result<(FsRepository, Digest)> {
    let meta = std::fs::metadata(dir)
        .map_err(|e| Error::io(format!("cannot commit {}", dir.display()), e))?;
    if !meta.is_dir() {
        return Err(Error::Usage(format!(
            "cannot commit {}: it is not a directory; give --path a directory",
            dir.display()
        )));
    }
    if !allow_empty
        && std::fs::read_dir(dir)
            .map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?
            .next()
            .is_none()
    {
        return Err(Error::NothingToCommit {
            why: format!(": {} is empty, so the layer would be empty", dir.display()),
            hint: "add files, or pass --allow-empty".into(),
        });
    }
    let repo = repo::writable(remote)?;
    repo.clear_stale_work(crate::storage::fs::STALE_WORK);
    // Ctrl-C stops the commit at its next file, leaving no temp file.
    let _caught = crate::interrupt::catch();
    let mut progress = Progress::new();
    let (layer, _manifest) = commit_dir(&repo, dir, &mut |stats: CommitStats| {
        progress.update(|| {
            format!(
                "committing {}: {}/{} files, {}/{}",
                dir.display(),
                stats.files,
                stats.total_files,
                repo::format_size(stats.bytes),
                repo::format_size(stats.total_bytes)
            )
        })
    })?;
    progress.clear();
    Ok((repo, layer))
}

/// Commits a platform of `reference`'s items; returns the repository and the digest.
fn commit_ref(remote: Option<&str>, reference: &str) -> Result<(FsRepository, Digest)> {
    let spec = EnvSpec::parse(reference)?;
    let items = spec.items();
    if items.is_empty() {
        return Err(Error::Usage(
            "--ref needs at least one tag or digest (e.g. --ref base+app)".into(),
        ));
    }
    let repos = repo::readable(remote)?;
    let mut layers = Vec::with_capacity(items.len());
    for (part, _) in items {
        layers.push(repo::resolve_digest(&repos, part)?);
    }
    let repo = repo::writable(remote)?;
    let platform = commit_platform(&repo, &repos, &layers)?;
    Ok((repo, platform))
}

/// What `spfs commit layer|platform` makes of the runtime's changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RuntimeCommit {
    Layer,
    Platform,
}

/// spfs's error when there is nothing to commit.
fn nothing_to_commit(kind: RuntimeCommit) -> Error {
    let (why, hint) = match kind {
        RuntimeCommit::Layer => (
            ": the runtime has no changes (see `spfs diff`)",
            "pass --allow-empty to make an empty layer anyway",
        ),
        RuntimeCommit::Platform => (
            ", the resulting platform would be empty: the runtime shows no layer and has no changes",
            "pass --allow-empty to make an empty platform anyway",
        ),
    };
    Error::NothingToCommit {
        why: why.into(),
        hint: hint.into(),
    }
}

/// `spfs commit layer|platform`: the changes of the runtime we are in as a
/// layer, put on top of its stack (the runtime ends read-only with no
/// changes, as in spfs); for a platform, then a platform of the whole stack.
///
/// The runtime is made read-only while its changes are read. Everything
/// that can fail is done before its stack changes: the layer is written
/// (its digest printed at once), the platform made (its layers looked up
/// in the runtime's repositories, as they were resolved), the tags
/// written. Any failure until then makes the runtime editable again, with
/// its changes; a failure of the stack change itself leaves the runtime in
/// one whole state (the service saves the new stack before it drops the
/// changes), which the error names.
fn commit_runtime(kind: RuntimeCommit, allow_empty: bool, tags: &[TagSpec]) -> Result<ExitCode> {
    let name = current::active_name(current::Hint::Commit)?;
    let settings = crate::settings::Settings::from_env()?;
    block_on(async {
        let channel = current::connect(&settings, &name).await?;
        let runtime = current::get_runtime(&channel, &name).await?;
        if kind == RuntimeCommit::Platform {
            // refused before anything is committed or put on the stack
            check_platform_stack(&runtime.state.stack)?;
        }
        if !runtime.state.editable {
            return Err(Error::NothingToCommit {
                why: format!(": the active runtime {name} is not editable"),
                hint: "make it editable with `spfs edit`, or commit a directory with `spfs commit --path DIR`".into(),
            });
        }
        crate::test_hooks::pause("commit.checked");
        // Ctrl-C from here on stops the work at its next step, and the
        // runtime is made editable again before the command exits.
        let _caught = crate::interrupt::catch();
        // Nothing may change while the changes are read.
        // Refused if another commit froze it first: then nothing here is
        // ours to thaw.
        let frozen = current::freeze(&channel, &name).await?;
        crate::test_hooks::pause("commit.frozen");
        let prepared = match prepare(kind, allow_empty, &frozen, tags) {
            Ok(_) if crate::interrupt::requested() => {
                let err = Error::Storage(crate::storage::error::StorageError::Interrupted);
                return Err(thaw(&channel, &name, err).await);
            }
            Ok(prepared) => prepared,
            Err(err) => return Err(thaw(&channel, &name, err).await),
        };
        let read_only = match prepared.layer {
            None => {
                // nothing goes on the stack: the runtime stays as it was
                if let Err(err) = current::edit(&channel, &name, true).await {
                    eprintln!(
                        "spfs commit: warning: {}; make it editable again with `spfs edit`",
                        err.with_fix()
                    );
                }
                false
            }
            Some(layer) => {
                put_on_stack(&channel, &name, &frozen, layer).await?;
                true
            }
        };
        print_digest(prepared.digest)?;
        if read_only {
            eprintln!("edit mode disabled");
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// What a runtime commit made before the stack changes.
struct Prepared {
    /// What the command prints: the layer, or the platform.
    digest: Digest,
    /// The layer of changes to put on the stack, if any.
    layer: Option<Digest>,
}

/// Everything of a runtime commit that can fail, done while the runtime
/// is frozen and before its stack changes: the layer, the platform over
/// the stack it will have, and the tags.
fn prepare(
    kind: RuntimeCommit,
    allow_empty: bool,
    frozen: &RuntimeInfo,
    tags: &[TagSpec],
) -> Result<Prepared> {
    let repos = current::runtime_repositories(frozen)?;
    let (repo, prepared) = match commit_frozen(kind, allow_empty, frozen)? {
        Frozen::Done { repo, digest } => (
            repo,
            Prepared {
                digest,
                layer: None,
            },
        ),
        Frozen::Layer { repo, layer } => {
            eprintln!("created digest={layer}");
            let digest = match kind {
                RuntimeCommit::Layer => layer,
                RuntimeCommit::Platform => {
                    let mut stack = frozen.state.stack.clone();
                    stack.push(layer.to_base32());
                    platform_of(&repo, &repos, &stack)?
                }
            };
            let layer = Some(layer);
            (repo, Prepared { digest, layer })
        }
    };
    if prepared.layer.is_none() || kind == RuntimeCommit::Platform {
        eprintln!("created digest={}", prepared.digest);
    }
    push_tags(&repo, prepared.digest, tags)?;
    Ok(prepared)
}

/// Puts the committed `layer` on top of the stack of the runtime `frozen`
/// showed, dropping its changes (now in the layer); the runtime stays
/// read-only, as in spfs. On failure the runtime is made editable again if
/// it still shows its old stack; the error says which state it is in.
async fn put_on_stack(
    channel: &tonic::transport::Channel,
    name: &str,
    frozen: &RuntimeInfo,
    layer: Digest,
) -> Result<()> {
    let old = current::stack_spec(frozen);
    let new = if old.is_empty() {
        layer.to_base32()
    } else {
        format!("{old}+{layer}")
    };
    let change = current::StackChange {
        env_spec: &new,
        expected_stack: &old,
        drop_changes: true,
        editable: Editability::ReadOnly,
    };
    let Err(err) = current::change_stack(channel, name, change).await else {
        return Ok(());
    };
    let why = err.with_fix();
    // A service that answered kept the old stack: it can take writes again.
    // One that went away (killed) kept the old stack with its changes or the
    // new one with the layer, never less; which, its next start shows.
    Err(match current::edit(channel, name, true).await {
        Ok(_) => Error::Incomplete(format!(
            "layer {layer} was committed, but the runtime still shows its old stack, editable, with its changes: {why}"
        )),
        Err(again) => Error::Incomplete(format!(
            "layer {layer} was committed, but putting it on the runtime's stack did not finish: {why}\n  \
             the runtime keeps either its old stack with its changes, or the new stack with the layer, never less; \
             see `spfs runtime info {name}` ({})",
            again.with_fix()
        )),
    })
}

/// What was committed while the runtime was read-only.
enum Frozen {
    /// A layer of changes, to put on the stack.
    Layer { repo: FsRepository, layer: Digest },
    /// The result, with nothing to put on the stack (an empty layer, or a
    /// platform of the stack as it is).
    Done { repo: FsRepository, digest: Digest },
}

fn commit_frozen(kind: RuntimeCommit, allow_empty: bool, runtime: &RuntimeInfo) -> Result<Frozen> {
    // The runtime's first repository is its local one: the layer goes
    // there, made on first use as spfs makes it.
    let stack = &runtime.state.stack;
    let repo = match runtime.state.repositories.first() {
        Some(first) => FsRepository::create(first)?,
        None => repo::writable(None)?,
    };
    repo.clear_stale_work(crate::storage::fs::STALE_WORK);
    let repos = current::runtime_repositories(runtime)?;
    let committed = if let Some(scratch) = current::open_scratch(runtime)? {
        let base = changes::base_manifest(stack, &repos)?;
        let mut progress = Progress::new();
        let committed = changes::commit_changes(
            &repo,
            &scratch,
            &base,
            allow_empty,
            &mut |stats: CommitStats| {
                progress.update(|| {
                    format!(
                        "committing changes: {}/{} files, {}/{}",
                        stats.files,
                        stats.total_files,
                        repo::format_size(stats.bytes),
                        repo::format_size(stats.total_bytes)
                    )
                })
            },
        )?;
        progress.clear();
        committed
    } else {
        None
    };
    match (kind, committed) {
        // An identical layer already on the stack would be dropped from it
        // (the first occurrence wins), hiding the changes: spfs refuses too.
        (_, Some(c)) if c.changes > 0 && stack.contains(&c.layer.to_base32()) => {
            Err(nothing_to_commit(kind))
        }
        (_, Some(c)) if c.changes > 0 => Ok(Frozen::Layer {
            repo,
            layer: c.layer,
        }),
        (RuntimeCommit::Layer, Some(c)) => Ok(Frozen::Done {
            repo,
            digest: c.layer,
        }),
        (RuntimeCommit::Layer, None) => Err(nothing_to_commit(kind)),
        (RuntimeCommit::Platform, _) => {
            if stack.is_empty() && !allow_empty {
                return Err(nothing_to_commit(kind));
            }
            let digest = platform_of(&repo, &repos, stack)?;
            Ok(Frozen::Done { repo, digest })
        }
    }
}

/// The stack's layers as digests; a directory layer cannot be in a platform.
fn check_platform_stack(stack: &[String]) -> Result<Vec<Digest>> {
    stack
        .iter()
        .map(|item| {
            Digest::parse(item).map_err(|_| {
                Error::Usage(format!(
                    "the runtime shows the directory {item} as a layer, which a platform cannot name; commit it with `spfs commit --path {item}` and run the result instead"
                ))
            })
        })
        .collect()
}

/// A platform of a runtime's stack (bottom to top), written to `repo`; its
/// layers may live in any of the runtime's repositories.
fn platform_of(repo: &FsRepository, repos: &ProxyRepository, stack: &[String]) -> Result<Digest> {
    Ok(commit_platform(repo, repos, &check_platform_stack(stack)?)?)
}

/// Makes the runtime editable again after a failed commit; returns `err`,
/// with a note if even that failed.
async fn thaw(channel: &tonic::transport::Channel, name: &str, err: Error) -> Error {
    match current::edit(channel, name, true).await {
        Ok(_) => err,
        Err(again) => Error::Incomplete(format!(
            "{}\n  and the runtime stays read-only: {}; its changes are kept, make it editable with `spfs edit`",
            err.with_fix(),
            again.with_fix()
        )),
    }
}

/// Tags `digest`, reporting each tag as spfs does.
fn push_tags(repo: &FsRepository, digest: Digest, tags: &[TagSpec]) -> Result<()> {
    for tag in tags {
        repo.push_tag(tag, &digest).map_err(|err| {
            Error::Incomplete(format!(
                "{digest} was committed, but tag {:?} could not be written: {}",
                tag.to_string(),
                crate::telemetry::with_fix(&err.to_string(), err.fix().as_deref())
            ))
        })?;
        eprintln!("created tag={:?}", tag.to_string());
    }
    Ok(())
}

/// The digest on stdout, for scripts.
fn print_digest(digest: Digest) -> Result<()> {
    let mut out = Out::new();
    out.line(digest)?;
    out.finish()?;
    Ok(())
}

/// Tags `digest`, then reports it as spfs does.
fn finish(repo: &FsRepository, digest: Digest, tags: &[TagSpec]) -> Result<ExitCode> {
    eprintln!("created digest={digest}");
    push_tags(repo, digest, tags)?;
    print_digest(digest)?;
    Ok(ExitCode::SUCCESS)
}

/// `spfs write [-t TAG]... [-f FILE]`: stdin (or FILE) as a blob.
pub fn write(tags: &[String], file: Option<&Path>, remote: Option<&str>) -> ExitCode {
    repo::run("spfs write", || {
        let tags = parse_tags(tags)?;
        let repo = repo::writable(remote)?;
        let digest = match file {
            Some(path) => {
                let mut reader = std::fs::File::open(path)
                    .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
                repo.write_blob(&mut reader)?
            }
            None => repo.write_blob(&mut std::io::stdin().lock())?,
        };
        finish(&repo, digest, &tags)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Scratch;

    /// A repository with one layer (`a`), and a runtime showing it with its
    /// scratch dir.
    fn setup() -> (tempfile::TempDir, RuntimeInfo, Digest) {
        let tmp = tempfile::tempdir().unwrap();
        let layer_dir = tmp.path().join("layer");
        std::fs::create_dir(&layer_dir).unwrap();
        std::fs::write(layer_dir.join("a"), "a").unwrap();
        let root = tmp.path().join("repo");
        let repo = FsRepository::create(&root).unwrap();
        let (layer, _) = commit_dir(&repo, &layer_dir, &mut |_| {}).unwrap();
        let scratch = Scratch::create(&tmp.path().join("scratch/rt")).unwrap();
        let runtime = RuntimeInfo {
            state: crate::runtime::RuntimeState {
                name: "rt".into(),
                env_spec: String::new(),
                editable: true,
                durable: false,
                stack: vec![layer.to_base32()],
                repositories: vec![root],
                created_unix: 0,
                command: Vec::new(),
            },
            root_pid: Some(1),
            since_unix: 0,
            scratch_dir: Some(scratch.root().to_owned()),
        };
        (tmp, runtime, layer)
    }

    #[test]
    fn a_runtime_without_changes_has_nothing_to_commit_but_its_platform() {
        let (_tmp, runtime, layer) = setup();
        let err = commit_frozen(RuntimeCommit::Layer, false, &runtime)
            .err()
            .unwrap();
        assert!(err.to_string().starts_with("nothing to commit"), "{err}");
        // --allow-empty: an empty layer, not put on the stack
        assert!(matches!(
            commit_frozen(RuntimeCommit::Layer, true, &runtime),
            Ok(Frozen::Done { .. })
        ));
        let Ok(Frozen::Done { repo, digest }) =
            commit_frozen(RuntimeCommit::Platform, false, &runtime)
        else {
            panic!("a platform of the stack as it is")
        };
        let Ok(crate::graph::Object::Platform(p)) = repo.read_object(&digest) else {
            panic!("not a platform")
        };
        assert_eq!(p.layers, [layer]);
        let mut empty = runtime;
        empty.state.stack = Vec::new();
        let err = commit_frozen(RuntimeCommit::Platform, false, &empty)
            .err()
            .unwrap();
        assert!(err.to_string().starts_with("nothing to commit"), "{err}");
    }

    #[test]
    fn changes_become_a_layer_for_the_stack() {
        let (_tmp, runtime, _) = setup();
        let scratch = Scratch::open(runtime.scratch_dir.as_ref().unwrap()).unwrap();
        std::fs::write(scratch.upper().join("b"), "b").unwrap();
        scratch.add_mask(Path::new("a")).unwrap();
        let Ok(Frozen::Layer { repo, layer }) =
            commit_frozen(RuntimeCommit::Layer, false, &runtime)
        else {
            panic!("a layer")
        };
        assert!(repo.has_object(&layer));
        // a directory layer cannot be named by a platform
        let with_dir = vec![runtime.state.stack[0].clone(), "/some/dir".to_string()];
        let err = platform_of(
            &repo,
            &ProxyRepository::from_repositories(Vec::new()),
            &with_dir,
        )
        .unwrap_err();
        assert!(err.to_string().contains("--path /some/dir"), "{err}");
    }
}

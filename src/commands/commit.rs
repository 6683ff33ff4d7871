//! `spfs commit` and `spfs write`: put a directory, a stack of refs or a
//! stream of bytes into the repository, then tag it. The new digest goes to
//! stdout (for scripts); `created ...` lines go to stderr as spfs logs them.

use std::path::Path;
use std::process::ExitCode;

use super::repo::{self, Out, Progress};
use crate::error::{Error, Result};
use crate::storage::encoding::Digest;
use crate::storage::fs::FsRepository;
use crate::storage::tag::TagSpec;
use crate::tracking::commit::{commit_dir, commit_platform, CommitStats};
use crate::tracking::env_spec;

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
                return Err(Error::Config(format!(
                    "`spfs commit {kind}` commits the changes of an editable runtime, which this service does not offer yet; commit a directory with `spfs commit --path DIR` or a stack with `spfs commit --ref A+B`"
                )))
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
        return Err(Error::Config(format!(
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
        return Err(Error::Config(format!(
            "nothing to commit: {} is empty, so the layer would be empty; add files, or pass --allow-empty",
            dir.display()
        )));
    }
    let repo = repo::writable(remote)?;
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
    let items = env_spec::parse(reference)?;
    if items.is_empty() {
        return Err(Error::Config(
            "--ref needs at least one tag or digest (e.g. --ref base+app)".into(),
        ));
    }
    let repos = repo::readable(remote)?;
    let mut layers = Vec::with_capacity(items.len());
    for (part, _) in &items {
        layers.push(repo::resolve_digest(&repos, part)?);
    }
    let repo = repo::writable(remote)?;
    let platform = commit_platform(&repo, &layers)?;
    Ok((repo, platform))
}

/// Tags `digest`, then reports it as spfs does.
fn finish(repo: &FsRepository, digest: Digest, tags: &[TagSpec]) -> Result<ExitCode> {
    eprintln!("created digest={digest}");
    for tag in tags {
        repo.push_tag(tag, &digest)?;
        eprintln!("created tag={:?}", tag.to_string());
    }
    let mut out = Out::new();
    out.line(digest)?;
    out.finish()?;
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

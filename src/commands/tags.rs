//! `spfs tag`, `untag`, `log`, `tags` and `ls-tags`: tag streams, with
//! spfs's flags and output.

use std::process::ExitCode;

use super::repo::{self, Out};
use crate::error::{Error, Result};
use crate::storage::tag::Tag;

/// `spfs tag TARGET TAG...`
pub fn tag(target: &str, tags: &[String], remote: Option<&str>) -> ExitCode {
    repo::run("spfs tag", || {
        let tags = tags
            .iter()
            .map(|t| repo::tag_spec(t))
            .collect::<Result<Vec<_>>>()?;
        let digest = repo::resolve_digest(&repo::readable(remote)?, target)?;
        let repo = repo::writable(remote)?;
        for tag in &tags {
            repo.push_tag(tag, &digest)?;
            eprintln!("created tag={:?}", tag.to_string());
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `spfs untag TAG~N | --latest TAG | --all TAG`
pub fn untag(tag: &str, latest: bool, all: bool, remote: Option<&str>) -> ExitCode {
    repo::run("spfs untag", || {
        let mut spec = repo::tag_spec(tag)?;
        let repo = repo::writable(remote)?;
        if all {
            // Fails with a clear error when there is no such stream.
            repo.tag_stream(&spec)?;
            repo.remove_tag_stream(&spec)?;
            eprintln!("removed tag={:?}", spec.path());
            return Ok(ExitCode::SUCCESS);
        }
        if latest {
            spec = spec.with_version(0);
        } else if !tag.contains('~') {
            return Err(Error::Usage(format!(
                "you must specify one of --all, --latest or provide a tag with an explicit version number (eg: {}~0)",
                spec.path()
            )));
        }
        let found = repo.resolve_tag(&spec)?;
        repo.remove_tag(&found)?;
        eprintln!("removed tag={:?}", spec.to_string());
        Ok(ExitCode::SUCCESS)
    })
}

/// spfs's time format in tag listings: `2024-05-01 12:34:56.123456 UTC`.
pub fn format_time(tag: &Tag) -> String {
    let t = tag.time.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// `spfs log TAG`: one line per version, newest first.
pub fn log(tag: &str, remote: Option<&str>) -> ExitCode {
    repo::run("spfs log", || {
        let spec = repo::tag_spec(tag)?;
        let repos = repo::readable(remote)?;
        let stream = repos.tag_stream(&spec)?;
        let mut out = Out::new();
        for (version, entry) in stream.iter().enumerate() {
            let digest = entry.target.to_base32();
            out.line(format_args!(
                "{} {} {} {}",
                &digest[..10],
                spec.with_version(version as u64),
                entry.user,
                format_time(entry)
            ))?;
        }
        out.finish()?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `spfs tags [--target | --short]`: every tag stream, with its newest target.
pub fn tags(target: bool, short: bool, remote: Option<&str>) -> ExitCode {
    repo::run("spfs tags", || {
        let repos = repo::readable(remote)?;
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Out::new();
        for repo in repos.repositories() {
            for spec in repo.iter_tag_streams() {
                let spec = spec?;
                if !seen.insert(spec.to_string()) {
                    continue;
                }
                let suffix = if target || short {
                    let digest = repo.resolve_tag(&spec)?.target.to_base32();
                    format!(" -> {}", if short { &digest[..8] } else { &digest })
                } else {
                    String::new()
                };
                out.line(format_args!("{spec}{suffix}"))?;
            }
        }
        out.finish()?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `spfs ls-tags [PATH] [--recursive]`: the tags and folders under PATH.
pub fn ls_tags(path: &str, recursive: bool, remote: Option<&str>) -> ExitCode {
    repo::run("spfs ls-tags", || {
        let repos = repo::readable(remote)?;
        let path = path.trim_matches('/');
        let mut names = std::collections::BTreeSet::new();
        for repo in repos.repositories() {
            if recursive {
                collect_recursive(repo, path, "", &mut names)?;
            } else {
                names.extend(repo.ls_tags(path)?);
            }
        }
        let mut out = Out::new();
        for name in names {
            out.line(name)?;
        }
        out.finish()?;
        Ok(ExitCode::SUCCESS)
    })
}

fn collect_recursive(
    repo: &crate::storage::fs::FsRepository,
    base: &str,
    prefix: &str,
    names: &mut std::collections::BTreeSet<String>,
) -> Result<()> {
    let here = [base, prefix.trim_end_matches('/')]
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    for entry in repo.ls_tags(&here)? {
        match entry.strip_suffix('/') {
            Some(folder) => collect_recursive(repo, base, &format!("{prefix}{folder}/"), names)?,
            None => {
                names.insert(format!("{prefix}{entry}"));
            }
        }
    }
    Ok(())
}

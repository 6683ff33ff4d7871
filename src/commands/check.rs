//! `spfs check [REF...] [--rehash]`: every object decodes and hashes to its
//! name, and everything a tag, platform, layer or manifest refers to is
//! present; with `--rehash` (ours: spfs's own check only looks for payload
//! files) every payload is read and must hash to its name too, which finds
//! a payload file changed in place or swapped for another of the same
//! size. Each problem is named on stderr; the summary goes to stdout; exit
//! status 1 when anything is wrong.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Instant;

use super::repo::{self, Out, Progress};
use crate::encoding::Digest;
use crate::error::Result;
use crate::graph::{EntryKind, Object};
use crate::storage::fs::FsRepository;
use crate::storage::proxy::ProxyRepository;

#[derive(Default)]
struct Tally {
    tags: u64,
    missing_tags: u64,
    objects: u64,
    missing_objects: u64,
    corrupt_objects: u64,
    payloads: u64,
    missing_payloads: u64,
    payload_bytes: u64,
    corrupt_payloads: u64,
    /// Bytes read and hashed (`--rehash`).
    hashed_bytes: u64,
}

struct Checker<'a> {
    repo: &'a FsRepository,
    tally: Tally,
    visited: HashSet<Digest>,
    payloads_seen: HashSet<Digest>,
    progress: Progress,
    rehash: bool,
}

impl Checker<'_> {
    fn problem(&mut self, text: String) {
        self.progress.clear();
        eprintln!("spfs check: {text}");
    }

    fn tick(&mut self) {
        let (objects, payloads) = (self.tally.objects, self.tally.payloads);
        let hashed = self.tally.hashed_bytes;
        let rehash = self.rehash;
        self.progress.update(|| match rehash {
            true => format!(
                "checking: {objects} objects, {payloads} payloads, {} hashed",
                repo::format_size(hashed)
            ),
            false => format!("checking: {objects} objects, {payloads} payloads"),
        });
    }

    /// Checks `digest` and everything below it, once.
    fn object(&mut self, digest: Digest, referrer: &str) {
        let mut pending = vec![(digest, referrer.to_owned())];
        while let Some((digest, referrer)) = pending.pop() {
            if !self.visited.insert(digest) {
                continue;
            }
            self.tally.objects += 1;
            self.tick();
            if !self.repo.has_object(&digest) {
                self.tally.missing_objects += 1;
                self.problem(format!(
                    "missing object {digest} (referred to by {referrer})"
                ));
                continue;
            }
            let object = match self.repo.read_object(&digest) {
                Ok(object) => object,
                Err(err) => {
                    self.tally.corrupt_objects += 1;
                    self.problem(err.to_string());
                    continue;
                }
            };
            let name = format!("{} {digest}", object.kind().name());
            match object {
                Object::Platform(platform) => {
                    pending.extend(platform.layers.into_iter().map(|d| (d, name.clone())))
                }
                Object::Layer(layer) => pending.extend(layer.manifest.map(|d| (d, name.clone()))),
                Object::Manifest(manifest) => {
                    for tree in &manifest.trees {
                        for entry in &tree.entries {
                            if entry.kind == EntryKind::Blob {
                                self.payload(entry.object, &name);
                            }
                        }
                    }
                }
                Object::Blob(blob) => self.payload(blob.payload, &name),
            }
        }
    }

    fn payload(&mut self, digest: Digest, referrer: &str) {
        if !self.payloads_seen.insert(digest) {
            return;
        }
        self.tally.payloads += 1;
        self.tick();
        match std::fs::metadata(self.repo.payload_path(&digest)) {
            Ok(meta) => {
                self.tally.payload_bytes += meta.len();
                if self.rehash {
                    self.rehash_payload(digest, referrer);
                }
            }
            Err(_) => {
                self.tally.missing_payloads += 1;
                self.problem(format!(
                    "missing payload {digest} (the contents of a file in {referrer})"
                ));
            }
        }
    }
}

impl Checker<'_> {
    /// Reads payload `digest` whole: it must hash to its name.
    fn rehash_payload(&mut self, digest: Digest, referrer: &str) {
        let path = self.repo.payload_path(&digest);
        let read = self.repo.open_payload(&digest).and_then(|mut file| {
            let mut hasher = crate::encoding::Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = std::io::Read::read(&mut file, &mut buf)
                    .map_err(|e| crate::storage::error::StorageError::io("read", &path, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                self.tally.hashed_bytes += n as u64;
                self.tick();
            }
            Ok(hasher.finish())
        });
        match read {
            Ok(found) if found == digest => {}
            Ok(found) => {
                self.tally.corrupt_payloads += 1;
                self.problem(format!(
                    "corrupt payload {digest} (the contents of a file in {referrer}): {} hashes to {found}; it was changed on disk",
                    path.display()
                ));
            }
            Err(err) => {
                self.tally.corrupt_payloads += 1;
                self.problem(err.to_string());
            }
        }
    }
}

pub fn check(references: &[String], remote: Option<&str>, rehash: bool) -> ExitCode {
    repo::run("spfs check", || {
        let started = Instant::now();
        let repos = repo::readable(remote)?;
        // The repository checked is the first one: --remote NAME, else the local one.
        let Some(repo) = repos.repositories().first() else {
            Out::new().line("No issues found (the local repository does not exist yet)")?;
            return Ok(ExitCode::SUCCESS);
        };
        let mut checker = Checker {
            repo,
            tally: Tally::default(),
            visited: HashSet::new(),
            payloads_seen: HashSet::new(),
            progress: Progress::new(),
            rehash,
        };
        if references.is_empty() {
            check_tags(&mut checker)?;
            for digest in repo.iter_objects() {
                match digest {
                    Ok(digest) => checker.object(digest, "the repository"),
                    Err(err) => {
                        checker.tally.corrupt_objects += 1;
                        checker.problem(err.to_string());
                    }
                }
            }
        } else {
            let single = ProxyRepository::from_repositories(vec![FsRepository::open(repo.root())?]);
            for reference in references {
                let digest = repo::resolve_digest(&single, reference)?;
                checker.object(digest, reference);
            }
        }
        checker.progress.clear();
        report(&checker.tally, started, rehash)
    })
}

fn check_tags(checker: &mut Checker) -> Result<()> {
    for spec in checker.repo.iter_tag_streams() {
        let spec = match spec {
            Ok(spec) => spec,
            Err(err) => {
                checker.problem(err.to_string());
                checker.tally.missing_tags += 1;
                continue;
            }
        };
        let stream = match checker.repo.tag_stream(&spec) {
            Ok(stream) => stream,
            Err(err) => {
                checker.tally.missing_tags += 1;
                checker.problem(err.to_string());
                continue;
            }
        };
        for (version, tag) in stream.iter().enumerate() {
            checker.tally.tags += 1;
            let name = spec.with_version(version as u64).to_string();
            if !checker.repo.has_object(&tag.target) {
                checker.tally.missing_tags += 1;
            }
            checker.object(tag.target, &format!("tag {name}"));
        }
    }
    Ok(())
}

fn report(tally: &Tally, started: Instant, rehash: bool) -> Result<ExitCode> {
    let mut out = Out::new();
    out.line(format_args!("Finished after {:.0?}:", started.elapsed()))?;
    out.line(format_args!(
        "{:>12} tags visited     ({} missing)",
        tally.tags, tally.missing_tags
    ))?;
    out.line(format_args!(
        "{:>12} objects visited  ({} missing, {} corrupt, 0 repaired)",
        tally.objects, tally.missing_objects, tally.corrupt_objects
    ))?;
    match rehash {
        true => out.line(format_args!(
            "{:>12} payloads visited ({} missing, {} corrupt, 0 repaired)",
            tally.payloads, tally.missing_payloads, tally.corrupt_payloads
        ))?,
        false => out.line(format_args!(
            "{:>12} payloads visited ({} missing, 0 repaired)",
            tally.payloads, tally.missing_payloads
        ))?,
    }
    out.line(format_args!(
        "{:>12} total payload footprint",
        repo::format_size(tally.payload_bytes)
    ))?;
    let problems = tally.missing_objects
        + tally.corrupt_objects
        + tally.missing_payloads
        + tally.corrupt_payloads;
    if problems == 0 {
        out.line("No issues found")?;
        out.finish()?;
        Ok(ExitCode::SUCCESS)
    } else {
        out.finish()?;
        eprintln!("spfs check: {problems} problem(s) found; see the lines above");
        Ok(ExitCode::FAILURE)
    }
}

//! `spfs layers`, `platforms`, `info`, `ls` and `read`: looking at what a
//! repository holds, with spfs's flags and output.

use std::collections::BTreeMap;
use std::process::ExitCode;

use super::repo::{self, Out};
use crate::encoding::Digest;
use crate::error::{Error, Result};
use crate::graph::{mode, AnnotationValue, EntryKind, Header, Object, ObjectKind, HEADER_SIZE};
use crate::storage::proxy::ProxyRepository;
use crate::tracking::env_spec::{EnvSpec, Layer};
use crate::tracking::manifest::{Entry, Manifest};

/// How `layers` and `platforms` print a digest.
#[derive(Clone, Copy)]
pub struct DigestStyle {
    pub short: bool,
    pub tags: bool,
}

/// `spfs layers` / `spfs platforms`: every object of that kind, one per line.
pub fn list_objects(kind: ObjectKind, style: DigestStyle, remote: Option<&str>) -> ExitCode {
    let tool = match kind {
        ObjectKind::Layer => "spfs layers",
        _ => "spfs platforms",
    };
    repo::run(tool, || {
        let repos = repo::readable(remote)?;
        let aliases = if style.tags {
            tag_aliases(&repos)?
        } else {
            BTreeMap::new()
        };
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Out::new();
        for repo in repos.repositories() {
            for digest in repo.iter_objects() {
                let digest = digest?;
                if !seen.insert(digest) || object_kind(repo, &digest) != Some(kind) {
                    continue;
                }
                out.line(format_digest(&digest, style, &aliases))?;
            }
        }
        out.finish()?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The kind of an object from its 17-byte header, without decoding the rest.
fn object_kind(repo: &crate::storage::fs::FsRepository, digest: &Digest) -> Option<ObjectKind> {
    use std::io::Read;
    let path = repo.object_path(digest);
    let mut header = [0u8; HEADER_SIZE];
    std::fs::File::open(path)
        .ok()?
        .read_exact(&mut header)
        .ok()?;
    Header::parse(&header).ok().map(|h| h.kind)
}

/// Every tag's newest target, as `digest -> [tag, ...]`.
fn tag_aliases(repos: &ProxyRepository) -> Result<BTreeMap<Digest, Vec<String>>> {
    let mut aliases: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
    for repo in repos.repositories() {
        for spec in repo.iter_tag_streams() {
            let spec = spec?;
            let tag = repo.resolve_tag(&spec)?;
            aliases
                .entry(tag.target)
                .or_default()
                .push(spec.to_string());
        }
    }
    Ok(aliases)
}

fn format_digest(
    digest: &Digest,
    style: DigestStyle,
    aliases: &BTreeMap<Digest, Vec<String>>,
) -> String {
    let text = digest.to_base32();
    if !style.short && !style.tags {
        return text;
    }
    let mut parts = vec![text[..8].to_owned()];
    if style.tags {
        parts.extend(aliases.get(digest).into_iter().flatten().cloned());
    }
    parts.join(" -> ")
}

/// `spfs info REF...`: what each ref is; layers show their manifest,
/// platforms their stack (top first).
pub fn info(references: &[String], remote: Option<&str>, get: &AnnotationAsk) -> ExitCode {
    repo::run("spfs info", || {
        if references.is_empty() {
            return active_runtime_info(get);
        }
        if get.is_asked() {
            return Err(Error::Usage(
                "--get and --get-all read the active runtime's annotations; give no REF (or use `spfs runtime info NAME --get KEY`)".into(),
            ));
        }
        let repos = repo::readable(remote)?;
        let mut out = Out::new();
        for (index, reference) in references.iter().enumerate() {
            let digest = repo::resolve_digest(&repos, reference)?;
            let object = repos.read_object(&digest)?;
            if index > 0 {
                out.line("")?;
            }
            out.line(format_args!("{digest}:"))?;
            match object {
                Object::Layer(layer) => describe_layer(&mut out, &digest, &layer)?,
                Object::Platform(platform) => describe_platform(&mut out, &digest, &platform)?,
                Object::Manifest(manifest) => describe_manifest(&mut out, &manifest)?,
                Object::Blob(blob) => {
                    out.line(" blob:")?;
                    out.line(format_args!(" digest: {}", blob.payload))?;
                    out.line(format_args!(" size: {}", repo::format_size(blob.size)))?;
                }
            }
        }
        out.finish()?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `spfs info` with no ref: the runtime this command runs in, as spfs
/// prints it (its stack top-down, each layer's size, whether it changed
/// anything).
fn active_runtime_info(get: &AnnotationAsk) -> Result<ExitCode> {
    let name = std::env::var(crate::contract::RUNTIME_VAR)
        .ok()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::NoRuntime {
            why: "no active runtime".into(),
            hint: "run this inside a runtime (`spfs run REF -- CMD`, `spfs shell REF`), or give REFs to describe".into(),
        })?;
    let settings = crate::settings::Settings::from_env()?;
    let runtime = super::block_on(async {
        let channel = super::current::connect(&settings, &name).await?;
        super::current::get_runtime(&channel, &name).await
    })?;
    let repos = super::current::runtime_repositories(&runtime)?;
    let mut out = Out::new();
    if get.is_asked() {
        print_annotations(&mut out, &repos, &runtime, get)?;
        out.finish()?;
        return Ok(ExitCode::SUCCESS);
    }
    out.line("Active Runtime:")?;
    out.line(format_args!(" id: {name}"))?;
    out.line(format_args!(" editable: {}", runtime.state.editable))?;
    out.line("stack (top-down):")?;
    for layer in runtime.state.stack.iter().rev() {
        let size = Digest::parse(layer)
            .ok()
            .map(|digest| layer_size(&repos, &digest))
            .unwrap_or(0);
        out.line(format_args!(
            "  - {layer}, Size: {}",
            repo::format_size(size)
        ))?;
    }
    out.line("")?;
    match has_changes(&runtime) {
        true => out.line("Run 'spfs diff' for active changes")?,
        false => out.line("No Active Changes")?,
    }
    out.finish()?;
    Ok(ExitCode::SUCCESS)
}

/// `--get KEY...` / `--get-all` of `spfs info` and `spfs runtime info`.
#[derive(Clone, Debug, Default)]
pub struct AnnotationAsk {
    pub keys: Vec<String>,
    pub all: bool,
}

impl AnnotationAsk {
    fn is_asked(&self) -> bool {
        self.all || !self.keys.is_empty()
    }
}

/// A runtime's annotations as spfs prints them: `--get` a value per line
/// (an empty line and a warning for a missing key), `--get-all` a YAML
/// mapping and a blank line.
pub fn print_annotations(
    out: &mut Out,
    repos: &ProxyRepository,
    runtime: &crate::runtime::RuntimeInfo,
    ask: &AnnotationAsk,
) -> Result<()> {
    use crate::tracking::annotations;
    let stack: Vec<Digest> = runtime
        .state
        .stack
        .iter()
        .filter_map(|layer| Digest::parse(layer).ok())
        .collect();
    let found = annotations::of_stack(repos, &stack);
    for key in &ask.keys {
        match annotations::get(&found, key) {
            Some(value) => out.line(value)?,
            None => {
                out.flush()?;
                eprintln!("WARN No annotation stored under: {key}");
                out.line("")?;
            }
        }
    }
    if ask.all {
        let text = annotations::to_yaml(&annotations::all(&found));
        out.line(text.trim_end_matches('\n'))?;
        out.line("")?;
    }
    Ok(())
}

/// The bytes of the files a layer holds (0 for one without a manifest,
/// or whose objects are missing).
fn layer_size(repos: &ProxyRepository, digest: &Digest) -> u64 {
    let manifest = match repos.read_object(digest) {
        Ok(Object::Layer(crate::graph::Layer {
            manifest: Some(manifest),
            ..
        })) => manifest,
        _ => return 0,
    };
    let Ok(Object::Manifest(manifest)) = repos.read_object(&manifest) else {
        return 0;
    };
    let Ok(manifest) = Manifest::from_graph(&manifest) else {
        return 0;
    };
    let mut total = 0;
    let _ = walk(manifest.root(), "", &mut |_, entry| {
        if entry.kind == EntryKind::Blob {
            total += entry.size;
        }
        Ok(())
    });
    total
}

/// Whether an editable runtime's changes hold anything (spfs's "dirty").
fn has_changes(runtime: &crate::runtime::RuntimeInfo) -> bool {
    let Some(dir) = &runtime.scratch_dir else {
        return false;
    };
    ["upper", "masks"].iter().any(|sub| {
        std::fs::read_dir(dir.join(sub)).is_ok_and(|mut entries| entries.next().is_some())
    })
}

/// A layer as `spfs info` shows it: its manifest and annotations.
fn describe_layer(out: &mut Out, digest: &Digest, layer: &crate::graph::Layer) -> Result<()> {
    out.line("layer:")?;
    out.line(format_args!(" refs: {digest}"))?;
    match layer.manifest {
        Some(manifest) => out.line(format_args!(" manifest: {manifest}"))?,
        None => out.line(" manifest: None")?,
    }
    if layer.annotations.is_empty() {
        return out.line(" annotations: none");
    }
    out.line(" annotations:")?;
    for annotation in &layer.annotations {
        out.line(format_args!("  key: {}", annotation.key))?;
        match &annotation.value {
            AnnotationValue::String(text) => out.line(format_args!("  value: {text}"))?,
            AnnotationValue::Blob(digest) => out.line(format_args!("  value: {digest}"))?,
        }
    }
    Ok(())
}

/// A platform as `spfs info` shows it: its stack, top first.
fn describe_platform(
    out: &mut Out,
    digest: &Digest,
    platform: &crate::graph::Platform,
) -> Result<()> {
    out.line("platform:")?;
    out.line(format_args!(" refs: {digest}"))?;
    out.line("stack (top-down):")?;
    for layer in platform.layers.iter().rev() {
        out.line(format_args!("  - {layer}"))?;
    }
    Ok(())
}

/// A manifest as `spfs info` shows it: its first ten entries.
fn describe_manifest(out: &mut Out, manifest: &crate::graph::Manifest) -> Result<()> {
    out.line("manifest:")?;
    let manifest = Manifest::from_graph(manifest)?;
    let mut shown = 0;
    walk(manifest.root(), "", &mut |path, entry| {
        shown += 1;
        if shown <= 10 {
            out.line(format_args!(
                " {:06o} {} {} /spfs{path}",
                entry.mode,
                entry.kind.as_text(),
                entry.object
            ))
        } else {
            Ok(())
        }
    })?;
    if shown > 10 {
        out.line("   ...[truncated]")?;
    }
    Ok(())
}

/// Every entry below `dir`, depth first, with its path.
fn walk(
    dir: &Entry,
    prefix: &str,
    visit: &mut dyn FnMut(&str, &Entry) -> Result<()>,
) -> Result<()> {
    for (name, entry) in &dir.entries {
        let path = format!("{prefix}/{name}");
        visit(&path, entry)?;
        if entry.kind == EntryKind::Tree {
            walk(entry, &path, visit)?;
        }
    }
    Ok(())
}

/// The merged manifest of a ref (`a+b` stacks too), as a runtime shows it.
fn merged_manifest(repos: &ProxyRepository, reference: &str) -> Result<Manifest> {
    let mut merged = Manifest::default();
    for layer in EnvSpec::parse(reference)?.resolve(repos)? {
        match layer {
            Layer::Manifest { manifest, .. } => merged.update(&Manifest::from_graph(&manifest)?),
            Layer::Dir(path) => {
                return Err(Error::Usage(format!(
                    "{} is a directory; look at it directly (ls, cat)",
                    path.display()
                )))
            }
        }
    }
    Ok(merged)
}

/// `/spfs/a/b`, `/a/b` and `a/b` all name `a/b` inside the environment.
fn inner_path(path: &str) -> &str {
    let path = path.strip_prefix("/spfs").unwrap_or(path);
    path.trim_matches('/')
}

fn find<'a>(manifest: &'a Manifest, path: &str) -> Option<&'a Entry> {
    let inner = inner_path(path);
    if inner.is_empty() {
        return Some(manifest.root());
    }
    manifest.get(inner).filter(|e| e.kind != EntryKind::Mask)
}

/// `spfs ls REF [PATH] [-l] [-R]`: the names in a directory of the ref.
pub fn ls(
    reference: &str,
    path: &str,
    long: bool,
    recursive: bool,
    remote: Option<&str>,
) -> ExitCode {
    repo::run("spfs ls", || {
        let repos = repo::readable(remote)?;
        let manifest = merged_manifest(&repos, reference)?;
        let Some(dir) = find(&manifest, path) else {
            return Err(Error::Usage(format!(
                "path not found in {reference:?}: {path}"
            )));
        };
        if dir.kind != EntryKind::Tree {
            return Err(Error::Usage(format!("path is not a directory: {path}")));
        }
        let mut out = Out::new();
        list_dir(&mut out, dir, "", long, recursive)?;
        out.finish()?;
        Ok(ExitCode::SUCCESS)
    })
}

fn list_dir(out: &mut Out, dir: &Entry, prefix: &str, long: bool, recursive: bool) -> Result<()> {
    for (name, entry) in &dir.entries {
        if entry.kind == EntryKind::Mask {
            continue;
        }
        let slash = if entry.kind == EntryKind::Tree {
            "/"
        } else {
            ""
        };
        let shown = format!("{prefix}{name}{slash}");
        if long {
            out.line(format_args!(
                "{} {:>10} {shown}",
                mode_string(entry.mode),
                entry.size
            ))?;
        } else {
            out.line(&shown)?;
        }
        if recursive && entry.kind == EntryKind::Tree {
            list_dir(out, entry, &shown, long, recursive)?;
        }
    }
    Ok(())
}

/// `drwxr-xr-x`, as `ls -l` shows a mode.
fn mode_string(mode: u32) -> String {
    let kind = match mode::file_type(mode) {
        mode::DIRECTORY => 'd',
        mode::SYMLINK => 'l',
        _ => '-',
    };
    let mut text = String::from(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

/// `spfs read REF [PATH]`: a blob's bytes, or a file's in the ref, to stdout.
pub fn read(reference: &str, path: Option<&str>, remote: Option<&str>) -> ExitCode {
    repo::run("spfs read", || {
        let repos = repo::readable(remote)?;
        let payload = match path {
            None => {
                let digest = repo::resolve_digest(&repos, reference)?;
                match repos.read_object(&digest) {
                    Ok(Object::Blob(blob)) => blob.payload,
                    Ok(other) => {
                        return Err(Error::Usage(format!(
                            "{reference} is a {}: give the PATH of a file in it to read",
                            repo::kind_name(&other)
                        )))
                    }
                    // A payload without a Blob object is still readable by digest.
                    Err(crate::storage::error::StorageError::UnknownObject(_)) => digest,
                    Err(err) => return Err(err.into()),
                }
            }
            Some(path) => {
                let manifest = merged_manifest(&repos, reference)?;
                match find(&manifest, path) {
                    Some(entry) if entry.kind == EntryKind::Blob => entry.object,
                    Some(_) => {
                        return Err(Error::Usage(format!(
                            "path is a directory or masked file: {path}"
                        )))
                    }
                    None => return Err(Error::Usage(format!("file does not exist: {path}"))),
                }
            }
        };
        let mut file = open_payload(&repos, &payload)?;
        let mut out = Out::new();
        out.copy(&mut file)?;
        out.finish()?;
        Ok(ExitCode::SUCCESS)
    })
}

fn open_payload(repos: &ProxyRepository, digest: &Digest) -> Result<std::fs::File> {
    for repo in repos.repositories() {
        if repo.has_payload(digest) {
            return Ok(repo.open_payload(digest)?);
        }
    }
    Err(crate::storage::error::StorageError::UnknownPayload(*digest).into())
}

//! Env specs: what `spfs run REF` shows ([`EnvSpec`]), parsed once, and
//! resolved to a stack of layers.
//!
//! `a+b+c` stacks items bottom to top (the later wins where paths collide);
//! `-` or an empty string is the empty environment. Each item is, as in spfs,
//! a full digest, a unique partial digest, or a tag (`org/name`, `~N` for an
//! older version); an absolute directory path is also a layer (development,
//! tests). Platforms expand recursively into their layers, and the first
//! occurrence of a layer wins. Every error names the item that is wrong.

use std::collections::HashSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use crate::encoding::{Digest, PartialDigest};
use crate::graph::{Manifest, Object};
use crate::storage::error::StorageError;
use crate::storage::proxy::ProxyRepository;
use crate::storage::tag::TagSpec;
use crate::telemetry::short as shorten;

/// Longest env spec accepted (`contract::MAX_ENV_SPEC_BYTES`).
pub use crate::contract::MAX_ENV_SPEC_BYTES as MAX_SPEC_BYTES;

/// More layers than any real environment; bounds the work one `Mount` can ask for.
pub const MAX_LAYERS: usize = 1000;
/// Platforms nest at most this deep (a deeper chain is a cycle or an attack).
pub const MAX_PLATFORM_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("the ref is {bytes} bytes; at most {MAX_SPEC_BYTES} are accepted")]
    TooLong { bytes: usize },
    #[error("empty item at position {position} of {spec:?}; items are joined by single '+'")]
    EmptyPart { spec: String, position: usize },
    #[error("{part:?} contains '..'; give the layer's real absolute path")]
    DotDot { part: String },
    #[error("{spec:?} has {count} items; at most {MAX_LAYERS} are allowed")]
    TooMany { spec: String, count: usize },
    #[error("{part:?} is neither a digest nor a valid tag: {reason}")]
    BadItem { part: String, reason: String },
    #[error("unknown reference {part:?}: no such tag or object in {repos} (see `spfs tags`, `spfs layers`)")]
    Unknown { part: String, repos: String },
    #[error("ambiguous reference {part:?}: it is the start of {} digests: {}; give more characters", candidates.len(), candidates.join(", "))]
    Ambiguous {
        part: String,
        candidates: Vec<String>,
    },
    #[error("{part:?} names a blob (a file's contents), not a layer or platform")]
    IsBlob { part: String },
    #[error("{part:?}: platforms nest deeper than {MAX_PLATFORM_DEPTH} levels (a cycle?)")]
    TooDeep { part: String },
    #[error("{part:?} expands to more than {MAX_LAYERS} layers")]
    TooManyLayers { part: String },
    #[error("{part:?} is a directory; this needs a tag or a digest")]
    NotAnObject { part: String },
    #[error("layer {part:?} does not exist")]
    Missing { part: String },
    #[error("layer {part:?} is not a directory")]
    NotADirectory { part: String },
    #[error("layer {part:?} cannot be read: {error}")]
    Unreadable { part: String, error: String },
    #[error("{part:?}: {error}")]
    Storage { part: String, error: StorageError },
}

impl SpecError {
    /// What to do about it, beyond what the message says.
    pub fn fix(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            SpecError::TooLong { .. } => Some("give fewer or shorter items, or make a platform of them once with `spfs commit --ref` and run that".into()),
            SpecError::Storage { error, .. } => error.fix(),
            _ => None,
        }
    }
}

/// One item of a spec, after its syntax was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Digest(Digest),
    /// A tag, if one of that name exists (as spfs tries it first), else a
    /// partial digest.
    Partial(PartialDigest, Option<TagSpec>),
    Tag(TagSpec),
    Dir(PathBuf),
}

/// One layer of a stack as resolved from a spec, before any manifest is read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StackItem {
    /// A layer or bare manifest object; `manifest` is what it shows (none:
    /// a layer of annotations only).
    Object {
        digest: Digest,
        manifest: Option<Digest>,
    },
    /// A directory on disk.
    Dir(PathBuf),
}

/// A layer of a resolved stack, bottom to top.
#[derive(Debug, Clone)]
pub enum Layer {
    /// A layer (or bare manifest) object: its manifest, already read and verified.
    Manifest { digest: Digest, manifest: Manifest },
    /// A directory on disk, shown as it is.
    Dir(PathBuf),
}

/// A ref (`base+app`, tags, digests, directories), parsed once: its text
/// and its items, bottom to top. Its [`Display`](fmt::Display) is the text
/// cut to one screen (for messages and logs); [`EnvSpec::as_str`] is the
/// text itself, which goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvSpec {
    text: String,
    /// Each item's text (cut for messages) and what it names.
    items: Vec<(String, Item)>,
}

impl EnvSpec {
    /// Checks the size and the syntax, without touching the disk.
    pub fn parse(text: &str) -> Result<EnvSpec, SpecError> {
        if text.len() > MAX_SPEC_BYTES {
            return Err(SpecError::TooLong { bytes: text.len() });
        }
        Ok(EnvSpec {
            items: parse(text)?,
            text: text.to_owned(),
        })
    }

    /// The empty environment (`-`).
    pub fn empty() -> EnvSpec {
        EnvSpec {
            text: "-".into(),
            items: Vec::new(),
        }
    }

    /// The text as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The items, bottom to top: each one's text (cut for messages) and
    /// what it names.
    pub fn items(&self) -> &[(String, Item)] {
        &self.items
    }

    /// Whether it names no layer at all (`-`, `""`).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Resolves it in `repos` to layers, bottom to top. Reads (and
    /// verifies) platform, layer and manifest objects; no payloads.
    pub fn resolve(&self, repos: &ProxyRepository) -> Result<Vec<Layer>, SpecError> {
        load(self.resolve_stack(repos)?, repos)
    }

    /// Resolves it to its stack: tags and digests to objects, platforms
    /// expanded, duplicates dropped. Reads platform and layer objects only,
    /// so it is cheap even for a huge layer; [`load`] then reads the
    /// manifests.
    pub fn resolve_stack(&self, repos: &ProxyRepository) -> Result<Vec<StackItem>, SpecError> {
        let mut stack = Vec::new();
        let mut seen = HashSet::new();
        for (part, item) in &self.items {
            let digest = match item {
                Item::Dir(path) => {
                    check_dir(part, path)?;
                    stack.push(StackItem::Dir(path.clone()));
                    continue;
                }
                item => item_digest(part, item, repos)?,
            };
            expand(part, digest, repos, 0, &mut seen, &mut stack)?;
        }
        Ok(stack)
    }
}

impl fmt::Display for EnvSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shorten(&self.text))
    }
}

impl StackItem {
    /// How it is named in a runtime's stack: a digest, or the directory's
    /// absolute path (what `Runtime.stack` reports and a durable runtime
    /// saves).
    pub fn name(&self) -> String {
        match self {
            StackItem::Object { digest, .. } => digest.to_string(),
            StackItem::Dir(path) => path.display().to_string(),
        }
    }
}

/// Checks the syntax and returns the items bottom to top, without touching the disk.
fn parse(spec: &str) -> Result<Vec<(String, Item)>, SpecError> {
    if spec.is_empty() || spec == "-" {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = spec.split('+').collect();
    if parts.len() > MAX_LAYERS {
        return Err(SpecError::TooMany {
            spec: shorten(spec),
            count: parts.len(),
        });
    }
    let mut items = Vec::with_capacity(parts.len());
    for (index, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err(SpecError::EmptyPart {
                spec: shorten(spec),
                position: index + 1,
            });
        }
        items.push((shorten(part), parse_item(part)?));
    }
    Ok(items)
}

fn parse_item(part: &str) -> Result<Item, SpecError> {
    if part.starts_with('/') {
        let path = Path::new(part);
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(SpecError::DotDot {
                part: shorten(part),
            });
        }
        return Ok(Item::Dir(path.to_owned()));
    }
    if let Ok(digest) = Digest::parse(part) {
        return Ok(Item::Digest(digest));
    }
    let tag = TagSpec::parse(part);
    match PartialDigest::parse(part) {
        Ok(partial) => Ok(Item::Partial(partial, tag.ok())),
        Err(_) => match tag {
            Ok(tag) => Ok(Item::Tag(tag)),
            Err(err) => Err(SpecError::BadItem {
                part: shorten(part),
                // The reason quotes the item again: keep the message one screen.
                reason: shorten(&err.to_string()),
            }),
        },
    }
}

/// Reads (and verifies) the manifest of every item of `stack`.
pub fn load(stack: Vec<StackItem>, repos: &ProxyRepository) -> Result<Vec<Layer>, SpecError> {
    stack
        .into_iter()
        .map(|item| match item {
            StackItem::Dir(path) => Ok(Layer::Dir(path)),
            StackItem::Object {
                digest,
                manifest: None,
            } => Ok(Layer::Manifest {
                digest,
                manifest: Manifest::default(),
            }),
            StackItem::Object {
                digest,
                manifest: Some(manifest),
            } => {
                let storage = |error| SpecError::Storage {
                    part: digest.to_base32(),
                    error,
                };
                match repos.read_object(&manifest).map_err(storage)? {
                    Object::Manifest(manifest) => Ok(Layer::Manifest { digest, manifest }),
                    _ => Err(storage(StorageError::corrupt(
                        manifest.to_base32(),
                        format!(
                            "layer {digest} names it as its manifest, but it is not a manifest"
                        ),
                    ))),
                }
            }
        })
        .collect()
}

/// The object an item (not a directory) names: a digest, the one object a
/// partial digest starts, or a tag's target.
pub fn item_digest(part: &str, item: &Item, repos: &ProxyRepository) -> Result<Digest, SpecError> {
    let storage = |error| SpecError::Storage {
        part: part.into(),
        error,
    };
    let unknown = || SpecError::Unknown {
        part: part.into(),
        repos: describe(repos),
    };
    match item {
        Item::Digest(digest) => Ok(*digest),
        Item::Tag(tag) => Ok(repos.resolve_tag(tag).map_err(storage)?.target),
        Item::Partial(partial, tag) => {
            // A tag of that name first, as spfs resolves a ref: `T` is a tag
            // even when some object's digest starts with T.
            if let Some(tag) = tag {
                match repos.resolve_tag(tag) {
                    Ok(found) => return Ok(found.target),
                    Err(StorageError::UnknownTag { .. }) => {}
                    Err(err) => return Err(storage(err)),
                }
            }
            let found = repos.find_digests(partial).map_err(storage)?;
            match found.as_slice() {
                [one] => Ok(*one),
                [] => Err(unknown()),
                many => Err(SpecError::Ambiguous {
                    part: part.into(),
                    candidates: many.iter().map(|d| d.to_base32()).collect(),
                }),
            }
        }
        Item::Dir(_) => Err(SpecError::NotAnObject { part: part.into() }),
    }
}

/// Adds the layers of `digest` (a layer, a manifest or a platform) in order.
fn expand(
    part: &str,
    digest: Digest,
    repos: &ProxyRepository,
    depth: usize,
    seen: &mut HashSet<Digest>,
    stack: &mut Vec<StackItem>,
) -> Result<(), SpecError> {
    if depth > MAX_PLATFORM_DEPTH {
        return Err(SpecError::TooDeep { part: part.into() });
    }
    let object = repos.read_object(&digest).map_err(|err| match err {
        StorageError::UnknownObject(_) if depth == 0 => SpecError::Unknown {
            part: part.into(),
            repos: describe(repos),
        },
        error => SpecError::Storage {
            part: part.into(),
            error,
        },
    })?;
    match object {
        Object::Platform(platform) => {
            for layer in platform.layers {
                expand(part, layer, repos, depth + 1, seen, stack)?;
            }
        }
        // The first occurrence of a layer wins; later duplicates add nothing.
        _ if !seen.insert(digest) => {}
        Object::Layer(layer) => stack.push(StackItem::Object {
            digest,
            manifest: layer.manifest,
        }),
        Object::Manifest(_) => stack.push(StackItem::Object {
            digest,
            manifest: Some(digest),
        }),
        Object::Blob(_) => return Err(SpecError::IsBlob { part: part.into() }),
    }
    if stack.len() > MAX_LAYERS {
        return Err(SpecError::TooManyLayers { part: part.into() });
    }
    Ok(())
}

fn check_dir(part: &str, path: &Path) -> Result<(), SpecError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(SpecError::NotADirectory { part: part.into() }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            Err(SpecError::Missing { part: part.into() })
        }
        Err(err) => Err(SpecError::Unreadable {
            part: part.into(),
            error: err.to_string(),
        }),
    }
}

fn describe(repos: &ProxyRepository) -> String {
    let roots = repos.roots();
    if roots.is_empty() {
        return "the local repository (which does not exist yet)".into();
    }
    roots
        .iter()
        .map(|r| r.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_digests_partial_digests_tags_or_directories() {
        let items = parse("test/base~1+J2W56GBL+/abs/dir").unwrap();
        assert!(matches!(&items[0].1, Item::Tag(t) if t.to_string() == "test/base~1"));
        assert!(matches!(&items[1].1, Item::Partial(_, Some(_))));
        assert!(matches!(&items[2].1, Item::Dir(p) if p == Path::new("/abs/dir")));
        let full = "J2W56GBLNURZPCYUYXPJEGDYNEZJJ4T76QBWVDKXHVAGWJXOVBCQ====";
        assert!(matches!(&parse(full).unwrap()[0].1, Item::Digest(d) if d.to_base32() == full));
        let many = vec!["x"; MAX_LAYERS + 1].join("+");
        assert!(matches!(parse(&many), Err(SpecError::TooMany { .. })));
    }

    #[test]
    fn a_tag_wins_over_an_object_whose_digest_it_starts() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::storage::fs::FsRepository::create(dir.path()).unwrap();
        let blob = repo.write_blob_bytes(b"anything").unwrap();
        let layer = repo
            .write_object(&Object::Layer(crate::graph::Layer::default()))
            .unwrap();
        let prefix = &blob.to_base32()[..4];
        let repos = ProxyRepository::from_repositories(vec![repo]);
        let item = parse_item(prefix).unwrap();
        // No tag of that name: the object it starts.
        assert_eq!(item_digest(prefix, &item, &repos).unwrap(), blob);
        repos.repositories()[0]
            .push_tag(&TagSpec::parse(prefix).unwrap(), &layer)
            .unwrap();
        assert_eq!(item_digest(prefix, &item, &repos).unwrap(), layer);
    }

    #[test]
    fn a_spec_is_bounded_and_shown_shortened() {
        let too_long = "a".repeat(MAX_SPEC_BYTES + 1);
        let err = EnvSpec::parse(&too_long).unwrap_err().to_string();
        assert!(err.contains(&format!("at most {MAX_SPEC_BYTES}")), "{err}");
        let long = vec!["a".repeat(150); 3].join("+");
        let spec = EnvSpec::parse(&long).unwrap();
        assert_eq!(spec.as_str(), long);
        assert_eq!(spec.items().len(), 3);
        let shown = spec.to_string();
        assert!(shown.len() < 210 && shown.ends_with("..."), "{shown}");
        assert!(EnvSpec::parse("-").unwrap().is_empty());
        assert!(EnvSpec::parse("").unwrap().is_empty());
        assert!(EnvSpec::empty().is_empty());
    }

    #[test]
    fn a_long_item_is_cut_in_messages() {
        let long = format!("{}!", "a".repeat(70_000));
        let message = parse(&long).unwrap_err().to_string();
        assert!(message.len() < 1000, "{}", message.len());
    }

    fn fixture_repos(name: &str) -> ProxyRepository {
        let root =
            std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/spfs"))
                .join(name);
        ProxyRepository::open(&[root]).unwrap()
    }

    #[test]
    fn platforms_expand_bottom_up_and_the_first_occurrence_of_a_layer_wins() {
        let repos = fixture_repos("repo-a");
        let digests = |spec: &str| -> Vec<String> {
            EnvSpec::parse(spec)
                .unwrap()
                .resolve(&repos)
                .unwrap()
                .into_iter()
                .map(|layer| match layer {
                    Layer::Manifest { digest, .. } => digest.to_base32()[..8].to_owned(),
                    Layer::Dir(path) => path.display().to_string(),
                })
                .collect()
        };
        assert_eq!(digests("test/stack"), ["J2W56GBL", "BNK4OLWR"]);
        assert_eq!(digests("test/app+test/stack"), ["BNK4OLWR", "J2W56GBL"]);
        assert_eq!(digests("test/base+test/base~1"), ["W4QCIP2D", "J2W56GBL"]);
        assert_eq!(digests("-"), Vec::<String>::new());
    }

    #[test]
    fn unknown_ambiguous_and_blob_refs_are_errors_naming_the_item() {
        let repos = fixture_repos("repo-a");
        let resolve = |spec: &str, repos: &ProxyRepository| EnvSpec::parse(spec)?.resolve(repos);
        assert!(matches!(
            resolve("test/none", &repos),
            Err(SpecError::Storage { part, error: StorageError::UnknownTag { .. } }) if part == "test/none"
        ));
        assert!(
            matches!(resolve("BN", &repos), Err(SpecError::Ambiguous { candidates, .. }) if candidates.len() == 2)
        );
        // Looks like a partial digest, matches no object and no tag.
        assert!(matches!(
            resolve("ZZZZZZZZ", &repos),
            Err(SpecError::Unknown { .. })
        ));
        assert!(matches!(
            resolve("nosuch", &repos),
            Err(SpecError::Unknown { .. })
        ));
        // A payload's Blob object.
        let blob = repos.repositories()[0]
            .iter_objects()
            .map(|d| d.unwrap())
            .find(|d| matches!(repos.read_object(d), Ok(Object::Blob(_))))
            .unwrap();
        assert!(matches!(
            resolve(&blob.to_base32(), &repos),
            Err(SpecError::IsBlob { .. })
        ));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// The regression corpus in tests/corpus/envspec.txt.
    #[test]
    fn corpus() {
        let text = include_str!("../../tests/corpus/envspec.txt");
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (spec, expected) = line.split_once('\t').expect("spec<TAB>expected");
            let spec = if spec == "<empty>" { "" } else { spec };
            match (parse(spec), expected.split_once(' ')) {
                (Ok(items), Some(("ok", n))) => {
                    assert_eq!(items.len().to_string(), n, "{spec:?}")
                }
                (Err(err), Some(("err", text))) => {
                    assert!(err.to_string().contains(text), "{spec:?}: {err}")
                }
                (got, _) => panic!("{spec:?}: expected {expected}, got {got:?}"),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Any string: no panic; an accepted spec has one item per `+` part;
        /// an error message stays one screen.
        #[test]
        fn parse_never_panics_and_keeps_every_part(spec in "[a-zA-Z0-9+/.~é -]{0,40}|\\PC{0,60}") {
            match parse(&spec) {
                Ok(items) => {
                    if spec.is_empty() || spec == "-" {
                        prop_assert!(items.is_empty());
                    } else {
                        let parts: Vec<String> = items.iter().map(|(p, _)| p.clone()).collect();
                        prop_assert_eq!(parts.join("+"), spec.clone());
                    }
                }
                Err(err) => prop_assert!(err.to_string().len() < 1000),
            }
        }

    }

    proptest! {
        // Each case parses up to 2,500 items: fewer cases cover the boundary.
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Many items: refused past the limit with the count named.
        #[test]
        fn item_count_is_bounded(count in 1usize..2500) {
            let spec = vec!["l"; count].join("+");
            match parse(&spec) {
                Ok(items) => prop_assert!(items.len() == count && count <= MAX_LAYERS),
                Err(SpecError::TooMany { count: c, .. }) => prop_assert!(c == count && count > MAX_LAYERS),
                Err(other) => prop_assert!(false, "unexpected {}", other),
            }
        }
    }
}

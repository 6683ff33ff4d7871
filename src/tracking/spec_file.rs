//! spfs's spec files in a ref (facts: spfs 0.44's `tracking/env.rs`,
//! `runtime/live_layer.rs`): an absolute path ending in `.spfs.yaml`, or a
//! directory holding `layer.spfs.yaml`, in any `+`-joined ref. Its `api`
//! says what it is:
//!
//! - `spfs/v0/runspec`: `layers: [REF, ...]`, spliced where the file was
//!   named (bottom to top; nested run specs flattened in place);
//! - `spfs/v0/livelayer` (also `v0/livelayer`, `v0/layer`, or no `api`): a
//!   live layer, a host directory shown under the mountpoint. Not shown by
//!   this project yet: refused with a message that says so.
//!
//! A directory without `layer.spfs.yaml` stays what it was here before: a
//! directory shown as a layer. The same file named twice in one command
//! is refused (it would be a loop, or a mistake), as spfs refuses it.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

use super::env_spec::{EnvSpec, Item};

/// The file a directory item is read from.
pub const LAYER_FILE: &str = "layer.spfs.yaml";

/// Longest spec file read.
const MAX_SPEC_FILE_BYTES: u64 = 1 << 20;

/// Deepest nesting of run specs followed.
const MAX_DEPTH: usize = 32;

/// `spec` with every run spec it names spliced in, or why not.
pub fn expand(spec: &EnvSpec) -> Result<EnvSpec, String> {
    if !spec
        .items()
        .iter()
        .any(|(_, item)| spec_file_of(item).is_some())
    {
        return Ok(spec.clone());
    }
    let mut parts = Vec::new();
    let mut seen = HashSet::new();
    for (text, item) in spec.items() {
        splice(text, item, 0, &mut seen, &mut parts)?;
    }
    let joined = match parts.is_empty() {
        true => "-".to_owned(),
        false => parts.join("+"),
    };
    EnvSpec::parse(&joined).map_err(|e| e.to_string())
}

/// The spec file an item names, if it is one.
fn spec_file_of(item: &Item) -> Option<PathBuf> {
    let Item::Dir(path) = item else {
        return None;
    };
    if path.to_string_lossy().ends_with(".spfs.yaml") {
        return Some(path.clone());
    }
    let inside = path.join(LAYER_FILE);
    inside.is_file().then_some(inside)
}

fn splice(
    text: &str,
    item: &Item,
    depth: usize,
    seen: &mut HashSet<PathBuf>,
    parts: &mut Vec<String>,
) -> Result<(), String> {
    let Some(file) = spec_file_of(item) else {
        parts.push(text.to_owned());
        return Ok(());
    };
    if depth >= MAX_DEPTH {
        return Err(format!(
            "{}: run specs nest deeper than {MAX_DEPTH}",
            file.display()
        ));
    }
    let canonical = file
        .canonicalize()
        .map_err(|e| format!("cannot read the spec file {}: {e}", file.display()))?;
    if !seen.insert(canonical.clone()) {
        return Err(format!(
            "the spec file {} is named twice in this command (a run spec that names itself, or a mistake)",
            canonical.display()
        ));
    }
    for layer in run_spec_layers(&canonical)? {
        let inner = EnvSpec::parse(&layer).map_err(|e| {
            format!(
                "{}: the layer {layer:?} is not a ref: {e}",
                canonical.display()
            )
        })?;
        for (text, item) in inner.items() {
            splice(text, item, depth + 1, seen, parts)?;
        }
    }
    Ok(())
}

/// The `layers` of run spec `file`; anything else is refused with a reason.
fn run_spec_layers(file: &Path) -> Result<Vec<String>, String> {
    let shown = file.display();
    let mut text = String::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_SPEC_FILE_BYTES).read_to_string(&mut text))
        .map_err(|e| format!("cannot read the spec file {shown}: {e}"))?;
    let docs = YamlLoader::load_from_str(&text)
        .map_err(|e| format!("the spec file {shown} is not YAML: {e}"))?;
    let Some(Yaml::Hash(map)) = docs.into_iter().next() else {
        return Err(format!(
            "the spec file {shown} is not a mapping (it needs `api:` and `layers:`)"
        ));
    };
    let get = |key: &str| map.get(&Yaml::String(key.to_owned()));
    let api = match get("api") {
        None => None,
        Some(Yaml::String(api)) => Some(api.as_str()),
        Some(_) => return Err(format!("the spec file {shown}: `api` is not a string")),
    };
    match api {
        Some("spfs/v0/runspec") => {}
        None | Some("spfs/v0/livelayer" | "v0/livelayer" | "v0/layer") => {
            return Err(format!(
                "the spec file {shown} is a live layer (a host directory shown under the mountpoint), which this spfs does not show yet; name the directory's contents another way (an absolute directory path is shown as a layer, copied in as it is at the start)"
            ))
        }
        Some(other) => {
            return Err(format!(
                "the spec file {shown} has `api: {other}`, which is none of spfs's (`spfs/v0/runspec`, `spfs/v0/livelayer`)"
            ))
        }
    }
    let Some(Yaml::Array(layers)) = get("layers") else {
        return Err(format!("the run spec {shown} has no `layers:` list"));
    };
    layers
        .iter()
        .map(|layer| match layer {
            Yaml::String(s) if !s.is_empty() => Ok(s.clone()),
            _ => Err(format!(
                "the run spec {shown}: every layer must be a ref (a string)"
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn run_specs_splice_their_layers_in_place_nested_ones_too() {
        let dir = tempfile::tempdir().unwrap();
        let inner = write(
            dir.path(),
            "inner.spfs.yaml",
            "api: spfs/v0/runspec\nlayers: [c, d]\n",
        );
        let outer = write(
            dir.path(),
            "outer.spfs.yaml",
            &format!(
                "api: spfs/v0/runspec\nlayers:\n  - b\n  - {}\n  - e\n",
                inner.display()
            ),
        );
        let spec = EnvSpec::parse(&format!("a+{}+f", outer.display())).unwrap();
        assert_eq!(expand(&spec).unwrap().as_str(), "a+b+c+d+e+f");
        // A directory holding layer.spfs.yaml is that file.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        write(&sub, LAYER_FILE, "api: spfs/v0/runspec\nlayers: [x]\n");
        let spec = EnvSpec::parse(sub.to_str().unwrap()).unwrap();
        assert_eq!(expand(&spec).unwrap().as_str(), "x");
        // One without it stays a directory layer.
        let plain = dir.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        let spec = EnvSpec::parse(plain.to_str().unwrap()).unwrap();
        assert_eq!(expand(&spec).unwrap(), spec);
    }

    #[test]
    fn loops_live_layers_and_malformed_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let me = dir.path().join("me.spfs.yaml");
        write(
            dir.path(),
            "me.spfs.yaml",
            &format!("api: spfs/v0/runspec\nlayers: [{}]\n", me.display()),
        );
        let err = expand(&EnvSpec::parse(me.to_str().unwrap()).unwrap()).unwrap_err();
        assert!(err.contains("named twice"), "{err}");
        let live = write(
            dir.path(),
            "live.spfs.yaml",
            "contents:\n  - src: data\n    dest: /spfs/data\n",
        );
        let err = expand(&EnvSpec::parse(live.to_str().unwrap()).unwrap()).unwrap_err();
        assert!(err.contains("live layer"), "{err}");
        let bad = write(
            dir.path(),
            "bad.spfs.yaml",
            "api: spfs/v0/runspec\nlayers: [[1]]\n",
        );
        let err = expand(&EnvSpec::parse(bad.to_str().unwrap()).unwrap()).unwrap_err();
        assert!(err.contains("must be a ref"), "{err}");
        let junk = write(dir.path(), "junk.spfs.yaml", "api: [\n");
        let err = expand(&EnvSpec::parse(junk.to_str().unwrap()).unwrap()).unwrap_err();
        assert!(err.contains("not YAML"), "{err}");
        let missing = dir.path().join("none.spfs.yaml");
        let err = expand(&EnvSpec::parse(missing.to_str().unwrap()).unwrap()).unwrap_err();
        assert!(err.contains("cannot read the spec file"), "{err}");
    }
}

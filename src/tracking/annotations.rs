//! Annotations as spfs keeps them: `spfs run --annotation K=V` and
//! `--annotation-file F` give key/value pairs; each pair becomes its own
//! annotation-only Layer in the local repository (the value inline, or as
//! a blob when longer than `filesystem.annotation_size_limit`), put on the
//! stack below the refs; `spfs info --get KEY` and `--get-all` read them
//! back from a runtime's stack (facts: spfs 0.44's `cmd_run.rs`,
//! `cmd_info.rs`, `runtime/storage.rs`).

use std::collections::BTreeMap;
use std::io::Read;

use yaml_rust2::{Yaml, YamlLoader};

use crate::encoding::Digest;
use crate::graph::{Annotation, AnnotationValue, Layer, Object};
use crate::storage::fs::FsRepository;
use crate::storage::proxy::ProxyRepository;
use crate::storage::StorageError;

/// Longest annotation value read back from a blob.
const MAX_VALUE_BYTES: u64 = 64 << 20;

/// One `--annotation` argument: `KEY=VALUE` (split at the first `=`, else
/// the first `:`), or a YAML/JSON mapping when the value starts with `{`.
/// The error is spfs's message.
pub fn parse_pair(text: &str) -> Result<Vec<(String, String)>, String> {
    let bad = || format!("Invalid option: -annotation {text} (should be in the form name=value)");
    if text.trim_start().starts_with('{') {
        return parse_mapping(text).map_err(|_| bad());
    }
    let split = text.split_once('=').or_else(|| text.split_once(':'));
    match split {
        Some((key, value)) if !key.is_empty() => Ok(vec![(key.to_owned(), value.to_owned())]),
        _ => Err(bad()),
    }
}

/// An annotation file's text: a YAML (or JSON) mapping of keys to strings;
/// scalars (`22`, `true`) become their text, as spfs reads them.
pub fn parse_mapping(text: &str) -> Result<Vec<(String, String)>, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("not YAML or JSON: {e}"))?;
    let Some(Yaml::Hash(map)) = docs.into_iter().next() else {
        return Err("not a mapping of names to values".into());
    };
    map.into_iter()
        .map(|(key, value)| match (scalar(&key), scalar(&value)) {
            (Some(key), Some(value)) => Ok((key, value)),
            (Some(key), None) => Err(format!("the value of {key:?} is not a string")),
            _ => Err("a name is not a string".into()),
        })
        .collect()
}

fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Writes one annotation-only layer for `key` = `value` into `repo`.
pub fn write_layer(
    repo: &FsRepository,
    key: &str,
    value: &str,
    size_limit: u64,
) -> Result<Digest, StorageError> {
    let value = match value.len() as u64 > size_limit {
        true => AnnotationValue::Blob(repo.write_blob_bytes(value.as_bytes())?),
        false => AnnotationValue::String(value.to_owned()),
    };
    repo.write_object(&Object::Layer(Layer {
        manifest: None,
        annotations: vec![Annotation {
            key: key.to_owned(),
            value,
        }],
    }))
}

/// Every annotation of `stack` (bottom-up digests), bottom-up, descending
/// into platforms; a blob's value read as text. Objects that cannot be
/// read are passed over.
pub fn of_stack(repos: &ProxyRepository, stack: &[Digest]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut pending: Vec<Digest> = stack.iter().rev().copied().collect();
    // a stack names a few dozen objects; a cycle cannot be made (digests)
    let mut budget = 100_000;
    while let Some(digest) = pending.pop() {
        budget -= 1;
        if budget == 0 {
            break;
        }
        match repos.read_object(&digest) {
            Ok(Object::Platform(platform)) => pending.extend(platform.layers.iter().rev()),
            Ok(Object::Layer(layer)) => {
                for annotation in layer.annotations {
                    if let Some(value) = value_of(repos, &annotation.value) {
                        found.push((annotation.key, value));
                    }
                }
            }
            _ => {}
        }
    }
    found
}

fn value_of(repos: &ProxyRepository, value: &AnnotationValue) -> Option<String> {
    match value {
        AnnotationValue::String(s) => Some(s.clone()),
        AnnotationValue::Blob(digest) => {
            let path = repos.payload_paths(digest).find(|p| p.is_file())?;
            let mut text = Vec::new();
            std::fs::File::open(path)
                .ok()?
                .take(MAX_VALUE_BYTES)
                .read_to_end(&mut text)
                .ok()?;
            Some(String::from_utf8_lossy(&text).into_owned())
        }
    }
}

/// `--get KEY`: the first value of `key`, bottom-up, as spfs finds it.
pub fn get<'a>(all: &'a [(String, String)], key: &str) -> Option<&'a str> {
    all.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// `--get-all`: every key once, later (higher) values overwriting, as
/// spfs builds it (so a key given twice shows the other value than
/// `--get`: spfs's own inconsistency, kept).
pub fn all(all: &[(String, String)]) -> BTreeMap<String, String> {
    all.iter().cloned().collect()
}

/// A mapping as `--get-all` prints it: YAML, keys sorted, a value quoted
/// when it would read back as something else; then a blank line.
pub fn to_yaml(map: &BTreeMap<String, String>) -> String {
    let mut text = String::new();
    for (key, value) in map {
        text.push_str(&format!("{}: {}\n", yaml_string(key), yaml_string(value)));
    }
    if map.is_empty() {
        text.push_str("{}\n");
    }
    text
}

fn yaml_string(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_alphanumeric() || "_-./ :".contains(c))
        && !text.contains(": ")
        && !text.ends_with(':')
        && !text.starts_with([' ', '-', '.'])
        && !text.ends_with(' ')
        && !looks_typed(text);
    match plain {
        true => text.to_owned(),
        false => format!("'{}'", text.replace('\'', "''")),
    }
}

/// A plain scalar YAML would read as a number, bool or null.
fn looks_typed(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    matches!(
        lower.as_str(),
        "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "~" | "y" | "n"
    ) || text.parse::<f64>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_split_as_spfs_splits_them() {
        assert_eq!(parse_pair("a=b=c").unwrap(), [("a".into(), "b=c".into())]);
        assert_eq!(parse_pair("x:y=z").unwrap(), [("x:y".into(), "z".into())]);
        assert_eq!(parse_pair("k:v").unwrap(), [("k".into(), "v".into())]);
        assert_eq!(parse_pair("k=").unwrap(), [("k".into(), "".into())]);
        let map = parse_pair("{a: 1, b: two}").unwrap();
        assert_eq!(map, [("a".into(), "1".into()), ("b".into(), "two".into())]);
        assert_eq!(
            parse_pair("novalue").unwrap_err(),
            "Invalid option: -annotation novalue (should be in the form name=value)"
        );
        assert!(parse_pair("=v").is_err());
    }

    #[test]
    fn files_are_mappings_of_strings_and_scalars_become_text() {
        let pairs = parse_mapping("port: 22\nname: web\nflag: true\n").unwrap();
        assert_eq!(
            pairs,
            [
                ("port".into(), "22".into()),
                ("name".into(), "web".into()),
                ("flag".into(), "true".into())
            ]
        );
        assert!(parse_mapping(r#"{"a": "b"}"#).is_ok());
        assert!(parse_mapping("- a\n- b\n").is_err());
        assert!(parse_mapping("a: [1, 2]\n").is_err());
        assert!(parse_mapping("a: : :\n  - {").is_err());
    }

    #[test]
    fn get_all_yaml_quotes_what_would_read_back_otherwise() {
        let map: BTreeMap<String, String> =
            [("b", "1"), ("a", "plain text"), ("c", "it's"), ("d", "")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(to_yaml(&map), "a: plain text\nb: '1'\nc: 'it''s'\nd: ''\n");
    }
}

//! Env specs: which layers a runtime sees, bottom to top.
//!
//! `a+b+c` stacks layers (the later wins where paths collide); each part is a
//! layer name in the store (`SPFS_STORAGE`) or an absolute directory path;
//! `-` or an empty string is the empty environment. Every error names the part
//! that is wrong.

use std::path::{Component, Path, PathBuf};

/// More layers than any real environment; bounds the work one `Mount` can ask for.
pub const MAX_LAYERS: usize = 1000;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "empty layer name at position {position} of {spec:?}; layers are joined by single '+'"
    )]
    EmptyPart { spec: String, position: usize },
    #[error("{part:?} is a relative path; use a layer name from the store or an absolute path")]
    Relative { part: String },
    #[error("{part:?} contains '..'; give the layer's real absolute path")]
    DotDot { part: String },
    #[error("{spec:?} has {count} layers; at most {MAX_LAYERS} are allowed")]
    TooMany { spec: String, count: usize },
    #[error("no layer named {part:?} in the store {store} (see `spfs layers`)")]
    UnknownLayer { part: String, store: PathBuf },
    #[error("layer {part:?} does not exist")]
    Missing { part: String },
    #[error("layer {part:?} is not a directory ({path})")]
    NotADirectory { part: String, path: String },
    #[error("layer {part:?} cannot be read: {error}")]
    Unreadable { part: String, error: String },
}

/// Checks the syntax and returns the parts bottom to top, without touching the disk.
pub fn parse(spec: &str) -> Result<Vec<&str>, SpecError> {
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
    for (index, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err(SpecError::EmptyPart {
                spec: shorten(spec),
                position: index + 1,
            });
        }
        let path = Path::new(part);
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(SpecError::DotDot {
                part: shorten(part),
            });
        }
        if !path.is_absolute() && (part.contains('/') || *part == ".") {
            return Err(SpecError::Relative {
                part: shorten(part),
            });
        }
    }
    Ok(parts)
}

/// Parses and resolves every part to an existing directory.
pub fn resolve(spec: &str, store: &Path) -> Result<Vec<PathBuf>, SpecError> {
    parse(spec)?
        .into_iter()
        .map(|part| {
            let named = !part.starts_with('/');
            // Messages quote the part; a huge one is cut so the error stays one screen.
            let quoted = shorten(part);
            let path = if named {
                store.join(part)
            } else {
                PathBuf::from(part)
            };
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => Ok(path),
                Ok(_) => Err(SpecError::NotADirectory {
                    part: quoted,
                    path: shorten(&path.display().to_string()),
                }),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound && named => {
                    Err(SpecError::UnknownLayer {
                        part: quoted,
                        store: store.to_owned(),
                    })
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    Err(SpecError::Missing { part: quoted })
                }
                Err(err) => Err(SpecError::Unreadable {
                    part: quoted,
                    error: err.to_string(),
                }),
            }
        })
        .collect()
}

/// Long specs are cut in messages so an error stays one screen.
fn shorten(spec: &str) -> String {
    if spec.len() <= 200 {
        return spec.to_owned();
    }
    let mut end = 200;
    while !spec.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &spec[..end])
}

/// Names of the layers in the store, sorted.
pub fn list_store(store: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(store)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax() {
        assert_eq!(parse(""), Ok(vec![]));
        assert_eq!(parse("-"), Ok(vec![]));
        assert_eq!(parse("base+app"), Ok(vec!["base", "app"]));
        assert_eq!(parse("/abs/dir+app"), Ok(vec!["/abs/dir", "app"]));
        assert!(matches!(
            parse("a++b"),
            Err(SpecError::EmptyPart { position: 2, .. })
        ));
        assert!(matches!(
            parse("+"),
            Err(SpecError::EmptyPart { position: 1, .. })
        ));
        assert!(matches!(
            parse("a+"),
            Err(SpecError::EmptyPart { position: 2, .. })
        ));
        assert!(matches!(parse("rel/dir"), Err(SpecError::Relative { .. })));
        assert!(matches!(parse("."), Err(SpecError::Relative { .. })));
        assert!(matches!(parse(".."), Err(SpecError::DotDot { .. })));
        assert!(matches!(parse("/a/../b"), Err(SpecError::DotDot { .. })));
        let many = vec!["x"; MAX_LAYERS + 1].join("+");
        assert!(matches!(parse(&many), Err(SpecError::TooMany { .. })));
    }

    #[test]
    fn messages_name_the_bad_part() {
        let store = tempfile::tempdir().unwrap();
        std::fs::create_dir(store.path().join("base")).unwrap();
        std::fs::write(store.path().join("file"), "").unwrap();
        let err = resolve("base+nope", store.path()).unwrap_err().to_string();
        assert!(err.contains("\"nope\""), "{err}");
        let err = resolve("base+file", store.path()).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        let err = resolve("/no/such/dir", store.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
        assert_eq!(
            resolve("base", store.path()).unwrap(),
            vec![store.path().join("base")]
        );
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
                (Ok(parts), Some(("ok", n))) => assert_eq!(parts.len().to_string(), n, "{spec:?}"),
                (Err(err), Some(("err", text))) => {
                    assert!(err.to_string().contains(text), "{spec:?}: {err}")
                }
                (got, _) => panic!("{spec:?}: expected {expected}, got {got:?}"),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Any string: no panic; an accepted spec splits back into itself; an
        /// error message stays one screen.
        #[test]
        fn parse_never_panics_and_round_trips(spec in "[a-z+/.é -]{0,40}|\\PC{0,60}") {
            match parse(&spec) {
                Ok(parts) => {
                    if spec.is_empty() || spec == "-" {
                        prop_assert!(parts.is_empty());
                    } else {
                        prop_assert_eq!(parts.join("+"), spec.clone());
                        prop_assert!(parts.iter().all(|p| !p.is_empty()));
                        prop_assert!(parts.iter().all(|p| !p.split('/').any(|c| c == "..")));
                    }
                }
                Err(err) => prop_assert!(err.to_string().len() < 600),
            }
        }

        /// Many layers: refused past the limit with the count named.
        #[test]
        fn layer_count_is_bounded(count in 1usize..2500) {
            let spec = vec!["l"; count].join("+");
            match parse(&spec) {
                Ok(parts) => prop_assert!(parts.len() == count && count <= MAX_LAYERS),
                Err(SpecError::TooMany { count: c, .. }) => prop_assert!(c == count && count > MAX_LAYERS),
                Err(other) => prop_assert!(false, "unexpected {}", other),
            }
        }
    }
}

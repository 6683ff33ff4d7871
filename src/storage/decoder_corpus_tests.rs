//! The decoders of untrusted repository files against the fuzzing corpus:
//! every fixture object and tag file, `tests/corpus/decoders/` (hand-written
//! seeds, and `crash-*` inputs that once panicked or ran away), and a few
//! thousand deterministic mutants of each, in a second or two. The long
//! runs (a million inputs per decoder) are `examples/fuzz_decoders`; see
//! docs/security.md.

#[path = "../../examples/fuzz_decoders/mutate.rs"]
mod mutate;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use super::config::SpfsConfig;
use super::fixtures;
use super::tag;
use crate::graph::Object;
use crate::tracking::manifest::Manifest;
use mutate::{mutate, Rng};

/// Mutants per seed in this replay.
const MUTANTS: usize = 1000;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus/decoders")
        .join(target);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    out.sort();
    out
}

fn is_crash(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("crash-"))
}

/// Runs `decode` on `input`; a panic fails the test naming the input.
fn no_panic<T>(what: &str, input: &[u8], decode: impl FnOnce(&[u8]) -> T) -> T {
    match catch_unwind(AssertUnwindSafe(|| decode(input))) {
        Ok(out) => out,
        Err(_) => panic!(
            "{what} panicked on {} bytes: {:02x?}",
            input.len(),
            &input[..input.len().min(512)]
        ),
    }
}

fn decode_object(bytes: &[u8]) -> Result<(), String> {
    let (_, object) = Object::decode(bytes).map_err(|e| e.to_string())?;
    if let Object::Manifest(m) = &object {
        Manifest::from_graph(m).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn decode_tags(bytes: &[u8]) -> Result<(), String> {
    let tags = tag::decode_stream(bytes).map_err(|e| e.to_string())?;
    // what decodes prints back as a stream that decodes to the same tags
    let again = tag::decode_stream(&tag::encode_stream(&tags))
        .unwrap_or_else(|e| panic!("re-encoded tags do not decode: {e}"));
    assert_eq!(again, tags, "tags change when re-encoded");
    Ok(())
}

fn mutants(seeds: &[Vec<u8>], what: &str, mut check: impl FnMut(&[u8])) -> usize {
    let mut rng = Rng::new(0x5eed);
    let mut n = 0;
    for seed in seeds {
        for _ in 0..MUTANTS {
            let mut data = seed.clone();
            mutate(&mut data, &mut rng, seeds, &[b"\0", b"--SPFS--\n"], 1 << 16);
            no_panic(what, &data, &mut check);
            n += 1;
        }
    }
    n
}

#[test]
fn objects_of_the_fixtures_corpus_and_mutants_decode_or_fail_cleanly() {
    let mut seeds = Vec::new();
    for repo in fixtures::REPOS {
        for (name, bytes) in fixtures::objects(repo) {
            no_panic("Object::decode", &bytes, decode_object)
                .unwrap_or_else(|e| panic!("{repo} {name}: {e}"));
            seeds.push(bytes);
        }
    }
    for (path, bytes) in corpus("object") {
        let result = no_panic("Object::decode", &bytes, decode_object);
        if is_crash(&path) {
            assert!(result.is_err(), "{} decodes", path.display());
        }
        seeds.push(bytes);
    }
    let n = mutants(&seeds, "Object::decode", |b| {
        let _ = decode_object(b);
    });
    assert!(n >= 10_000, "{n}");
}

#[test]
fn tag_files_of_the_fixtures_corpus_and_mutants_decode_or_fail_cleanly() {
    let mut seeds = Vec::new();
    for repo in fixtures::REPOS {
        let dir = fixtures::path(repo).join("tags/test");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            no_panic("decode_stream", &bytes, decode_tags).unwrap();
            seeds.push(bytes);
        }
    }
    for (path, bytes) in corpus("tag") {
        let result = no_panic("decode_stream", &bytes, decode_tags);
        if is_crash(&path) {
            assert!(result.is_err(), "{} decodes", path.display());
        }
        seeds.push(bytes);
    }
    let n = mutants(&seeds, "decode_stream", |b| {
        let _ = decode_tags(b);
    });
    assert!(n >= 2_000, "{n}");
}

/// The local repository of a configuration that names none.
const DEFAULT_ROOT: &str = "/default-repo";

/// The fuzzer parses configuration text in memory ([`SpfsConfig::from_text`]);
/// this shows that it parses as a real file does, then replays mutants.
#[test]
fn config_files_of_the_corpus_and_mutants_load_or_fail_cleanly() {
    use config::FileFormat;
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("spfs");
    let sources = super::config::Sources {
        file_stems: vec![stem.clone()],
        env: Default::default(),
        default_root: Some(DEFAULT_ROOT.into()),
    };
    let load_file = |name: &str, text: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = no_panic("SpfsConfig::load_from", text, |_| {
            SpfsConfig::load_from(&sources)
        });
        std::fs::remove_file(&path).unwrap();
        out
    };
    let mut seeds = Vec::new();
    for (path, bytes) in corpus("config") {
        let (file, format) = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => ("spfs.toml", FileFormat::Toml),
            Some("yaml") => ("spfs.yaml", FileFormat::Yaml),
            Some("json") => ("spfs.json", FileFormat::Json),
            Some("conf") => ("spfs.conf", FileFormat::Ini),
            _ => panic!("{}: not a config file", path.display()),
        };
        let from_file = load_file(file, &bytes);
        if is_crash(&path) {
            assert!(from_file.is_err(), "{} loads", path.display());
        }
        // the spfs.* seeds are good configurations; the others need not be
        if path.file_stem().is_some_and(|s| s == "spfs") {
            from_file
                .as_ref()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        let text = String::from_utf8_lossy(&bytes);
        let in_memory = no_panic("SpfsConfig::from_text", &bytes, |_| {
            SpfsConfig::from_text(&text, format, Some(DEFAULT_ROOT.as_ref()))
        });
        assert_eq!(
            from_file.as_ref().ok(),
            in_memory.as_ref().ok(),
            "{}",
            path.display()
        );
        seeds.push((file, format, bytes));
    }
    assert!(seeds.len() >= 4);
    let all: Vec<Vec<u8>> = seeds.iter().map(|s| s.2.clone()).collect();
    let mut rng = Rng::new(0xc0f);
    for (file, format, seed) in &seeds {
        for i in 0..MUTANTS / 3 {
            let mut data = seed.clone();
            mutate(
                &mut data,
                &mut rng,
                &all,
                &[b"[", b"\"", b"\n", b" = "],
                1 << 14,
            );
            let text = String::from_utf8_lossy(&data);
            let in_memory = no_panic("SpfsConfig::from_text", &data, |_| {
                SpfsConfig::from_text(&text, *format, Some(DEFAULT_ROOT.as_ref()))
            });
            // a few through a real file too, and they agree
            if i % 10 == 0 && std::str::from_utf8(&data).is_ok() {
                let from_file = load_file(file, &data);
                assert_eq!(from_file.ok(), in_memory.ok(), "{file}: {text:?}");
            }
        }
    }
}

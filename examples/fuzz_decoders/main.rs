//! Mutation fuzzer for the decoders of untrusted repository files.
//!
//! ```text
//! cargo run --release --example fuzz_decoders -- TARGET [INPUTS] [SEED]
//! ```
//!
//! TARGET is `object` (`Object::decode`, then `Manifest::from_graph` when it
//! holds a manifest), `tag` (`decode_stream`), `manifest` (structural
//! mutations of the fixture manifests, then `Manifest::from_graph`), or
//! `config-toml`, `config-ini`, `config-yaml`, `config-json`
//! (`SpfsConfig::from_text`: the file's text parsed in memory, as
//! `load_from` parses it), or `config-file-toml` (and `-ini`, `-yaml`,
//! `-json`): `SpfsConfig::load_from` on a real `spfs.<ext>` / `spfs.conf`
//! file, which is several times slower.
//! Seeds are the fixture repositories' object and `.tag` files and
//! `tests/corpus/decoders/<target>/*`. Each input is mutated from a seed
//! (bit flips, byte sets, arithmetic, boundary integers at any offset in
//! either endianness, range deletes, inserts and duplicates, truncation,
//! splices between seeds, dictionary tokens).
//!
//! Every call runs under `catch_unwind`; a panicking input is written to
//! `target/fuzz-crashes/`. A counting global allocator records each input's
//! largest single allocation and peak live bytes; an input whose peak
//! exceeds `64 × its length + 16 MiB` is saved there as well. The process
//! exits non-zero if any input panicked or went over.

#[path = "mutate.rs"]
mod mutate;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use config::FileFormat;
use mutate::{mutate, Rng};
use spfs::graph::{self, EntryKind, Object};
use spfs::storage::config::{Sources, SpfsConfig};
use spfs::storage::tag;
use spfs::tracking::manifest::Manifest;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize) {
    let now = CURRENT.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(now, Ordering::Relaxed);
    LARGEST.fetch_max(size, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        grew(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Inputs are cut to this size.
const MAX_LEN: usize = 1 << 20;
/// The object header, kept intact in half the object inputs.
const HEADER: usize = graph::HEADER_SIZE;

fn budget(len: usize) -> usize {
    64 * len + (16 << 20)
}

const DICT: &[&[u8]] = &[
    b"--SPFS--\n",
    b"\0",
    b"file\0",
    b"tree\0",
    b"mask\0",
    b"9999-12-31T23:59:59.999999-23:59",
    b"0000-01-01T00:00:00+23:59",
    b"-23:59",
    b"+23:59",
    b"9999",
    b"0000",
    b"T24:00:00",
    b"60Z",
    b".999999999",
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff\xff\xff\xff\xff",
    b"\x00\x00\x00\x00\x00\x00\x00\x00",
    // config text
    b"[storage]\nroot = ",
    b"[remote.origin]\naddress = ",
    b"[filesystem]\nsecondary_repositories = ",
    b"address",
    b"scheme",
    b"path",
    b"file:///",
    b"tar://",
    b"~/",
    b"\"",
    b"'",
    b"[",
    b"]",
    b"{",
    b"}",
    b"[[",
    b"\n",
    b": ",
    b" = ",
    b"- ",
    b"&a ",
    b"*a",
    b"!!binary ",
    b"<<: ",
    b"1e309",
    b"-9223372036854775809",
    b"18446744073709551616",
    b"\\u0000",
    b"\\uD800",
    b"\xc3\x28",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spfs")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Fixture files under `*/objects` or (`tag`) `*/tags`, then the committed corpus.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let mut files = Vec::new();
    let sub = match target {
        "object" | "manifest" => Some("objects"),
        "tag" => Some("tags"),
        _ => None,
    };
    if let Some(sub) = sub {
        for repo in ["repo-a", "repo-legacy", "repo-mask"] {
            walk(&fixtures().join(repo).join(sub), &mut files);
        }
    }
    let corpus_name = if target.starts_with("config-") {
        "config"
    } else {
        target
    };
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/corpus/decoders")
            .join(corpus_name),
        &mut files,
    );
    let ext = target
        .strip_prefix("config-")
        .map(|e| e.strip_prefix("file-").unwrap_or(e));
    files
        .into_iter()
        .filter(|p| match ext {
            Some(ext) => {
                let e = p.extension().and_then(|e| e.to_str()).unwrap_or("");
                e == ext || (ext == "ini" && e == "conf")
            }
            None => true,
        })
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

/// Structural mutation of a stored manifest: entries retargeted at other
/// trees (cycles, shared subtrees), kinds and names changed, trees added,
/// dropped or duplicated.
fn mutate_manifest(m: &mut graph::Manifest, rng: &mut Rng) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let digests: Vec<_> = m.trees.iter().map(|t| t.digest()).collect();
        let nt = m.trees.len();
        match rng.below(8) {
            0 | 1 if nt > 0 => {
                // point an entry at some tree of the manifest
                let t = rng.below(nt);
                let target = digests[rng.below(nt)];
                if let Some(e) = pick_entry(&mut m.trees[t], rng) {
                    e.kind = EntryKind::Tree;
                    e.object = target;
                }
            }
            2 if nt > 0 => {
                let t = rng.below(nt);
                if let Some(e) = pick_entry(&mut m.trees[t], rng) {
                    e.kind = [EntryKind::Blob, EntryKind::Tree, EntryKind::Mask][rng.below(3)];
                    e.mode ^= 1 << rng.below(32);
                }
            }
            3 if nt > 0 => {
                let t = rng.below(nt);
                if let Some(e) = pick_entry(&mut m.trees[t], rng) {
                    e.name =
                        ["", ".", "..", "a/b", "a", "x", "\u{0}", "é"][rng.below(8)].to_string();
                }
            }
            4 if nt > 0 => {
                // copy an entry into another tree, under a fresh name
                let from = rng.below(nt);
                if let Some(e) = pick_entry(&mut m.trees[from], rng).cloned() {
                    let to = rng.below(nt);
                    let mut e = e;
                    e.name = format!("n{}", rng.below(1000));
                    m.trees[to].entries.push(e);
                }
            }
            5 if nt > 1 => {
                m.trees.remove(rng.below(nt));
            }
            6 if nt > 0 => {
                let t = m.trees[rng.below(nt)].clone();
                m.trees.insert(rng.below(nt + 1), t);
            }
            _ => {
                // a new tree whose entries all point at one existing tree
                if nt > 0 {
                    let target = digests[rng.below(nt)];
                    let n = 1 + rng.below(4);
                    let entries = (0..n)
                        .map(|i| graph::Entry {
                            kind: EntryKind::Tree,
                            object: target,
                            mode: 0o040755,
                            size: 0,
                            name: format!("d{i}"),
                        })
                        .collect();
                    m.trees.push(graph::Tree { entries });
                }
            }
        }
    }
}

fn pick_entry<'a>(t: &'a mut graph::Tree, rng: &mut Rng) -> Option<&'a mut graph::Entry> {
    if t.entries.is_empty() {
        return None;
    }
    let i = rng.below(t.entries.len());
    t.entries.get_mut(i)
}

struct Stats {
    inputs: u64,
    ok: u64,
    errors: u64,
    panics: u64,
    over_budget: u64,
    largest_alloc: usize,
    peak: usize,
    worst_ratio: f64,
    messages: HashMap<String, u64>,
}

fn save(kind: &str, target: &str, data: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-crashes");
    let _ = std::fs::create_dir_all(&dir);
    let name = spfs::encoding::Digest::of(data).to_base32();
    let path = dir.join(format!("{target}-{kind}-{}.bin", &name[..16]));
    let _ = std::fs::write(&path, data);
    path
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let target = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("object")
        .to_string();
    let inputs: u64 = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let seed: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1);

    let seeds = seeds(&target);
    assert!(!seeds.is_empty(), "no seeds for target {target:?}");
    let manifests: Vec<graph::Manifest> = if target == "manifest" {
        seeds
            .iter()
            .filter_map(|s| match Object::decode(s) {
                Ok((_, Object::Manifest(m))) => Some(m),
                _ => None,
            })
            .collect()
    } else {
        Vec::new()
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let stem = tmp.path().join("spfs");
    let config_file = match target.as_str() {
        "config-file-toml" => Some(tmp.path().join("spfs.toml")),
        "config-file-yaml" => Some(tmp.path().join("spfs.yaml")),
        "config-file-json" => Some(tmp.path().join("spfs.json")),
        "config-file-ini" => Some(tmp.path().join("spfs.conf")),
        _ => None,
    };
    let config_format = match target.as_str() {
        "config-toml" => Some(FileFormat::Toml),
        "config-yaml" => Some(FileFormat::Yaml),
        "config-json" => Some(FileFormat::Json),
        "config-ini" => Some(FileFormat::Ini),
        _ => None,
    };
    let known = ["object", "tag", "manifest"].contains(&target.as_str())
        || config_file.is_some()
        || config_format.is_some();
    assert!(known, "unknown target {target:?}");
    let sources = Sources {
        file_stems: vec![stem],
        env: HashMap::new(),
        default_root: Some("/default-repo".into()),
    };

    panic::set_hook(Box::new(|_| {}));
    let mut rng = Rng::new(seed);
    let mut stats = Stats {
        inputs: 0,
        ok: 0,
        errors: 0,
        panics: 0,
        over_budget: 0,
        largest_alloc: 0,
        peak: 0,
        worst_ratio: 0.0,
        messages: HashMap::new(),
    };
    let start = Instant::now();
    let mut data = Vec::new();
    let mut last_manifest: Option<graph::Manifest> = None;
    for i in 0..inputs {
        // the seeds themselves first, then mutants
        let mut manifest_input = None;
        if target == "manifest" {
            // half the time, mutate the last input further (chains of
            // mutations reach deeper structures), while it stays small
            let mut m = match last_manifest.take() {
                Some(m) if rng.chance(2) && m.trees.len() < 256 => m,
                _ => manifests[rng.below(manifests.len())].clone(),
            };
            mutate_manifest(&mut m, &mut rng);
            last_manifest = Some(m.clone());
            manifest_input = Some(m);
        } else {
            data.clear();
            data.extend_from_slice(&seeds[(i as usize) % seeds.len()]);
            if i as usize >= seeds.len() {
                if target == "object" && data.len() > HEADER && rng.chance(2) {
                    // half the objects keep their header, so that the
                    // mutations reach the body decoders
                    let mut body = data.split_off(HEADER);
                    mutate(&mut body, &mut rng, &seeds, DICT, MAX_LEN - HEADER);
                    data.extend_from_slice(&body);
                } else {
                    mutate(&mut data, &mut rng, &seeds, DICT, MAX_LEN);
                }
            }
        }
        if let Some(path) = &config_file {
            std::fs::write(path, &data).expect("write config");
        }

        let base = CURRENT.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        LARGEST.store(0, Ordering::Relaxed);
        let result = panic::catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
            match target.as_str() {
                "object" => {
                    let (_, object) = Object::decode(&data).map_err(|e| e.to_string())?;
                    if let Object::Manifest(m) = &object {
                        Manifest::from_graph(m).map_err(|e| e.to_string())?;
                    }
                    // a decoded object encodes again without panicking
                    let _ = object.digest(graph::DigestStrategy::WithKindAndSalt);
                    Ok(())
                }
                "tag" => {
                    let tags = tag::decode_stream(&data).map_err(|e| e.to_string())?;
                    // what decodes re-encodes, and that decodes to the same tags
                    let again = tag::decode_stream(&tag::encode_stream(&tags))
                        .map_err(|e| format!("ROUND TRIP: {e}"))?;
                    if again != tags {
                        return Err("ROUND TRIP: differs".into());
                    }
                    Ok(())
                }
                "manifest" => {
                    let m = manifest_input.as_ref().expect("manifest input");
                    let unpacked = Manifest::from_graph(m).map_err(|e| e.to_string())?;
                    let _ = unpacked.to_graph();
                    Ok(())
                }
                _ => match config_format {
                    // invalid UTF-8 reaches the parser as U+FFFD, where a
                    // file's would make `config` fail before parsing
                    Some(format) => SpfsConfig::from_text(
                        &String::from_utf8_lossy(&data),
                        format,
                        Some(std::path::Path::new("/default-repo")),
                    ),
                    None => SpfsConfig::load_from(&sources),
                }
                .map(|_| ())
                .map_err(|e| e.to_string()),
            }
        }));
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        let largest = LARGEST.load(Ordering::Relaxed);
        stats.inputs += 1;
        stats.largest_alloc = stats.largest_alloc.max(largest);
        stats.peak = stats.peak.max(peak);
        let len = match &manifest_input {
            Some(m) => {
                let mut b = Vec::new();
                graph::legacy::encode_body(&Object::Manifest(m.clone()), &mut b);
                b.len()
            }
            None => data.len(),
        };
        stats.worst_ratio = stats.worst_ratio.max(peak as f64 / len.max(1) as f64);
        let input_bytes = || match &manifest_input {
            Some(m) => Object::Manifest(m.clone()).encode(
                graph::EncodingFormat::Legacy,
                graph::DigestStrategy::WithKindAndSalt,
            ),
            None => data.clone(),
        };
        match result {
            Ok(Ok(())) => stats.ok += 1,
            Ok(Err(message)) => {
                stats.errors += 1;
                if message.starts_with("ROUND TRIP") {
                    stats.panics += 1;
                    let path = save("roundtrip", &target, &input_bytes());
                    eprintln!("round trip failure ({message}): {}", path.display());
                }
                // group messages by their first words, numbers as 0
                let key: String = message
                    .split_whitespace()
                    .take(7)
                    .collect::<Vec<_>>()
                    .join(" ")
                    .chars()
                    .map(|c| if c.is_ascii_digit() { '0' } else { c })
                    .collect();
                *stats.messages.entry(key).or_default() += 1;
            }
            Err(payload) => {
                stats.panics += 1;
                let what = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let path = save("panic", &target, &input_bytes());
                eprintln!("PANIC ({what}): {}", path.display());
            }
        }
        if peak > budget(len) {
            stats.over_budget += 1;
            let path = save("memory", &target, &input_bytes());
            eprintln!(
                "{peak} bytes live for a {len}-byte input: {}",
                path.display()
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let mut top: Vec<_> = stats.messages.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1));
    println!("target {target}: {} seeds, seed {seed}", seeds.len());
    println!(
        "{} inputs in {secs:.1} s ({:.0}/s): {} decoded, {} errors, {} panics/round-trip failures, {} over the memory budget",
        stats.inputs,
        stats.inputs as f64 / secs,
        stats.ok,
        stats.errors,
        stats.panics,
        stats.over_budget
    );
    println!(
        "largest single allocation {} bytes; largest peak live per input {} bytes; worst peak/input-length ratio {:.1}",
        stats.largest_alloc, stats.peak, stats.worst_ratio
    );
    println!("most common errors:");
    for (k, n) in top.iter().take(8) {
        println!("  {n:>9}  {k} ...");
    }
    if stats.panics > 0 || stats.over_budget > 0 {
        std::process::exit(1);
    }
}

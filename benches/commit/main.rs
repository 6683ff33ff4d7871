//! Commit speed: `cargo bench --bench commit [-- FILES [BYTES]]`.
//!
//! Generates FILES small files (default 20,000 of 1 KiB, distinct contents,
//! 100 per folder) in a temp dir, commits them into a new repository, then
//! commits the same tree again (everything already stored), and prints
//! files/s for both.

use std::io::Write;
use std::time::Instant;

use spfs::storage::FsRepository;
use spfs::tracking::{commit_dir, Manifest};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let files: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let bytes: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1024);
    let tmp = tempfile::tempdir().expect("temp dir");
    let tree = tmp.path().join("tree");
    let started = Instant::now();
    for i in 0..files {
        let dir = tree.join(format!("d{:04}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir).expect("mkdir");
        }
        let mut f = std::fs::File::create(dir.join(format!("f{i:06}.txt"))).expect("create");
        let line = format!("file {i} ");
        let mut content = line.repeat(bytes / line.len() + 1);
        content.truncate(bytes);
        f.write_all(content.as_bytes()).expect("write");
    }
    println!(
        "generated {files} files of {bytes} B in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    let repo = FsRepository::create(&tmp.path().join("repo")).expect("repo");
    let mut manifest = None;
    for pass in ["new repository", "again (all stored)"] {
        let started = Instant::now();
        let (layer, m) = commit_dir(&repo, &tree, &mut |_| {}).expect("commit");
        manifest = Some(m);
        let secs = started.elapsed().as_secs_f64();
        println!(
            "commit, {pass}: {files} files in {secs:.2}s = {:.0} files/s, {:.1} MB/s (layer {layer})",
            files as f64 / secs,
            (files * bytes) as f64 / secs / 1e6
        );
    }
    if let Some(digest) = manifest {
        let started = Instant::now();
        let unpacked = Manifest::read(&repo, &digest).expect("read manifest");
        let entries = unpacked
            .root()
            .entries
            .values()
            .map(|d| d.entries.len())
            .sum::<usize>();
        println!(
            "read, verify and unpack the manifest ({entries} files): {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
    }
}

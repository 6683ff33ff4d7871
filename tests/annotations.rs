//! Annotations: `spfs run --annotation K=V --annotation-file F` stores them
//! as spfs does (annotation layers below the refs), and `spfs info --get`,
//! `--get-all` and `spfs runtime info --get` read them back with spfs's
//! output and lookup order. Real service, real FUSE mounts.

mod common;

use common::*;

#[test]
fn annotations_are_stored_on_the_stack_and_read_back_as_spfs_reads_them() {
    let env = TestEnv::new();
    let file = env.root.path().join("notes.yaml");
    std::fs::write(&file, "port: 22\nowner: render farm\n").unwrap();
    let out = env
        .spfs(&[
            "run",
            "--runtime-name",
            "ann",
            "--annotation-file",
            file.to_str().unwrap(),
            "--annotation",
            "a=1",
            "--annotation",
            "a=2",
            "--annotation",
            "x:y=z",
            "base",
            "--",
            "sh",
            "-c",
            "$SPFS info --get a; $SPFS info --get x:y --get missing; echo ---; \
             $SPFS info --get-all; echo ---; $SPFS runtime info ann --annotation port",
        ])
        .env("SPFS", SPFS)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // --get: bottom-up, the last given lowest, so the last `a` wins;
    // --get-all: later (higher) overwrite, so it shows the first `a`, as spfs.
    assert_eq!(
        stdout(&out),
        "2\nz\n\n---\na: '1'\nowner: render farm\nport: '22'\nx:y: z\n\n---\n22\n",
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("WARN No annotation stored under: missing"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_long_value_is_kept_as_a_blob_and_still_read_back() {
    let env = TestEnv::new();
    let long = "x".repeat(100);
    let out = env
        .spfs(&[
            "run",
            "--annotation",
            &format!("big={long}"),
            "-",
            "--",
            "sh",
            "-c",
            "$SPFS info --get big",
        ])
        .env("SPFS", SPFS)
        .env("SPFS_FILESYSTEM__ANNOTATION_SIZE_LIMIT", "16")
        .output()
        .unwrap();
    assert_eq!(stdout(&out), format!("{long}\n"), "{}", stderr(&out));
    // Stored as a payload of its own (and a Blob object).
    let payloads = walk_files(&env.repo.join("payloads"));
    let stored = payloads
        .iter()
        .any(|p| std::fs::read(p).is_ok_and(|b| b == long.as_bytes()));
    assert!(stored, "{payloads:?}");
    // An empty REF with annotations is still editable by default.
    let out = env.sh(&["--annotation", "k=v", "-"], "touch $M/new && echo wrote");
    assert_eq!(stdout(&out), "wrote\n", "{}", stderr(&out));
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match path.is_dir() {
            true => found.extend(walk_files(&path)),
            false => found.push(path),
        }
    }
    found
}

#[test]
fn bad_annotations_are_refused_before_anything_starts() {
    let env = TestEnv::new();
    let bad = env
        .spfs(&["run", "--annotation", "novalue", "base", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad)
            .contains("Invalid option: -annotation novalue (should be in the form name=value)"),
        "{}",
        stderr(&bad)
    );
    let list = env.root.path().join("list.yaml");
    std::fs::write(&list, "- a\n- b\n").unwrap();
    let bad = env
        .spfs(&[
            "run",
            "--annotation-file",
            list.to_str().unwrap(),
            "base",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("is not usable"), "{}", stderr(&bad));
    let missing = env
        .spfs(&[
            "run",
            "--annotation-file",
            "/no/such/file",
            "base",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert!(
        stderr(&missing).contains("cannot read the annotation file /no/such/file"),
        "{}",
        stderr(&missing)
    );
    // Nothing was started for any of them.
    assert!(env.service_pid().is_none());
}

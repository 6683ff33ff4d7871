//! What a hostile or broken layer cannot do: a file swapped for a FIFO or a
//! symlink after `Mount` neither hangs nor redirects a read, a path longer
//! than PATH_MAX still shows, and a Mount that is too big or too slow is
//! refused with the setting that moves the limit named. Directory layers,
//! real service, real FUSE.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn layer_with(env: &TestEnv, files: &[(&str, &str)]) -> std::path::PathBuf {
    let dir = env.root.path().join("dirlayer");
    for (path, content) in files {
        let full = dir.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
    }
    dir
}

/// Starts `spfs run LAYER -- sh -c SCRIPT` where SCRIPT first prints a line
/// and waits for one on stdin, so the test can change the layer after Mount.
fn run_after_change(
    env: &TestEnv,
    layer: &std::path::Path,
    script: &str,
    change: impl FnOnce(),
) -> std::process::Output {
    use std::io::{BufRead, BufReader, Write};
    let mut child = env
        .spfs(&[
            "run",
            layer.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &format!("echo mounted; read _; {script}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "mounted\n");
    change();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let mut output = child.wait_with_output().unwrap();
    output.stdout = rest.into_bytes();
    output
}

#[test]
fn a_file_swapped_for_a_fifo_after_mount_fails_at_once_and_blocks_nobody() {
    let env = TestEnv::new();
    let layer = layer_with(
        &env,
        &[("etc/fifo-later", "was a file\n"), ("etc/other", "fine\n")],
    );
    let mnt = env.mountpoint.display().to_string();
    // A dozen readers of the FIFO at once, then an ordinary read: all must
    // finish promptly (a blocked open would hold a FUSE worker forever).
    let script = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do (cat {mnt}/etc/fifo-later 2>/dev/null; echo \"fifo $?\") & done; wait; cat {mnt}/etc/other"
    );
    let started = Instant::now();
    let output = run_after_change(&env, &layer, &script, || {
        let path = layer.join("etc/fifo-later");
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    });
    let text = stdout(&output);
    assert_eq!(text.matches("fifo 1").count(), 12, "{text}");
    assert!(text.ends_with("fine\n"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!env.service_events("service.layer_file_refused").is_empty());
}

#[test]
fn a_file_swapped_for_a_symlink_after_mount_is_not_followed() {
    let env = TestEnv::new();
    let secret = env.root.path().join("secret");
    std::fs::write(&secret, "not for the layer\n").unwrap();
    let layer = layer_with(
        &env,
        &[
            ("etc/passwd-ish", "layer content\n"),
            ("sub/inner/file", "inner\n"),
        ],
    );
    let elsewhere = env.root.path().join("elsewhere/inner");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("file"), "redirected\n").unwrap();
    let mnt = env.mountpoint.display().to_string();
    let script = format!(
        "cat {mnt}/etc/passwd-ish; echo \"file $?\"; cat {mnt}/sub/inner/file; echo \"dir $?\""
    );
    let output = run_after_change(&env, &layer, &script, || {
        let file = layer.join("etc/passwd-ish");
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(&secret, &file).unwrap();
        // A directory on the way swapped for a symlink to another tree.
        std::fs::remove_dir_all(layer.join("sub/inner")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, layer.join("sub/inner")).unwrap();
    });
    let text = stdout(&output);
    assert!(!text.contains("not for the layer"), "{text}");
    assert!(!text.contains("redirected"), "{text}");
    assert!(text.contains("file 1") && text.contains("dir 1"), "{text}");
    assert!(
        stderr(&output).contains("Input/output error"),
        "{}",
        stderr(&output)
    );
    assert!(env.service_events("service.layer_file_refused").len() >= 2);
}

#[test]
fn paths_longer_than_path_max_still_show() {
    let env = TestEnv::new();
    let layer = env.root.path().join("long");
    std::fs::create_dir_all(&layer).unwrap();
    // 20 levels of 250-character names: 5,000+ bytes, beyond PATH_MAX (4096).
    let name = "n".repeat(250);
    // Relative chdir steps: no full path is ever used (shells would build one).
    let make = format!(
        "import os\nos.chdir({:?})\nfor _ in range(20):\n    os.mkdir({name:?}); os.chdir({name:?})\nopen('file', 'w').write('deep\\n')",
        layer.display().to_string()
    );
    run_ok(env.command("python3").args(["-c", &make]));
    let read = format!(
        "import os\nos.chdir({:?})\nfor _ in range(20):\n    os.chdir({name:?})\nprint(open('file').read(), end='')",
        env.mountpoint.display().to_string()
    );
    let output =
        run_ok(&mut env.spfs(&["run", layer.to_str().unwrap(), "--", "python3", "-c", &read]));
    assert_eq!(stdout(&output), "deep\n");
}

#[test]
fn a_mount_too_big_or_too_slow_is_refused_naming_the_setting() {
    let env = TestEnv::new();
    let layer = env.root.path().join("many");
    for d in 0..40 {
        let dir = layer.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..250 {
            std::fs::write(dir.join(format!("f{f}")), "").unwrap();
        }
    }
    let marker = env.root.path().join("ran");
    let attempt = |var: &str, value: &str| {
        // Limits are the service's: each attempt starts a service with them.
        env.stop_service();
        let output = env
            .spfs(&[
                "run",
                layer.to_str().unwrap(),
                "--",
                "touch",
                marker.to_str().unwrap(),
            ])
            .env(var, value)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{var}={value}: accepted");
        assert!(!marker.exists(), "{var}={value}: the command ran");
        stderr(&output)
    };
    let err = attempt("SPFS_MOUNT_MAX_ENTRIES", "1000");
    assert!(
        err.contains("more than 1000 entries") && err.contains("SPFS_MOUNT_MAX_ENTRIES"),
        "{err}"
    );
    let err = attempt("SPFS_MOUNT_TIMEOUT", "1ms");
    assert!(err.contains("SPFS_MOUNT_TIMEOUT"), "{err}");
    env.stop_service();
    run_ok(&mut env.spfs(&["run", layer.to_str().unwrap(), "--", "true"]));
}

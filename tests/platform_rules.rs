//! Rules macOS needs that are platform-neutral logic, checked here on Linux
//! with the real binaries and real FUSE mounts: the root listing is chosen by
//! the process that reads it (not the one that opened the handle), the
//! service refuses a mountpoint it does not own, socket paths must fit
//! `sun_path`, and `allow_other` is chosen from SPFS_ALLOW_OTHER.

mod common;

use common::*;

#[cfg(target_os = "linux")]
fn layer_file(env: &TestEnv, layer: &str, path: &str) {
    let full = env.layers.join(layer).join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(full, "x\n").unwrap();
}

/// The mount's super options (the last field of its mountinfo line).
#[cfg(target_os = "linux")]
fn super_options(mountpoint: &std::path::Path) -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mountpoint = mountpoint.to_string_lossy();
    info.lines()
        .find(|l| l.split(' ').nth(4) == Some(&*mountpoint))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_default()
        .to_owned()
}

#[cfg(target_os = "linux")]
#[test]
fn the_root_listing_follows_the_reading_process_not_the_opener() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;

    let env = TestEnv::new();
    layer_file(&env, "base", "etc/version");
    layer_file(&env, "app", "share/app.txt");
    env.tag_layers();
    run_ok(&mut env.spfs(&["service", "start"]));

    // This process (in no runtime) opens the root, without close-on-exec, so
    // a runtime's process inherits the very same open directory: what macOS's
    // kernel does for every process with its one shared root handle.
    let path = std::ffi::CString::new(env.mountpoint.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; the fd is owned below.
    let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    assert!(raw >= 0, "open {}", env.mountpoint.display());
    // SAFETY: a fresh fd nothing else owns.
    let dir = unsafe { OwnedFd::from_raw_fd(raw) };

    let list = format!("import os; print(' '.join(sorted(os.listdir({raw}))))");
    let inside = run_ok(&mut env.spfs(&["run", "base+app", "--", "python3", "-c", &list]));
    assert_eq!(
        stdout(&inside),
        "etc share\n",
        "a runtime's process reading the outsider's handle sees its own view"
    );
    let other = run_ok(&mut env.spfs(&["run", "app", "--", "python3", "-c", &list]));
    assert_eq!(stdout(&other), "share\n", "another runtime sees its view");

    // And a process outside every runtime, reading the same handle, sees nothing.
    let outside = run_ok(std::process::Command::new("python3").args(["-c", &list]));
    assert_eq!(
        stdout(&outside),
        "\n",
        "outside every runtime the root is empty"
    );
    drop(dir);
}

#[test]
fn a_mountpoint_owned_by_someone_else_is_refused_with_the_fix() {
    let env = TestEnv::new();
    std::fs::create_dir_all(&env.mountpoint).unwrap();
    let nobody = 65534;
    std::os::unix::fs::chown(&env.mountpoint, Some(nobody), Some(nobody)).unwrap();
    let me = nix::unistd::geteuid().as_raw();
    assert_ne!(me, nobody, "the test needs a user other than nobody");

    let output = env.spfs(&["service", "start"]).output().unwrap();
    assert!(!output.status.success(), "started on a foreign mountpoint");
    let err = stderr(&output);
    assert!(
        err.contains(&format!("is owned by uid {nobody}, not by you (uid {me})")),
        "{err}"
    );
    assert!(err.contains("SPFS_MOUNTPOINT"), "the fix is named: {err}");
    assert!(!env.is_mounted());
    let failed = env.service_events("service.start_failed");
    assert_eq!(failed[0]["reason"], "mountpoint");

    let doctor = env.spfs(&["doctor"]).output().unwrap();
    let text = stdout(&doctor);
    assert!(
        text.contains("[FAIL] mountpoint") && text.contains("owned by uid 65534"),
        "{text}"
    );
}

/// A runtime dir whose socket path (`DIR/vfs.sock`) is exactly `len` bytes.
fn runtime_dir_for_socket_len(env: &TestEnv, len: usize) -> std::path::PathBuf {
    let base = env.root.path().canonicalize().unwrap();
    let fixed = base.as_os_str().len() + "/".len() + "/vfs.sock".len();
    let dir = base.join("r".repeat(len - fixed));
    assert_eq!(dir.join("vfs.sock").as_os_str().len(), len);
    dir
}

#[test]
fn a_socket_path_must_fit_sun_path() {
    let max = spfs::paths::max_socket_path();
    let sun_path = if cfg!(target_os = "macos") { 104 } else { 108 };
    assert_eq!(max, sun_path - 1, "sun_path less its NUL");

    let env = TestEnv::new();
    let too_long = runtime_dir_for_socket_len(&env, max + 1);
    let output = env
        .spfs(&["service", "start"])
        .env("SPFS_RUNTIME_DIR", &too_long)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains(&format!("is {} bytes, longer than the {max}", max + 1))
            && err.contains("SPFS_RUNTIME_DIR"),
        "{err}"
    );

    // The longest allowed path really works (the service binds and serves).
    let env = TestEnv::new();
    let longest = runtime_dir_for_socket_len(&env, max);
    let mut start = env.spfs(&["service", "start"]);
    start.env("SPFS_RUNTIME_DIR", &longest);
    let output = start.output().unwrap();
    // Stop it through the same runtime dir before asserting.
    let mut stop = env.spfs(&["service", "stop"]);
    stop.env("SPFS_RUNTIME_DIR", &longest);
    let stopped = stop.output().unwrap();
    assert!(
        output.status.success(),
        "start with a {max}-byte socket path: {}",
        stderr(&output)
    );
    assert!(stopped.status.success(), "{}", stderr(&stopped));
}

#[cfg(target_os = "linux")]
#[test]
fn allow_other_follows_spfs_allow_other() {
    // Tests run as root, where allow_other is permitted: the Linux default is on.
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["service", "start"]));
    assert!(super_options(&env.mountpoint).contains("allow_other"));
    run_ok(&mut env.spfs(&["service", "stop"]));

    run_ok(env.spfs(&["service", "start"]).env("SPFS_ALLOW_OTHER", "0"));
    let options = super_options(&env.mountpoint);
    assert!(
        !options.contains("allow_other"),
        "owner-only when SPFS_ALLOW_OTHER=0: {options}"
    );
    run_ok(&mut env.spfs(&["service", "stop"]));

    let output = env
        .spfs(&["service", "start"])
        .env("SPFS_ALLOW_OTHER", "maybe")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("SPFS_ALLOW_OTHER=\"maybe\" is not 1 or 0"),
        "{}",
        stderr(&output)
    );
    assert!(!env.is_mounted());
}

/// On macOS fuser links macFUSE's libfuse into every binary; the `spfs`
/// binary drops it (build.rs: -dead_strip_dylibs) only if nothing reachable
/// from its main uses fuser. The Linux linker's section GC shows the same
/// reachability: `spfs` must contain no fuser symbol, the service must.
#[cfg(target_os = "linux")]
#[test]
fn the_user_binary_contains_nothing_of_fuser() {
    let fuser_symbols = |binary: &str| -> usize {
        let output = std::process::Command::new("nm")
            .args(["--demangle", binary])
            .output()
            .expect("nm (binutils) to read the binaries' symbols");
        assert!(output.status.success(), "nm {binary}: {}", stderr(&output));
        stdout(&output)
            .lines()
            .filter(|line| line.contains("fuser::"))
            .count()
    };
    assert_eq!(fuser_symbols(SPFS), 0, "spfs reaches fuser code");
    assert!(
        fuser_symbols(SERVICE) > 0,
        "the service has fuser symbols (else this test proves nothing)"
    );
}

/// macOS starts processes with 256 open files; the service watches one fd per
/// process of every runtime, so it raises its soft limit to the hard one.
#[cfg(target_os = "linux")]
#[test]
fn the_service_raises_its_open_file_limit() {
    let env = TestEnv::new();
    run_ok(env.command("sh").args([
        "-c",
        &format!("ulimit -Sn 256 && exec {SPFS} service start"),
    ]));
    let pid = env.service_pid().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers[0], numbers[1], "soft = hard: {line}");
    assert_ne!(numbers[0], "256", "{line}");
}

//! Startup scripts: `spfs run` and `spfs shell` source the runtime's
//! `etc/spfs/startup.d` scripts in the user's shell (bash, sh, zsh, tcsh,
//! csh), in order, failures ignored, then exec the command with its
//! arguments intact, or show the shell's message. Real service, real FUSE
//! mounts, real shells (`.ci/run` installs zsh, tcsh and csh).

mod common;

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The shells a user may have as `$SHELL`, with the scripts each sources.
const SHELLS: [&str; 5] = ["bash", "sh", "zsh", "tcsh", "csh"];

fn shell_path(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed; .ci/run installs it"))
}

/// A layer `pkg` whose startup scripts depend on each other's order, one
/// of them failing half way (a false command, then a syntax error), in
/// both the sh and the csh flavour.
fn env_with_startup_scripts() -> TestEnv {
    let env = TestEnv::new();
    let dir = env.layers.join("pkg/etc/spfs/startup.d");
    std::fs::create_dir_all(&dir).unwrap();
    let files = [
        ("10_first.sh", "export FIRST=one\n"),
        ("15_broken.sh", "false\nif then fi\nexport BROKEN=reached\n"),
        ("20_second.sh", "export SECOND=\"$FIRST-two\"\n"),
        ("10_first.csh", "setenv FIRST one\n"),
        ("20_second.csh", "setenv SECOND \"${FIRST}-two\"\n"),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    env.tag_layers();
    env
}

fn run_under(env: &TestEnv, shell: &str, args: &[&str]) -> std::process::Output {
    let mut full = vec!["run", "pkg", "--"];
    full.extend_from_slice(args);
    env.spfs(&full)
        .env("SHELL", shell_path(shell))
        .output()
        .unwrap()
}

#[test]
fn every_shell_sources_the_scripts_in_order_and_passes_arguments_intact() {
    let env = env_with_startup_scripts();
    let tricky = ["a b", "", "$HOME", "it's", "\"q\"", "back\\slash", "*"];
    let mut printer = vec!["sh", "-c", r#"for a; do printf '[%s]' "$a"; done"#, "x"];
    printer.extend_from_slice(&tricky);
    let expected: String = tricky.iter().map(|a| format!("[{a}]")).collect();
    for shell in SHELLS {
        let out = run_under(&env, shell, &["printenv", "SECOND"]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        assert_eq!(stdout(&out), "one-two\n", "{shell}: {}", stderr(&out));
        let out = run_under(&env, shell, &printer);
        assert_eq!(stdout(&out), expected, "{shell}: {}", stderr(&out));
    }
    // The failing script ran up to its error and did not stop the rest.
    let out = run_under(&env, "bash", &["sh", "-c", "echo ${BROKEN-unset}"]);
    assert_eq!(stdout(&out), "unset\n", "{}", stderr(&out));
}

#[test]
fn the_command_is_the_run_process_itself_with_or_without_scripts() {
    let env = env_with_startup_scripts();
    for reference in ["base", "pkg"] {
        for shell in ["bash", "tcsh"] {
            let child = env
                .spfs(&["run", reference, "--", "sh", "-c", "echo $$; exit 7"])
                .env("SHELL", shell_path(shell))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let pid = child.id();
            let out = child.wait_with_output().unwrap();
            assert_eq!(
                out.status.code(),
                Some(7),
                "{reference} {shell}: {}",
                stderr(&out)
            );
            assert_eq!(stdout(&out).trim(), pid.to_string(), "{reference} {shell}");
        }
    }
}

#[test]
fn spfs_debug_names_each_script_as_it_is_sourced() {
    let env = env_with_startup_scripts();
    let out = env
        .spfs(&["run", "pkg", "--", "true"])
        .env("SHELL", shell_path("bash"))
        .env("SPFS_DEBUG", "1")
        .output()
        .unwrap();
    let dir = env.mountpoint.join("etc/spfs/startup.d");
    let sourced: Vec<String> = stderr(&out)
        .lines()
        .filter_map(|l| l.strip_prefix("source "))
        .map(str::to_owned)
        .collect();
    let expected: Vec<String> = ["10_first.sh", "15_broken.sh", "20_second.sh"]
        .iter()
        .map(|f| dir.join(f).display().to_string())
        .collect();
    assert_eq!(sourced, expected, "{}", stderr(&out));
    // Without it, nothing is said (the broken script's own error aside).
    let quiet = run_under(&env, "bash", &["true"]);
    assert!(!stderr(&quiet).contains("source "), "{}", stderr(&quiet));
}

/// Runs `command` on a pseudo-terminal, types `input`, and returns all
/// it printed (stdout and stderr) once it exits.
fn in_pty(mut command: Command, input: &str) -> (Option<i32>, String) {
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    command
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    drop(command); // the parent's copies of the terminal's slave side
    let mut master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone().unwrap();
    let output = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the shell and its children closed the terminal
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    master.write_all(input.as_bytes()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(master);
    (status.code(), output.join().unwrap())
}

#[test]
fn an_interactive_shell_reads_the_users_rc_then_the_scripts_and_says_so() {
    let env = env_with_startup_scripts();
    let home = env.root.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join(".bashrc"), "export RC=bashrc\n").unwrap();
    std::fs::write(home.join(".zshrc"), "export RC=zshrc\n").unwrap();
    std::fs::write(home.join(".tcshrc"), "setenv RC tcshrc\n").unwrap();
    std::fs::write(home.join(".cshrc"), "setenv RC cshrc\n").unwrap();
    std::fs::write(home.join("shrc"), "export RC=shrc\n").unwrap();
    let shells = [
        ("bash", "bashrc"),
        ("zsh", "zshrc"),
        ("tcsh", "tcshrc"),
        ("csh", "cshrc"),
        ("sh", "shrc"),
    ];
    for (shell, rc) in shells {
        let mut command = env.spfs(&["shell", "pkg"]);
        command
            .env("SHELL", shell_path(shell))
            .env("HOME", &home)
            .env("ENV", home.join("shrc"))
            .env("TERM", "dumb");
        let (code, out) = in_pty(
            command,
            "echo \"got=$SECOND/$RC/$SPFS_RUNTIME\" ; echo \"home=$HOME\"; exit 3\n",
        );
        assert_eq!(code, Some(3), "{shell}: {out}");
        assert!(
            out.contains("* You are now in a configured subshell *"),
            "{shell}: {out}"
        );
        assert!(
            out.contains(&format!("got=one-two/{rc}/")),
            "{shell}: {out}"
        );
        // HOME (which csh's startup borrows) is the user's again.
        assert!(
            out.contains(&format!("home={}", home.display())),
            "{shell}: {out}"
        );
    }
    // A message of one's own, and none when it is set empty.
    for (message, shown) in [("hello from spfs", true), ("", false)] {
        let mut command = env.spfs(&["shell", "pkg"]);
        command
            .env("SHELL", shell_path("bash"))
            .env("HOME", &home)
            .env("SPFS_SHELL_MESSAGE", message)
            .env("TERM", "dumb");
        let (_, out) = in_pty(command, "exit\n");
        assert!(!out.contains("configured subshell"), "{out}");
        if shown {
            assert!(out.contains(message), "{out}");
        }
    }
}

#[test]
fn scripts_a_runtime_wrote_into_its_own_changes_run_when_it_is_re_entered() {
    let env = TestEnv::with_base_to_edit();
    env.sh_ok(
        &["--keep-runtime", "--runtime-name", "r", "-e", "base"],
        "mkdir -p $M/etc/spfs/startup.d && echo 'export MINE=yes' > $M/etc/spfs/startup.d/mine.sh",
    );
    // The layers have no startup.d; only the runtime's changes do.
    let out = env
        .spfs(&["run", "--rerun", "r", "--", "printenv", "MINE"])
        .env("SHELL", shell_path("bash"))
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "yes\n", "{}", stderr(&out));
    // In a fresh runtime of the same layers, there is nothing to source.
    let out = env
        .spfs(&["run", "base", "--", "sh", "-c", "echo ${MINE-unset}"])
        .env("SHELL", shell_path("bash"))
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "unset\n", "{}", stderr(&out));
}

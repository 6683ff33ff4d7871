//! The smaller parts of spfs's run and setup surface: `-k` /
//! `SPFS_KEEP_RUNTIME`, `--no-edit`, `spfs version`, `spfs config`, `spfs
//! init repo`. Real service, real FUSE mounts, temp dirs.

mod common;

use common::*;

#[test]
fn no_edit_keeps_an_empty_environment_read_only() {
    let env = TestEnv::new();
    let out = env.sh(
        &["--no-edit", "-"],
        "touch $M/x && echo wrote || echo refused",
    );
    assert_eq!(stdout(&out), "refused\n", "{}", stderr(&out));
    let out = env.sh(&["-"], "touch $M/x && echo wrote");
    assert_eq!(stdout(&out), "wrote\n", "{}", stderr(&out));
    let both = env
        .spfs(&["run", "-e", "--no-edit", "-", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
}

#[test]
fn k_and_spfs_keep_runtime_keep_the_runtime() {
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["run", "-k", "--runtime-name", "k1", "-", "--", "true"]));
    run_ok(
        env.spfs(&["run", "--runtime-name", "k2", "-", "--", "true"])
            .env("SPFS_KEEP_RUNTIME", "1"),
    );
    run_ok(&mut env.spfs(&["run", "--runtime-name", "k3", "-", "--", "true"]));
    run_ok(
        env.spfs(&["run", "--runtime-name", "k4", "-", "--", "true"])
            .env("SPFS_KEEP_RUNTIME", "0"),
    );
    let list = stdout(&run_ok(&mut env.spfs(&["runtime", "list"])));
    for kept in ["k1", "k2"] {
        let line = list
            .lines()
            .find(|l| l.starts_with(kept))
            .unwrap_or_else(|| panic!("{kept}: {list}"));
        assert!(line.contains("durable=true"), "{line}");
    }
    for gone in ["k3", "k4"] {
        assert!(!list.lines().any(|l| l.starts_with(gone)), "{list}");
    }
}

#[test]
fn version_config_and_init_say_and_make_what_spfs_does() {
    let env = TestEnv::new();
    let version = stdout(&run_ok(&mut env.spfs(&["version"])));
    assert_eq!(version, format!("{}\n", spfs::contract::VERSION));
    let config: serde_json::Value =
        serde_json::from_str(&stdout(&run_ok(&mut env.spfs(&["config"])))).unwrap();
    assert_eq!(config["storage"]["root"], env.repo.display().to_string());
    assert_eq!(config["filesystem"]["secondary_repositories"][0], "origin");
    let secret = env
        .spfs(&["config"])
        .env(
            "SPFS_REMOTE_ORIGIN_ADDRESS",
            "http2://me:hunter2@spfs.example:7737",
        )
        .output()
        .unwrap();
    let text = stdout(&secret);
    assert!(text.contains("http2://me:***@spfs.example:7737"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    let new = env.root.path().join("new/repo");
    run_ok(&mut env.spfs(&["init", "repo", new.to_str().unwrap()]));
    for sub in ["objects", "payloads", "tags", "VERSION"] {
        assert!(new.join(sub).exists(), "{sub}");
    }
    // Again: left as it is; then it takes a commit.
    run_ok(&mut env.spfs(&["init", "repo", new.to_str().unwrap()]));
    let layers = env.layers.join("base");
    run_ok(
        env.spfs(&[
            "commit",
            "--allow-empty",
            "--path",
            layers.to_str().unwrap(),
        ])
        .env("SPFS_STORAGE_ROOT", &new),
    );
}

#[test]
fn edit_keep_runtime_makes_a_live_runtime_durable_with_its_changes() {
    let env = TestEnv::with_base_to_edit();
    let out = env.sh(
        &["--runtime-name", "kept-late", "base"],
        "$SPFS edit --keep-runtime && echo mine > $M/etc/mine",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("edit mode enabled"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("is durable"), "{}", stderr(&out));
    // Kept after it ended, with what it wrote; re-entered.
    let list = stdout(&run_ok(&mut env.spfs(&["runtime", "list"])));
    assert!(
        list.lines()
            .any(|l| l.starts_with("kept-late") && l.contains("durable=true")),
        "{list}"
    );
    assert_eq!(
        env.sh_ok(&["--rerun", "kept-late"], "cat $M/etc/mine"),
        "mine\n"
    );
}

#[test]
fn a_run_spec_in_a_ref_shows_its_layers_in_place() {
    let env = TestEnv::new();
    for (layer, text) in [("base", "from base\n"), ("app", "from app\n")] {
        std::fs::write(env.layers.join(layer).join("who"), text).unwrap();
    }
    env.tag_layers();
    let spec = env.root.path().join("app.spfs.yaml");
    std::fs::write(&spec, "api: spfs/v0/runspec\nlayers:\n  - app\n").unwrap();
    // base below the spec's app: app's file wins.
    let reference = format!("base+{}", spec.display());
    assert_eq!(env.sh_ok(&[&reference], "cat $M/who"), "from app\n");
    // Bad spec files are refused before anything starts.
    let live = env.root.path().join("live.spfs.yaml");
    std::fs::write(&live, "api: spfs/v0/livelayer\ncontents: []\n").unwrap();
    let broken = env.root.path().join("broken.spfs.yaml");
    std::fs::write(&broken, "api: spfs/v0/runspec\nlayers: nope\n").unwrap();
    for (file, says) in [(&live, "live layer"), (&broken, "no `layers:` list")] {
        let out = env
            .spfs(&["run", file.to_str().unwrap(), "--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
    }
}

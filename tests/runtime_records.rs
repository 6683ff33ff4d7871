//! Runtime records in spfs's format (`spfs/runtimes/meta|data/NAME` in the
//! local repository): what spfs's own library reads to find the active
//! runtime. Written when a runtime starts, updated when it changes, saved
//! as stopped or removed when it ends, corrected by the next service after
//! a crash. Real service, real FUSE mounts; the records are read back from
//! the repository's files as spfs reads them (meta tag -> payload -> JSON).

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use spfs::storage::fs::FsRepository;
use spfs::storage::tag::TagSpec;

/// The newest record of runtime `name`, as spfs reads it: the meta tag's
/// target is a payload holding the JSON.
fn record(env: &TestEnv, name: &str) -> Option<Value> {
    let repo = FsRepository::open(&env.repo).ok()?;
    let spec = TagSpec::parse(&format!("spfs/runtimes/meta/{name}")).unwrap();
    let head = repo.resolve_tag(&spec).ok()?;
    let bytes = std::fs::read(repo.payload_path(&head.target)).ok()?;
    assert!(!bytes.ends_with(b"\n"), "compact JSON, no newline");
    Some(serde_json::from_slice(&bytes).expect("the record is JSON"))
}

fn has_data_tag(env: &TestEnv, name: &str) -> bool {
    env.repo
        .join(format!("tags/spfs/runtimes/data/{name}.tag"))
        .is_file()
}

/// Waits until the record of `name` satisfies `check`.
fn wait_record(env: &TestEnv, name: &str, check: impl Fn(&Value) -> bool) -> Value {
    let mut last = None;
    let ok = env.wait_for(Duration::from_secs(10), || {
        last = record(env, name);
        last.as_ref().is_some_and(&check)
    });
    assert!(ok, "record of {name}: {last:?}");
    last.unwrap()
}

fn gone(env: &TestEnv, name: &str) -> bool {
    env.wait_for(Duration::from_secs(10), || {
        record(env, name).is_none() && !has_data_tag(env, name)
    })
}

#[test]
fn a_running_runtime_is_recorded_with_the_keys_spfs_requires() {
    let env = TestEnv::with_base_to_edit();
    let (held, line) = env.hold_run(&["--runtime-name", "rec-1", "base"], "echo $$");
    let pid: u64 = line.parse().unwrap();
    let json = wait_record(&env, "rec-1", |r| r["status"]["running"] == true);
    assert_eq!(json["name"], "rec-1");
    for key in ["user_name", "host_name", "created"] {
        assert!(json["author"][key].is_string(), "author.{key}: {json}");
    }
    assert_eq!(json["status"]["owner"], pid, "{json}");
    assert_eq!(json["status"]["editable"], false);
    assert_eq!(json["status"]["command"][0], "sh");
    let stack = json["status"]["stack"].as_array().unwrap();
    assert_eq!(stack.len(), 1, "{json}");
    for key in [
        "upper_dir",
        "lower_dir",
        "work_dir",
        "sh_startup_file",
        "csh_startup_file",
    ] {
        assert!(json["config"][key].is_string(), "config.{key}: {json}");
    }
    assert_eq!(json["config"]["mount_backend"], "FuseOnly");
    assert_eq!(json["config"]["durable"], false);
    assert!(has_data_tag(&env, "rec-1"));
    // `spfs runtime info` prints that JSON.
    let info: Value = serde_json::from_str(&stdout(&run_ok(
        &mut env.spfs(&["runtime", "info", "rec-1"]),
    )))
    .unwrap();
    assert_eq!(info["status"], json["status"]);
    assert_eq!(info["config"], json["config"]);
    // Ended (not durable): both records go.
    release(held);
    assert!(gone(&env, "rec-1"));
}

#[test]
fn a_change_of_state_is_recorded_and_a_durable_runtime_stays_recorded_as_stopped() {
    let env = TestEnv::with_base_to_edit();
    let (held, _) = env.hold_run(
        &["--keep-runtime", "--runtime-name", "rec-2", "base"],
        &format!("{SPFS} edit && echo edited"),
    );
    let json = wait_record(&env, "rec-2", |r| r["status"]["editable"] == true);
    assert_eq!(json["config"]["durable"], true);
    release(held);
    let json = wait_record(&env, "rec-2", |r| r["status"]["running"] == false);
    assert_eq!(json["status"]["owner"], Value::Null);
    assert_eq!(json["status"]["editable"], true);
    // Removed with the runtime.
    run_ok(&mut env.spfs(&["runtime", "remove", "--remove-durable", "rec-2"]));
    assert!(gone(&env, "rec-2"));
}

#[test]
fn the_next_service_corrects_the_records_a_killed_one_left() {
    let env = TestEnv::with_base_to_edit();
    let (plain, _) = env.hold_run(&["--runtime-name", "rec-3", "base"], "echo up");
    env.durable_runtime_of_a_killed_service("rec-4");
    // The kill left rec-3's record saying it runs, its process still alive.
    assert_eq!(record(&env, "rec-3").unwrap()["status"]["running"], true);
    release(plain);
    run_ok(&mut env.spfs(&["service", "start"]));
    // A dead runtime's record is removed; a kept one's says it stopped.
    assert!(gone(&env, "rec-3"));
    let kept = wait_record(&env, "rec-4", |r| r["status"]["running"] == false);
    assert_eq!(kept["config"]["durable"], true);
}

#[test]
fn spfs_info_describes_the_active_runtime_as_spfs_does() {
    let env = TestEnv::with_base_to_edit();
    let out = env.sh_ok(
        &["--runtime-name", "info-1", "-e", "base"],
        "$SPFS info; echo new > $M/etc/new; $SPFS info | tail -1",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "Active Runtime:",
            " id: info-1",
            " editable: true",
            "stack (top-down):"
        ],
        "{out}"
    );
    // base: etc/version (4), etc/gone (10), share/tree/deep/file (2), share/kept (6)
    assert!(
        lines[4].starts_with("  - ") && lines[4].ends_with(", Size: 22.0 B"),
        "{out}"
    );
    assert_eq!(
        lines[5..],
        [
            "",
            "No Active Changes",
            "Run 'spfs diff' for active changes"
        ],
        "{out}"
    );
    let outside = env.spfs(&["info"]).output().unwrap();
    assert_eq!(outside.status.code(), Some(1));
    assert!(
        stderr(&outside).contains("no active runtime"),
        "{}",
        stderr(&outside)
    );
}

#[test]
fn a_service_that_stops_leaves_records_that_say_so() {
    let env = TestEnv::with_base_to_edit();
    let (editable, _) = env.hold_run(&["--runtime-name", "rec-5", "-e", "base"], "echo up");
    let (plain, _) = env.hold_run(&["--runtime-name", "rec-6", "base"], "echo up");
    wait_record(&env, "rec-5", |r| r["status"]["running"] == true);
    wait_record(&env, "rec-6", |r| r["status"]["running"] == true);
    run_ok(&mut env.spfs(&["service", "stop", "--force"]));
    // Written before the service went: no wait needed.
    let kept = record(&env, "rec-5").expect("kept as a stopped runtime");
    assert_eq!(kept["status"]["running"], false, "{kept}");
    assert!(
        record(&env, "rec-6").is_none(),
        "a read-only runtime ends with the service"
    );
    release(editable);
    release(plain);
}

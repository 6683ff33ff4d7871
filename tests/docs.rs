//! Keeps `docs/logging.md` in step with the code: every event the code logs is
//! documented (and nothing else), and every field a real run writes is listed
//! for its event.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::*;

const LOGGING_MD: &str = include_str!("../docs/logging.md");

/// `event` -> documented fields, from the Events table.
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let mut events = BTreeMap::new();
    for line in LOGGING_MD.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5
            || !["`launcher.", "`service.", "`log."]
                .iter()
                .any(|prefix| cells[1].starts_with(prefix))
        {
            continue;
        }
        let name = cells[1].trim_matches('`').to_owned();
        // Field names are the backticked words outside parentheses (those hold values).
        let mut outside = String::new();
        let mut depth = 0;
        for c in cells[3].chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ if depth == 0 => outside.push(c),
                _ => {}
            }
        }
        let fields = outside
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        events.insert(name, fields);
    }
    events
}

fn events_in_code(dir: &Path, found: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            events_in_code(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                // `tracing` macros, and lines written by hand as JSON
                // (`telemetry::files` reports dropped lines that way).
                for marker in ["event = \"", "\"event\": \""] {
                    if let Some(rest) = line.split(marker).nth(1) {
                        found.insert(rest.split('"').next().unwrap().to_owned());
                    }
                }
            }
        }
    }
}

#[test]
fn every_logged_event_is_documented_and_every_documented_event_is_logged() {
    let mut in_code = BTreeSet::new();
    events_in_code(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut in_code,
    );
    let in_docs: BTreeSet<String> = documented().into_keys().collect();
    assert!(in_code.len() > 15, "found the events: {in_code:?}");
    let undocumented: Vec<_> = in_code.difference(&in_docs).collect();
    let stale: Vec<_> = in_docs.difference(&in_code).collect();
    assert!(
        undocumented.is_empty(),
        "logged but not in docs/logging.md: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "in docs/logging.md but never logged: {stale:?}"
    );
}

#[test]
fn every_field_a_real_run_writes_is_documented() {
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["run", "base", "--", "true"]));
    run_ok(&mut env.spfs(&["run", "base", "--", "true"]));
    run_ok(&mut env.spfs(&["service", "stop"]));
    let failed = env
        .spfs(&["run", "-", "--", "true"])
        .env("SPFS_FUSE_SERVICE_BIN", "/nonexistent")
        .output()
        .unwrap();
    assert!(!failed.status.success());

    let docs = documented();
    let common_fields = ["timestamp", "level", "pid", "event", "message"];
    let mut seen = BTreeSet::new();
    for line in env
        .log_lines("spfs")
        .into_iter()
        .chain(env.log_lines("spfs-fuse-macos"))
    {
        let event = line["event"].as_str().unwrap().to_owned();
        let Some(fields) = docs.get(&event) else {
            panic!("undocumented event {event}: {line}");
        };
        for key in line.as_object().unwrap().keys() {
            assert!(
                common_fields.contains(&key.as_str()) || fields.contains(key),
                "{event} writes `{key}`, which docs/logging.md does not list: {line}"
            );
        }
        seen.insert(event);
    }
    for expected in [
        "launcher.ensure",
        "launcher.spawn",
        "launcher.start_failed",
        "service.ready",
        "service.stopped",
    ] {
        assert!(seen.contains(expected), "the run logged {expected}");
    }
}

//! The dashboards are loadable and query only what the code emits: JSON is
//! well formed, uids are unique, datasources come from a template variable,
//! every Prometheus series is a documented metric that the code defines, and
//! every log event and field is one the code logs and docs/logging.md lists.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn dashboards() -> Vec<(String, Value)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("{ROOT}/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let value: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            found.push((path.display().to_string(), value));
        }
    }
    assert!(found.len() >= 2, "the metrics and the logs dashboards");
    found
}

fn exprs(dashboard: &Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect()
}

/// Words made of [a-z0-9_.] that follow `prefix` in `text`.
fn words_after(text: &str, prefix: &str) -> Vec<String> {
    text.match_indices(prefix)
        .map(|(i, _)| {
            text[i + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                .collect()
        })
        .collect()
}

#[test]
fn dashboards_are_well_formed_with_unique_uids_and_a_datasource_variable() {
    let mut uids = BTreeSet::new();
    for (path, dashboard) in dashboards() {
        let uid = dashboard["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: no uid"));
        assert!(uids.insert(uid.to_owned()), "{path}: uid {uid} used twice");
        let text = dashboard.to_string();
        assert!(
            !text.contains("${DS_"),
            "{path}: import placeholders break file provisioning"
        );
        let variables = dashboard["templating"]["list"].as_array().unwrap();
        assert!(
            variables
                .iter()
                .any(|v| v["type"] == "datasource" && v["name"] == "datasource"),
            "{path}: no datasource variable"
        );
        let mut panel_ids = BTreeSet::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            assert!(
                panel_ids.insert(panel["id"].as_i64().unwrap()),
                "{path}: duplicate panel id"
            );
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{path}: {}",
                panel["title"]
            );
            assert!(
                !panel["targets"].as_array().unwrap().is_empty(),
                "{path}: empty panel"
            );
        }
    }
    for file in [
        "dashboards/provisioning/dashboards/spfs.yaml",
        "dashboards/provisioning/datasources/spfs.yaml",
    ] {
        let text = std::fs::read_to_string(format!("{ROOT}/{file}")).unwrap();
        assert!(text.contains("apiVersion: 1"), "{file}");
    }
}

#[test]
fn every_metric_a_dashboard_queries_is_documented_and_defined_in_code() {
    let docs = std::fs::read_to_string(format!("{ROOT}/docs/observability.md")).unwrap();
    let code = std::fs::read_to_string(format!("{ROOT}/src/telemetry/metrics.rs")).unwrap();
    // Documented table: OpenTelemetry name -> Prometheus base name.
    let mut documented: HashMap<String, String> = HashMap::new();
    for line in docs.lines().filter(|l| l.starts_with("| `spfs.")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let otel = cells[1].trim_matches('`').to_owned();
        let prom = words_after(cells[4], "`spfs_")
            .first()
            .map(|w| format!("spfs_{w}"))
            .unwrap();
        documented.insert(prom, otel);
    }
    assert!(documented.len() >= 7, "{documented:?}");
    for otel in documented.values() {
        assert!(
            code.contains(&format!("\"{otel}\"")),
            "{otel} is documented but not defined"
        );
    }
    let mut queried = 0;
    for (path, dashboard) in dashboards() {
        for expr in exprs(&dashboard) {
            for series in words_after(&expr, "spfs_") {
                let series = format!("spfs_{series}");
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| series.strip_suffix(s))
                    .unwrap_or(&series);
                assert!(
                    documented.contains_key(base),
                    "{path}: {series} is not a documented metric"
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 7, "the metrics dashboard queries the metrics");
}

/// Events and their fields, from docs/logging.md's table.
fn logging_docs() -> HashMap<String, BTreeSet<String>> {
    let docs = std::fs::read_to_string(format!("{ROOT}/docs/logging.md")).unwrap();
    let mut events = HashMap::new();
    for line in docs.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5
            || !(cells[1].starts_with("`launcher.") || cells[1].starts_with("`service."))
        {
            continue;
        }
        let fields = cells[3]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        events.insert(cells[1].trim_matches('`').to_owned(), fields);
    }
    events
}

#[test]
fn every_log_event_and_field_a_dashboard_queries_is_logged() {
    let events = logging_docs();
    let common = [
        "timestamp",
        "level",
        "pid",
        "event",
        "message",
        "trace_id",
        "span_id",
    ];
    let mut checked = 0;
    for (path, dashboard) in dashboards() {
        for expr in exprs(&dashboard).iter().filter(|e| e.contains("| json")) {
            let event_names = words_after(expr, "event=\"");
            assert_eq!(event_names.len(), expr.matches("event=\"").count());
            let mut fields: Vec<String> = words_after(expr, "unwrap ");
            fields.extend(words_after(expr, "{{."));
            // Label filters after `| json`, such as `| outcome="started"` or `| elapsed_ms > 100`.
            for part in expr.split("| ").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty()
                    && !["json", "line_format", "unwrap", "event", "label_format"]
                        .contains(&name.as_str())
                {
                    fields.push(name);
                }
            }
            for event in &event_names {
                let documented = events.get(event).unwrap_or_else(|| {
                    panic!("{path}: event {event} is not logged (docs/logging.md)")
                });
                for field in &fields {
                    assert!(
                        common.contains(&field.as_str()) || documented.contains(field),
                        "{path}: {event} has no field `{field}`"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 10, "the logs dashboard queries fields");
}

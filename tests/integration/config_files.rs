//! The shipped config files and the JSON Schema: the schema file is `pgward config schema`'s
//! output, every example config in `configs/` and `image/` validates against it, and the
//! reference docs and example name every key it has.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::common::{example_configs, repo_root};

fn schema() -> Value {
    serde_json::from_str(&pgward::config::json_schema()).expect("the schema is JSON")
}

fn yaml_as_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("read example");
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every property name anywhere in the schema (`$defs` included), e.g. `push_concurrency`.
fn schema_keys(schema: &Value, keys: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                keys.extend(props.keys().cloned());
            }
            map.values().for_each(|v| schema_keys(v, keys));
        }
        Value::Array(items) => items.iter().for_each(|v| schema_keys(v, keys)),
        _ => {}
    }
}

#[test]
fn the_schema_file_is_what_config_schema_prints() {
    let file = std::fs::read_to_string(repo_root().join("configs/pgward.schema.json"))
        .expect("read configs/pgward.schema.json");
    let out = std::process::Command::new(crate::common::pgward_bin())
        .args(["config", "schema"])
        .output()
        .expect("run pgward config schema");
    assert!(out.status.success());
    assert!(
        file == String::from_utf8_lossy(&out.stdout),
        "configs/pgward.schema.json is stale: regenerate it with \
         `pgward config schema > configs/pgward.schema.json`"
    );
    assert_eq!(
        schema()["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
}

#[test]
fn every_example_config_validates_against_the_schema_and_references_it() {
    let validator = jsonschema::validator_for(&schema()).expect("a valid JSON Schema");
    for path in example_configs() {
        let errors: Vec<String> = validator
            .iter_errors(&yaml_as_json(&path))
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        // image/ is the image's, which installs its config elsewhere; the repository's
        // examples point editors at the schema beside them.
        if path.starts_with(repo_root().join("configs")) {
            let text = std::fs::read_to_string(&path).expect("read example");
            assert!(
                text.lines()
                    .any(|l| l == "# yaml-language-server: $schema=pgward.schema.json"),
                "{} does not reference the schema",
                path.display()
            );
        }
    }
}

#[test]
fn the_schema_rejects_unknown_keys_and_wrong_shapes() {
    let validator = jsonschema::validator_for(&schema()).expect("a valid JSON Schema");
    let ok = serde_json::json!({
        "postgres": {"port": 5433, "parameters": {"log_connections": "on"}, "init": null},
        "services": [{"name": "a", "command": ["x", 1], "after": "postgres"}],
        "jobs": [
            {"name": "b", "schedule": "@daily", "command": "vacuumdb --all"},
            {"name": "c", "schedule": "@daily", "action": "backup", "options": {"type": "full"}},
        ],
        "storage": {"url": "s3://b/p", "s3": {"allow_http": true}},
        "log": null,
    });
    assert!(validator.is_valid(&ok), "{:?}", validator.validate(&ok));
    for bad in [
        serde_json::json!({"postgress": {}}),
        serde_json::json!({"postgres": {"prot": 5432}}),
        serde_json::json!({"jobs": [{"name": "a", "shedule": "@daily"}]}),
        serde_json::json!({"storage": {"s3": {"secret": "x"}}}),
        serde_json::json!({"services": {"name": "a"}}),
        serde_json::json!({"postgres": {"port": [5432]}}),
        serde_json::json!({"jobs": [{"command": {"a": 1}}]}),
    ] {
        assert!(!validator.is_valid(&bad), "accepted {bad}");
    }
}

#[test]
fn the_reference_and_the_example_name_every_key_of_the_schema() {
    let mut keys = BTreeSet::new();
    schema_keys(&schema(), &mut keys);
    assert!(
        keys.contains("push_concurrency") && keys.len() > 100,
        "{keys:?}"
    );
    let reference = std::fs::read_to_string(repo_root().join("docs/configuration.md")).unwrap();
    let example = std::fs::read_to_string(repo_root().join("configs/pgward.example.yaml")).unwrap();
    let undocumented: Vec<&String> = keys
        .iter()
        .filter(|k| !reference.contains(&format!("`{k}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/configuration.md: {undocumented:?}"
    );
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !example.contains(&format!("{k}:")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in configs/pgward.example.yaml: {missing:?}"
    );
}

/// A default as the docs write it or as `config print` does (`60s` = `1m`, `64KiB` = `65536`).
fn same_default(doc: &str, value: &Value) -> bool {
    let value = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let bytes = |s: &str| -> Option<u64> {
        let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        let factor = match unit {
            "" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => return None,
        };
        Some(digits.parse::<u64>().ok()? * factor)
    };
    doc == value
        || matches!(
            (humantime::parse_duration(doc), humantime::parse_duration(&value)),
            (Ok(a), Ok(b)) if a == b
        )
        || matches!((bytes(doc), bytes(&value)), (Some(a), Some(b)) if a == b)
}

#[test]
fn the_schema_defaults_are_the_built_in_ones_and_the_descriptions_agree() {
    let schema = schema();
    let mut objects = vec![&schema];
    objects.extend(schema["$defs"].as_object().expect("$defs").values());
    let mut compared = 0;
    for object in objects {
        let Some(props) = object.get("properties").and_then(Value::as_object) else {
            continue;
        };
        for (key, prop) in props {
            let description = prop["description"].as_str().unwrap_or_default();
            let Some(doc) = description
                .strip_suffix("`.")
                .and_then(|d| d.rsplit_once("Default: `"))
                .map(|(_, d)| d)
            else {
                continue;
            };
            if let Some(default) = prop.get("default") {
                assert!(
                    same_default(doc, default),
                    "{key}: described default {doc:?}, built-in {default}"
                );
                compared += 1;
            }
        }
    }
    // Every section's scalar keys, not list items' (services, jobs), have one.
    assert!(compared >= 40, "{compared}");
    assert_eq!(
        schema["$defs"]["RawPostgres"]["properties"]["port"]["default"],
        5432
    );
}

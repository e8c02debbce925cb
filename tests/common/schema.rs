//! The JSON Schemas of docs/schemas/, applied to messages that tidewatch
//! produces in the integration tests and to the examples in the docs.
#![allow(dead_code)]

use std::path::PathBuf;

/// The schema file `docs/schemas/<name>.json`.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("docs/schemas/{name}.json"))
}

/// The reasons `json` does not match schema `name` (empty when it does).
pub fn errors(name: &str, json: &serde_json::Value) -> Vec<String> {
    let text = std::fs::read_to_string(path(name))
        .unwrap_or_else(|e| panic!("{}: {e}", path(name).display()));
    let schema: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path(name).display()));
    let v = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{}: not a valid schema: {e}", path(name).display()));
    v.iter_errors(json)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Checks `bytes` against schema `name` and decodes it: a message that
/// tidewatch produced must match its documented schema.
pub fn parse<T: serde::de::DeserializeOwned>(name: &str, bytes: &[u8]) -> T {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)));
    let errs = errors(name, &v);
    assert!(
        errs.is_empty(),
        "a {name} message does not match docs/schemas/{name}.json: {errs:?}\n{v}"
    );
    serde_json::from_value(v).unwrap_or_else(|e| panic!("{name}: {e}"))
}

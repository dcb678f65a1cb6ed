//! The committed CRD and RBAC YAML in `crds/` (and the chart's copy, when
//! there is one) match what the Rust types generate, and every field of every
//! CRD schema carries a description (`kubectl explain` is the documentation
//! users read).

use std::path::PathBuf;

use medembed_operator::crdgen;
use serde_json::Value;

const REGENERATE: &str = "cargo run -p medembed-operator -- crdgen --out-dir crds";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn committed_crds_match_the_types() {
    let files = crdgen::generate().expect("generate");
    let mut dirs = vec![repo().join("crds")];
    let chart = repo().join("charts/medembed/crds");
    if chart.is_dir() {
        dirs.push(chart);
    }
    for (i, dir) in dirs.into_iter().enumerate() {
        for (name, content) in &files {
            // The chart carries the CRDs only (its RBAC is templated).
            if name == "rbac.yaml" && i > 0 {
                continue;
            }
            let path = dir.join(name);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == *content,
                "{} is out of date with the Rust types; regenerate it with `{REGENERATE}`",
                path.display()
            );
        }
    }
}

fn check_descriptions(path: &str, schema: &Value, missing: &mut Vec<String>) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        if let Some(items) = schema.get("items") {
            check_descriptions(&format!("{path}[]"), items, missing);
        }
        if let Some(ap) = schema.get("additionalProperties").filter(|v| v.is_object()) {
            check_descriptions(&format!("{path}{{}}"), ap, missing);
        }
        return;
    };
    for (name, sub) in props {
        let p = format!("{path}.{name}");
        let top = path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&name.as_str());
        let described = sub
            .get("description")
            .and_then(Value::as_str)
            .is_some_and(|d| !d.trim().is_empty());
        if !described && !top {
            missing.push(p.clone());
        }
        check_descriptions(&p, sub, missing);
    }
}

#[test]
fn every_field_has_a_description() {
    for crd in crdgen::crds() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("json");
        let root = &schema["openAPIV3Schema"];
        let mut missing = Vec::new();
        check_descriptions("", root, &mut missing);
        assert!(
            missing.is_empty(),
            "{}: fields without a description: {missing:?}",
            crd.spec.names.kind
        );
        assert!(
            root.get("description").is_some(),
            "{} has no description",
            crd.spec.names.kind
        );
    }
}

#[test]
fn crds_have_short_names_printer_columns_and_cel_rules() {
    for crd in crdgen::crds() {
        let v = &crd.spec.versions[0];
        assert!(crd
            .spec
            .names
            .short_names
            .as_ref()
            .is_some_and(|s| !s.is_empty()));
        assert!(v
            .additional_printer_columns
            .as_ref()
            .is_some_and(|c| c.len() >= 2));
        assert!(v
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some());
        let text = serde_json::to_string(&v.schema).expect("json");
        assert!(
            text.contains("x-kubernetes-validations"),
            "{} has no CEL rules",
            crd.spec.names.kind
        );
    }
}

//! Boundaries the architecture promises, checked on the source (rust-analyzer's "tidy"
//! tests): pure modules stay free of I/O frameworks and of the rest of the crate.

use std::path::Path;

fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap(),
            ));
        }
    }
    out
}

#[test]
fn the_hl7v2_parser_has_no_io_and_no_crate_dependencies() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/hl7v2");
    let files = sources(&dir);
    assert!(!files.is_empty());
    for (path, text) in files {
        for word in ["actix", "tokio", "sqlx", "crate::", "std::net", "std::fs"] {
            assert!(!text.contains(word), "{path} mentions {word}");
        }
    }
}

#[test]
fn only_the_http_adapter_knows_actix() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for (path, text) in sources(&src) {
        let adapter = path.contains("/src/http/") || path.ends_with("/startup.rs");
        if !adapter {
            assert!(
                !text.contains("actix"),
                "{path} uses actix outside the HTTP adapter"
            );
        }
    }
}

#[test]
fn the_mllp_transport_knows_framing_not_hl7_or_the_domain() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/mllp");
    let files = sources(&dir);
    assert!(!files.is_empty());
    for (path, text) in files {
        for word in ["crate::", "hl7v2", "sqlx", "actix"] {
            assert!(!text.contains(word), "{path} mentions {word}");
        }
    }
}

#[test]
fn feed_mapping_and_identity_rules_do_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for file in [
        "hie/adt.rs",
        "hie/notification.rs",
        "hie/tables.rs",
        "identity/rules.rs",
    ] {
        let text = std::fs::read_to_string(src.join(file)).unwrap();
        for word in [
            "tokio",
            "sqlx",
            "actix",
            "crate::store",
            "std::net",
            "std::fs",
        ] {
            assert!(!text.contains(word), "{file} mentions {word}");
        }
    }
}

/// The layers of `src/`, lowest first. A module may name modules of its own layer or
/// below, never above; ARCHITECTURE.md draws the same picture.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "leaves",
        &[
            "hl7v2",
            "mllp",
            "shards",
            "generations",
            "reclaim",
            "strict_json",
            "cache",
            "oauth",
            "telemetry",
            "resource",
            "config",
        ],
    ),
    ("store", &["store"]),
    (
        "domain",
        &[
            "identity",
            "referral",
            "measures",
            "hie",
            "mapping",
            "directory",
            "auth",
        ],
    ),
    ("engine and outbox", &["fhir", "outbox"]),
    (
        "faces and delivery",
        &[
            "cbo",
            "feeds",
            "subscription",
            "connector",
            "ehr",
            "audit",
            "workbench",
        ],
    ),
    ("adapters", &["http", "startup"]),
];

/// Top-level module → the top-level modules its files name through `crate::` paths
/// (comments excluded), with one file that names each.
fn module_graph() -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>
{
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let name = name.strip_suffix(".rs").unwrap_or(&name).to_string();
        if name != "main" && name != "lib" {
            modules.insert(name);
        }
    }
    let mut graph: std::collections::BTreeMap<_, std::collections::BTreeMap<_, _>> = modules
        .iter()
        .map(|m| (m.clone(), Default::default()))
        .collect();
    for (path, text) in sources(&src) {
        let rel = path.split("/src/").last().unwrap().to_string();
        let top = rel.split('/').next().unwrap();
        let top = top.strip_suffix(".rs").unwrap_or(top).to_string();
        if !modules.contains(&top) {
            continue;
        }
        for line in text.lines() {
            let code = line.split("//").next().unwrap();
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                // `crate::x::…` or `crate::{x, y::…}`.
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => group
                        .split(['}', ','])
                        .map(|n| n.trim().split("::").next().unwrap().trim())
                        .collect(),
                    None => vec![
                        rest.split(|c: char| !c.is_alphanumeric() && c != '_')
                            .next()
                            .unwrap(),
                    ],
                };
                for name in names {
                    if name != top && modules.contains(name) {
                        graph
                            .get_mut(&top)
                            .unwrap()
                            .entry(name.to_string())
                            .or_insert_with(|| rel.clone());
                    }
                }
            }
        }
    }
    graph
}

#[test]
fn the_top_level_modules_form_no_cycle() {
    let graph = module_graph();
    // Depth-first search; a grey node met again closes a cycle.
    fn visit<'a>(
        node: &'a str,
        graph: &'a std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
        state: &mut std::collections::BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(node, 1);
        path.push(node);
        for next in graph[node].keys() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let from = path.iter().position(|p| p == next).unwrap();
                    let mut cycle: Vec<&str> = path[from..].to_vec();
                    cycle.push(next);
                    return Some(
                        cycle
                            .windows(2)
                            .map(|w| format!("{} names {} in {}", w[0], w[1], graph[w[0]][w[1]]))
                            .collect(),
                    );
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(next, graph, state, path) {
                        return Some(c);
                    }
                }
            }
        }
        path.pop();
        state.insert(node, 2);
        None
    }
    let mut state = std::collections::BTreeMap::new();
    for node in graph.keys() {
        if !state.contains_key(node.as_str()) {
            let cycle = visit(node, &graph, &mut state, &mut Vec::new());
            assert!(
                cycle.is_none(),
                "the modules form a cycle: {}",
                cycle.unwrap().join("; ")
            );
        }
    }
}

#[test]
fn every_module_names_only_its_layer_and_below() {
    let graph = module_graph();
    let layer_of = |m: &str| {
        LAYERS
            .iter()
            .position(|(_, ms)| ms.contains(&m))
            .unwrap_or_else(|| panic!("src/{m} is in no layer of tests/tidy.rs: place it"))
    };
    for (module, names) in &graph {
        let own = layer_of(module);
        for (named, file) in names {
            let theirs = layer_of(named);
            assert!(
                theirs <= own,
                "{file}: {module} ({}) names {named} ({}), a layer above it",
                LAYERS[own].0,
                LAYERS[theirs].0
            );
        }
    }
}

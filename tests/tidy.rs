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

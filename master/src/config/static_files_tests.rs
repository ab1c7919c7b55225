//! `static-files { ... }`: every key, the defaults, and an error at the right place for each
//! mistake upstream would have ignored.

use super::routes_tests::{assert_error, messages, ok, route};
use zentinel_protocol::config::*;

/// An existing directory to serve (created once per test process).
fn root() -> String {
    let dir = std::env::temp_dir().join(format!("zentinel-sf-parse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create test root");
    std::fs::write(dir.join("file.txt"), b"x").expect("write test file");
    dir.to_string_lossy().into_owned()
}

fn files(lines: &[&str]) -> (StaticFiles, ServiceType) {
    let config = ok(&route(lines));
    let r = &config.proxy.routes[0];
    match &r.action {
        RouteAction::Files(f) => ((**f).clone(), r.service_type),
        other => panic!("not a static-files route: {other:?}"),
    }
}

#[test]
fn every_key_parses() {
    let root = root();
    let root_line = format!("    root \"{root}\"");
    let (f, service) = files(&[
        "static-files {",
        &root_line,
        "    index \"index.html\" \"index.htm\"",
        "    directory-listing #true",
        "    cache-control \"no-cache\"",
        "    compress #false",
        "    fallback \"/app.html\"",
        "}",
    ]);
    assert_eq!(
        f,
        StaticFiles {
            root,
            index: vec!["index.html".into(), "index.htm".into()],
            directory_listing: true,
            cache_control: "no-cache".into(),
            compress: false,
            fallback: Some("app.html".into()),
        }
    );
    assert_eq!(service, ServiceType::Static);
}

#[test]
fn defaults_as_upstream() {
    let root = root();
    let (f, _) = files(&[&format!("static-files {{ root \"{root}\"; }}")]);
    assert_eq!(f.index, vec!["index.html".to_owned()]);
    assert!(!f.directory_listing);
    assert_eq!(f.cache_control, "public, max-age=3600");
    assert!(f.compress, "upstream compresses by default");
    assert_eq!(f.fallback, None);
}

#[test]
fn compress_is_implemented_without_a_warning() {
    let root = root();
    let config = ok(&route(&[&format!(
        "static-files {{ root \"{root}\"; compress #true; }}"
    )]));
    assert!(config.warnings.is_empty(), "{}", messages(&config.warnings));
}

#[test]
fn mistakes_are_located() {
    let root = root();
    let r = format!("root \"{root}\"");
    assert_error(
        &["static-files {", "    index \"i.html\"", "}"],
        0,
        "static-files",
        "static-files",
        "needs a `root`",
    );
    assert_error(
        &["static-files {", "    root \"relative/dir\"", "}"],
        1,
        "\"relative",
        "root",
        "absolute path",
    );
    assert_error(
        &["static-files {", "    root \"/no/such/zentinel/dir\"", "}"],
        1,
        "\"/no",
        "root",
        "/no/such/zentinel/dir",
    );
    let file_root = format!("    root \"{root}/file.txt\"");
    assert_error(
        &["static-files {", &file_root, "}"],
        1,
        "\"",
        "root",
        "not a directory",
    );
    let root_line = format!("    {r}");
    assert_error(
        &["static-files {", &root_line, "    indexes \"a\"", "}"],
        2,
        "indexes",
        "indexes",
        "(did you mean `index`?); accepted: `root`, `index`",
    );
    assert_error(
        &["static-files {", &root_line, "    mime-types { }", "}"],
        2,
        "mime-types",
        "mime-types",
        "not supported",
    );
    assert_error(
        &[
            "static-files {",
            &root_line,
            "    directory-listing \"yes\"",
            "}",
        ],
        2,
        "\"yes\"",
        "directory-listing",
        "boolean",
    );
    assert_error(
        &["static-files {", &root_line, "    index \"a/b.html\"", "}"],
        2,
        "\"a/b",
        "index",
        "file name",
    );
    assert_error(
        &[
            "static-files {",
            &root_line,
            "    fallback \"../x.html\"",
            "}",
        ],
        2,
        "\"../",
        "fallback",
        "inside `root`",
    );
    assert_error(
        &["static-files {", &root_line, "    cache-control \"\"", "}"],
        2,
        "\"\"",
        "cache-control",
        "non-empty",
    );
    assert_error(
        &["static-files {", &root_line, "    root \"/tmp\"", "}"],
        2,
        "root",
        "root",
        "duplicate `root`",
    );
    assert_error(
        &["upstream \"u\"", &format!("static-files {{ {r}; }}")],
        1,
        "static-files",
        "static-files",
        "already has an action",
    );
}

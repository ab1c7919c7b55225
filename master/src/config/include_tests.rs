//! `include`: files spliced in place, located diagnostics per file, the source recorded for an
//! upgrade and parsed again without the disk.

use std::path::{Path, PathBuf};

use super::*;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "zentinel-include-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("routes")).unwrap();
        Dir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text(diagnostics: &[ConfigDiagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

const LISTENERS: &str =
    "listeners {\n    listener \"http\" {\n        address \"127.0.0.1:8080\"\n        default-route \"b\"\n    }\n}\n";

#[test]
fn includes_splice_files_and_globs_in_sorted_order() {
    let dir = Dir::new("splice");
    dir.write("listeners.kdl", LISTENERS);
    dir.write(
        "routes/b.kdl",
        "routes {\n    route \"b\" {\n        static-response status=200 body=\"b\"\n    }\n}\n",
    );
    dir.write(
        "routes/a.kdl",
        "routes {\n    route \"a\" {\n        matches { path \"/a\"; }\n        static-response status=200 body=\"a\"\n    }\n}\n",
    );
    let main = dir.write(
        "zentinel.kdl",
        "system { worker-threads 2; }\ninclude \"listeners.kdl\"\ninclude \"routes/*.kdl\"\n",
    );
    let loaded = load_full_config(Some(&main)).unwrap_or_else(|d| panic!("{}", text(&d)));
    let routes: Vec<&str> = loaded
        .config
        .proxy
        .routes
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    // Same priority: file order, which is the sorted glob order.
    assert_eq!(routes, ["a", "b"]);
    assert_eq!(loaded.config.proxy.system.worker_processes, 2);
    let files: Vec<String> = loaded
        .source
        .files
        .iter()
        .map(|f| {
            Path::new(&f.path)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(files, ["zentinel.kdl", "listeners.kdl", "a.kdl", "b.kdl"]);

    // A successor parses the recorded text, never the disk: remove the files, parse again.
    let source = loaded.source.clone();
    drop(dir);
    let again = parse_config_source(source).unwrap_or_else(|d| panic!("{}", text(&d)));
    assert_eq!(again.config.proxy, loaded.config.proxy);
}

#[test]
fn diagnostics_name_the_included_file_and_its_line() {
    let dir = Dir::new("located");
    let included = dir.write(
        "routes/bad.kdl",
        "routes {\n    route \"b\" {\n        priority \"urgent\"\n    }\n}\n",
    );
    let main = dir.write(
        "zentinel.kdl",
        &format!("{LISTENERS}include \"routes/bad.kdl\"\n"),
    );
    let errs = load_full_config(Some(&main)).unwrap_err();
    let all = text(&errs);
    assert!(
        all.contains(&format!("{}:3:18: `priority`", included.display())),
        "{all}"
    );
}

#[test]
fn include_problems_are_reported() {
    let dir = Dir::new("problems");
    // A cycle: a.kdl includes the main file back.
    dir.write("a.kdl", "include \"zentinel.kdl\"\n");
    let main = dir.write(
        "zentinel.kdl",
        &format!("{LISTENERS}routes {{ route \"b\" {{ static-response status=200; }} }}\ninclude \"a.kdl\"\n"),
    );
    let errs = load_full_config(Some(&main)).unwrap_err();
    assert!(
        text(&errs).contains("is already included (each file may be included once)"),
        "{}",
        text(&errs)
    );

    // A missing file or an empty glob is a warning, as upstream; a non-string is an error.
    let main = dir.write(
        "zentinel.kdl",
        &format!("{LISTENERS}routes {{ route \"b\" {{ static-response status=200; }} }}\ninclude \"missing.kdl\"\ninclude \"none/*.kdl\"\n"),
    );
    let loaded = load_full_config(Some(&main)).unwrap_or_else(|d| panic!("{}", text(&d)));
    let warnings = text(&loaded.config.warnings);
    assert!(
        warnings.contains(":8:1: `include`: include \"missing.kdl\" matches no file"),
        "{warnings}"
    );
    assert!(
        warnings.contains(":9:1: `include`: include \"none/*.kdl\" matches no file"),
        "{warnings}"
    );
    let main = dir.write("zentinel.kdl", &format!("{LISTENERS}include 42\n"));
    let errs = load_full_config(Some(&main)).unwrap_err();
    assert!(
        text(&errs).contains(":7:1: `include`: `include` takes a file name or a glob"),
        "{}",
        text(&errs)
    );
}

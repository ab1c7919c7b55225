//! The configuration that crosses a binary upgrade is the text the running master was started
//! or reloaded with, includes and all: a file edited on disk but not reloaded does not change
//! what the new master runs; a reload afterwards does.

use std::fs;

use zentinel_tests::*;

#[test]
fn upgrade_runs_the_running_text_not_the_edited_include() {
    let mut files = TempFiles::default();
    let routes = files.add(temp_path("routes.kdl"));
    let route = |body: &str| {
        format!("routes {{\n    route \"r\" {{\n        static-response status=200 body=\"{body}\"\n    }}\n}}\n")
    };
    fs::write(&routes, route("v1")).unwrap();
    let port = free_port();
    let config = format!(
        "system {{\n    worker-threads 2\n}}\nlisteners {{\n    listener \"http\" {{\n        \
         address \"127.0.0.1:{port}\"\n        default-route \"r\"\n    }}\n}}\ninclude \"{}\"\n",
        routes.display()
    );
    let z = Zentinel::start(&config);
    let body = |z: &Zentinel| z.client().get("/", "source.test").body_str();
    assert_eq!(body(&z), "v1");

    // Edited on disk, not reloaded: the running configuration is still v1.
    fs::write(&routes, route("v2")).unwrap();
    let copy = files.add(binary_copy("config-source"));
    let out = z.ctl(&[
        "upgrade",
        "--rolling",
        "--binary",
        &copy.display().to_string(),
    ]);
    out.assert_success("rolling upgrade with an edited include");
    assert!(
        out.stdout
            .contains("accepts the running configuration's text"),
        "the pre-flight checked something else: {out}"
    );
    assert_ne!(z.current_master_pid(), z.pid);
    assert_eq!(
        body(&z),
        "v1",
        "the new master did not run the handed-over text"
    );

    // A reload reads the files again.
    z.ctl(&["reload"]).assert_success("reload");
    assert_eq!(body(&z), "v2");
}

//! `error-pages { … }` on routes: every key, templates read at load, located errors.

use super::routes_tests::{assert_error, doc, full, messages, ok, route};
use zentinel_protocol::config::*;

fn pages(lines: &[&str]) -> ErrorPages {
    let config = ok(&route(lines));
    config.proxy.routes[0]
        .extras
        .as_ref()
        .and_then(|e| e.error_pages.clone())
        .expect("error pages")
}

#[test]
fn every_key_parses_and_templates_are_read() {
    let dir = std::env::temp_dir().join(format!("zentinel-error-pages-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("404.html"), "<h1>{{status}}</h1>").expect("template");
    std::fs::write(dir.join("502.html"), "bad gateway page").expect("template");
    let dir_s = dir.display().to_string();
    let p = pages(&[
        "upstream \"u\"",
        "error-pages {",
        "    default-format \"json\"",
        &format!("    template-dir \"{dir_s}\""),
        "    include-stack-trace #false",
        "    pages {",
        "        \"404\" { format \"html\"; template \"404.html\"; message \"Nothing here\"; }",
        "        \"400\" { message \"Bad input\"; headers { \"X-Error-Code\" \"INVALID_INPUT\"; } }",
        "    }",
        &format!("    \"502\" \"{dir_s}/502.html\""),
        "}",
    ]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(p.default_format, Some(ErrorFormat::Json));
    let statuses: Vec<u16> = p.pages.iter().map(|p| p.status).collect();
    assert_eq!(statuses, [400, 404, 502], "sorted by status");
    assert_eq!(
        p.pages[0].headers,
        [("X-Error-Code".to_owned(), "INVALID_INPUT".to_owned())]
    );
    assert_eq!(p.pages[0].format, None);
    assert_eq!(p.pages[1].template.as_deref(), Some("<h1>{{status}}</h1>"));
    assert_eq!(p.pages[1].message.as_deref(), Some("Nothing here"));
    assert_eq!(p.pages[2].format, Some(ErrorFormat::Html));
    assert_eq!(p.pages[2].template.as_deref(), Some("bad gateway page"));
}

#[test]
fn stack_traces_are_warned_about() {
    let config = ok(&route(&[
        "upstream \"u\"",
        "error-pages { include-stack-trace #true; }",
    ]));
    let w = messages(&config.warnings);
    assert!(w.contains("`include-stack-trace` has no effect"), "{w}");
}

#[test]
fn located_errors() {
    assert_error(
        &["upstream \"u\"", "error-pages { default-format \"yaml\"; }"],
        1,
        "\"yaml\"",
        "default-format",
        "accepted: \"html\", \"json\", \"text\", \"xml\"",
    );
    assert_error(
        &[
            "upstream \"u\"",
            "error-pages { pages { \"200\" { format \"html\"; } } }",
        ],
        1,
        "\"200\"",
        "200",
        "one block per status code from 400 to 599",
    );
    assert_error(
        &[
            "upstream \"u\"",
            "error-pages { pages { \"404\" { colour \"red\"; } } }",
        ],
        1,
        "colour",
        "colour",
        "accepted: `format`, `template`, `message`, `headers`",
    );
    assert_error(
        &[
            "upstream \"u\"",
            "error-pages { pages { \"404\" { template \"/nonexistent/404.html\"; } } }",
        ],
        1,
        "\"/nonexistent",
        "template",
        "\"/nonexistent/404.html\": No such file",
    );
    assert_error(
        &[
            "upstream \"u\"",
            "error-pages { pages { \"404\" { message \"a\"; }; \"404\" { message \"b\"; } } }",
        ],
        1,
        "\"404\" { message \"b",
        "404",
        "a second page for status 404",
    );
    assert_error(
        &["upstream \"u\"", "error-pages { defaultformat \"json\"; }"],
        1,
        "defaultformat",
        "defaultformat",
        "did you mean `default-format`",
    );
}

#[test]
fn relative_templates_resolve_against_the_config_file() {
    let source = doc(&route(&[
        "upstream \"u\"",
        "error-pages { \"404\" \"missing-page.html\"; }",
    ]));
    let Err(errs) = full(&source) else {
        panic!("a missing template must fail");
    };
    let m = messages(&errs);
    // test.kdl is relative: the template is looked up beside it, absolute in the message.
    assert!(m.contains("missing-page.html\": No such file"), "{m}");
    assert!(
        m.contains(&std::env::current_dir().expect("cwd").display().to_string()),
        "{m}"
    );
}

use super::cors::origin_allowed;
use super::redirect::{modify_path, rewrite_head, split_target};
use super::*;
use zentinel_protocol::config::PathModifier;

fn chain(prefixes: &[&str], regexes: &[&str]) -> Chain {
    Chain {
        route: "r".into(),
        filters: Vec::new(),
        prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
        regexes: regexes
            .iter()
            .map(|r| regex::Regex::new(r).expect("test regex"))
            .collect(),
    }
}

#[test]
fn origins_exact_wildcard_and_patterns() {
    let allowed = vec![
        "https://app.example.com".to_owned(),
        "https://*.example.org".to_owned(),
    ];
    assert!(origin_allowed("https://app.example.com", &allowed));
    assert!(origin_allowed("HTTPS://APP.example.com", &allowed));
    assert!(!origin_allowed("https://evil.com", &allowed));
    assert!(origin_allowed("https://a.b.example.org", &allowed));
    // The pattern needs something where the star is, and never spans a path or scheme.
    assert!(!origin_allowed("https://.example.org", &allowed));
    assert!(!origin_allowed("https://example.org", &allowed));
    assert!(!origin_allowed("http://a.example.org", &allowed));
    assert!(!origin_allowed("https://x/.example.org", &allowed));
    assert!(origin_allowed("null", &["*".to_owned()]));
}

#[test]
fn targets_split_into_path_and_query() {
    assert_eq!(split_target("/a/b?x=1"), ("/a/b", Some("x=1")));
    assert_eq!(split_target("/a"), ("/a", None));
    assert_eq!(split_target("?q"), ("/", Some("q")));
    assert_eq!(split_target("http://h:8/p?q#f"), ("/p", Some("q")));
    assert_eq!(split_target("http://h"), ("/", None));
}

#[test]
fn prefix_replacement_keeps_the_rest_of_the_path() {
    let c = chain(&["/old", "/old/deeper/"], &[]);
    let m = PathModifier::ReplacePrefixMatch("/new".into());
    assert_eq!(modify_path(&m, "/old/x/y", &c), "/new/x/y");
    assert_eq!(modify_path(&m, "/old/deeper/z", &c), "/new/z");
    assert_eq!(modify_path(&m, "/old", &c), "/new/");
    let root = PathModifier::ReplacePrefixMatch("/".into());
    assert_eq!(modify_path(&root, "/old/x", &c), "/x");
}

#[test]
fn full_path_replacement_expands_regex_captures() {
    let c = chain(&[], &[r"^/users/(?P<id>[0-9]+)/posts/([0-9]+)$"]);
    let m = PathModifier::ReplaceFullPath("/v2/posts/$2?user=${id}".into());
    assert_eq!(
        modify_path(&m, "/users/7/posts/42", &c),
        "/v2/posts/42?user=7"
    );
    let plain = PathModifier::ReplaceFullPath("/fixed".into());
    assert_eq!(modify_path(&plain, "/users/7/posts/42", &c), "/fixed");
    // No regex matched: the value is taken literally.
    assert_eq!(modify_path(&m, "/other", &c), "/v2/posts/$2?user=${id}");
}

#[test]
fn upstream_head_target_and_host_are_replaced() {
    let mut head = b"GET /old?x=1 HTTP/1.1\r\nHost: a.example\r\nX-A: 1\r\n\r\n".to_vec();
    rewrite_head(&mut head, Some("/new/path?x=1"), Some("b.internal"));
    assert_eq!(
        String::from_utf8_lossy(&head),
        "GET /new/path?x=1 HTTP/1.1\r\nHost: b.internal\r\nX-A: 1\r\n\r\n"
    );
}

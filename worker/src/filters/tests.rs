use super::cors::origin_allowed;
use super::head_edit::{find_lf, HeadEdit};
use super::redirect::{modify_path, rewrite_target, split_target, with_query};
use super::*;
use zentinel_protocol::config::{HeaderModifications, PathModifier};

fn chain(prefixes: &[&str], regexes: &[&str]) -> Chain {
    Chain {
        route: "r".into(),
        filters: Vec::new(),
        request_edits: false,
        response_edits: false,
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
    // Only host characters stand for the star: no port, user info or other authority.
    assert!(!origin_allowed("https://a.example.org:8443", &allowed));
    assert!(!origin_allowed("https://evil.com@a.example.org", &allowed));
    assert!(!origin_allowed("https://a:1.example.org", &allowed));
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
fn upstream_head_target_is_replaced() {
    let mut head = b"GET /old?x=1 HTTP/1.1\r\nHost: a.example\r\nX-A: 1\r\n\r\n".to_vec();
    rewrite_target(&mut head, "/new/path?x=1");
    assert_eq!(
        String::from_utf8_lossy(&head),
        "GET /new/path?x=1 HTTP/1.1\r\nHost: a.example\r\nX-A: 1\r\n\r\n"
    );
}

fn mods(
    rename: &[(&str, &str)],
    set: &[(&str, &str)],
    add: &[(&str, &str)],
    remove: &[&str],
) -> HeaderModifications {
    let pairs = |l: &[(&str, &str)]| -> Vec<(String, String)> {
        l.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    };
    HeaderModifications {
        rename: pairs(rename),
        set: pairs(set),
        add: pairs(add),
        remove: remove.iter().map(|r| (*r).to_owned()).collect(),
    }
}

/// Several filters' edits in one pass give what one `header_policy::apply` per filter gives.
#[test]
fn one_pass_edits_match_one_apply_per_filter() {
    let original =
        b"HTTP/1.1 200 OK\r\nX-Backend: b\r\nx-tag: 1\r\nX-Old: o\r\nX-Tag: 2\r\n\r\nbody".to_vec();
    let filters = [
        mods(
            &[("X-Old", "X-Mid")],
            &[("x-TAG", "one")],
            &[("X-Add", "a")],
            &["X-Backend"],
        ),
        mods(
            &[("X-Mid", "X-New")],
            &[("X-Add", "b")],
            &[("X-Add", "c")],
            &[],
        ),
        mods(&[], &[], &[], &["X-Missing"]),
    ];
    let prefix = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut expected = prefix.to_vec();
    expected.extend_from_slice(&original);
    for m in &filters {
        crate::http::apply_header_mods(m, &mut expected, prefix.len());
    }
    let mut head = prefix.to_vec();
    head.extend_from_slice(&original);
    let mut edit = HeadEdit::new(&head, prefix.len()).expect("a head");
    for m in &filters {
        edit.apply(&head, m);
    }
    edit.finish(&mut head);
    assert_eq!(
        String::from_utf8_lossy(&head),
        String::from_utf8_lossy(&expected)
    );
    assert_eq!(
        String::from_utf8_lossy(&head[prefix.len()..]),
        "HTTP/1.1 200 OK\r\nx-TAG: one\r\nX-New: o\r\nX-Add: b\r\nX-Add: c\r\n\r\nbody"
    );
}

#[test]
fn an_unchanged_head_is_left_alone_and_tokens_are_found() {
    let head = b"HTTP/1.1 200 OK\r\nVary: Accept-Encoding, origin\r\n\r\nVary: *\r\n".to_vec();
    let mut copy = head.clone();
    let mut edit = HeadEdit::new(&copy, 0).expect("a head");
    assert!(edit.has_token(&copy, "vary", &["origin"]));
    assert!(
        !edit.has_token(&copy, "vary", &["*"]),
        "a body line is no field"
    );
    assert!(!edit.has_token(&copy, "x-vary", &["origin"]));
    edit.remove(&copy, "X-Absent");
    edit.finish(&mut copy);
    assert_eq!(copy, head);
    assert!(HeadEdit::new(b"no line end", 0).is_none());
}

#[test]
fn the_request_query_follows_the_new_path() {
    assert_eq!(with_query("/new".into(), Some("a=1")), "/new?a=1");
    assert_eq!(
        with_query("/v2?user=7".into(), Some("a=1")),
        "/v2?user=7&a=1"
    );
    assert_eq!(with_query("/new".into(), None), "/new");
    assert_eq!(with_query("/new".into(), Some("")), "/new");
}

#[test]
fn line_feeds_are_found_at_every_offset() {
    for len in 0..40 {
        for lf in 0..=len {
            let mut text = vec![b'a'; len];
            // Bytes that differ from `\n` by one bit, and 0x80, around it.
            for (i, b) in text.iter_mut().enumerate() {
                *b = [b'\x0b', b'\x08', 0x80, b'\r', 0x8a][i % 5];
            }
            let want = (lf < len).then(|| {
                text[lf] = b'\n';
                lf
            });
            if let Some(w) = want {
                // A second one later is not the first.
                if w + 3 < len {
                    text[w + 3] = b'\n';
                }
            }
            assert_eq!(find_lf(&text), want, "len {len}, lf {lf}: {text:?}");
        }
    }
}

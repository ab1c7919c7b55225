//! Head storage: borrowed fields, pooled storage, inline strings.

use super::*;
use crate::http::codec::head::{free_stores, SMALL_STR_INLINE, STORE_KEEP_BYTES};

// ---------------------------------------------------------------------------------------------
// Head storage: borrowed fields, pooled storage, inline strings

#[test]
fn head_storage_is_reused_after_a_head_is_dropped() {
    let buf = b"GET /a HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\n\r\n";
    let first = req(buf);
    let storage = first.store.bytes_ptr();
    drop(first);
    let second = req(buf);
    assert_eq!(
        second.store.bytes_ptr(),
        storage,
        "the dropped head's storage is taken again"
    );
    // A response takes from the same free list.
    let second_storage = second.store.bytes_ptr();
    drop(second);
    let r = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false);
    assert_eq!(r.store.bytes_ptr(), second_storage);
    assert_eq!(r.reason(), "OK");
    assert_eq!(r.headers().len(), 1);
}

#[test]
fn oversized_head_storage_is_freed_not_kept() {
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(STORE_KEEP_BYTES)
    );
    let roomy = Limits {
        max_header_size_bytes: 64 * 1024,
        ..limits()
    };
    let Ok(Parsed::Complete(h)) = parse_request(big.as_bytes(), &roomy) else {
        panic!("a 9 KiB head within a 64 KiB limit is accepted");
    };
    assert_eq!(
        h.headers().nth(1).map(|x| x.value.len()),
        Some(STORE_KEEP_BYTES)
    );
    let before = free_stores();
    drop(h);
    assert_eq!(free_stores(), before);
}

#[test]
fn head_parts_survive_the_input_buffer() {
    let mut buf = b"PATCH /x?y HTTP/1.1\r\nHost: Example.COM\r\nX-A: a b\r\n\r\n".to_vec();
    let h = req(&buf);
    let r = resp(
        b"HTTP/1.1 404 Not Here\r\nX-B: c\r\nContent-Length: 0\r\n\r\n",
        false,
    );
    // The session consumes its buffer right after parsing: the head must not depend on it.
    buf.fill(b'!');
    assert_eq!(h.method, "PATCH");
    assert_eq!(h.target(), "/x?y");
    assert_eq!(h.host.as_deref(), Some("example.com"));
    let fields: Vec<(&[u8], &[u8])> = h.headers().map(|x| (x.name, x.value)).collect();
    assert_eq!(
        fields,
        vec![
            (&b"Host"[..], &b"Example.COM"[..]),
            (&b"X-A"[..], &b"a b"[..])
        ]
    );
    assert_eq!(r.reason(), "Not Here");
    let cloned = h.clone();
    drop(h);
    assert_eq!(cloned.target(), "/x?y");
    assert_eq!(cloned.headers().len(), 2);
}

#[test]
fn methods_and_hosts_of_any_length() {
    let long_method = "M".repeat(SMALL_STR_INLINE + 5);
    let long_host = format!("{}.Example", "A".repeat(SMALL_STR_INLINE));
    let buf = format!("{long_method} / HTTP/1.1\r\nHost: {long_host}:81\r\n\r\n");
    let h = req(buf.as_bytes());
    assert_eq!(h.method, long_method.as_str());
    assert_eq!(
        h.host.as_deref(),
        Some(long_host.to_ascii_lowercase().as_str())
    );
    assert!(!h.is_head());
    // Methods are case-sensitive; `is_head` compared ignoring case before, and still does.
    assert!(req(b"head / HTTP/1.1\r\nHost: a\r\n\r\n").is_head());
    assert!(req(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").is_head());
    assert_eq!(req(b"get / HTTP/1.1\r\nHost: a\r\n\r\n").method, "get");
    let exact = "h".repeat(SMALL_STR_INLINE);
    assert_eq!(
        SmallStr::lowercase(&exact.to_ascii_uppercase()).as_str(),
        exact
    );
    assert_eq!(format!("{:?}", SmallStr::new("GET")), "\"GET\"");
}

//! `BodyTracker`: Content-Length and chunked bodies, whole, split anywhere and byte by byte,
//! and the chunked framing errors.

use super::*;
use crate::http::codec::body::{MAX_CHUNK_EXT, MAX_TRAILERS};

// ---------------------------------------------------------------------------------------------
// BodyTracker

#[test]
fn tracker_content_length() {
    let mut t = BodyTracker::new(BodyFraming::ContentLength(5), 100);
    assert!(!t.is_complete());
    assert_eq!(
        t.feed(b"").unwrap(),
        BodyProgress {
            consumed: 0,
            complete: false
        }
    );
    assert_eq!(
        t.feed(b"he").unwrap(),
        BodyProgress {
            consumed: 2,
            complete: false
        }
    );
    assert_eq!(
        t.feed(b"lloGET /").unwrap(),
        BodyProgress {
            consumed: 3,
            complete: true
        }
    );
    assert!(t.is_complete());
    assert_eq!(
        t.feed(b"more").unwrap(),
        BodyProgress {
            consumed: 0,
            complete: true
        }
    );
    assert_eq!(t.framing(), BodyFraming::ContentLength(5));
}

#[test]
fn tracker_content_length_above_max() {
    let mut t = BodyTracker::new(BodyFraming::ContentLength(101), 100);
    assert_eq!(t.feed(b"x"), Err(BodyError::TooLarge(100)));
    assert!(!t.is_complete());
}

#[test]
fn tracker_empty_and_until_close() {
    let mut t = BodyTracker::new(BodyFraming::Empty, 0);
    assert!(t.is_complete());
    assert_eq!(
        t.feed(b"GET").unwrap(),
        BodyProgress {
            consumed: 0,
            complete: true
        }
    );
    assert_eq!(
        t.feed(b"").unwrap(),
        BodyProgress {
            consumed: 0,
            complete: true
        }
    );

    let mut t = BodyTracker::new(BodyFraming::UntilClose, u64::MAX);
    assert!(t.is_complete());
    assert_eq!(
        t.feed(b"abc").unwrap(),
        BodyProgress {
            consumed: 3,
            complete: false
        }
    );
    assert_eq!(
        t.feed(b"").unwrap(),
        BodyProgress {
            consumed: 0,
            complete: false
        }
    );

    let mut t = BodyTracker::new(BodyFraming::UntilClose, 4);
    assert_eq!(t.feed(b"abcd").unwrap().consumed, 4);
    assert_eq!(t.feed(b"e"), Err(BodyError::TooLarge(4)));
}

const VALID_CHUNKED: &[&[u8]] = &[
    b"0\r\n\r\n",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"A\r\n0123456789\r\n0\r\n\r\n",
    b"a\r\n0123456789\r\n0000\r\n\r\n",
    b"005\r\nhello\r\n0\r\n\r\n",
    b"5;name=value\r\nhello\r\n0;last\r\n\r\n",
    b"5 ;name=\"quoted value\"\r\nhello\r\n0\r\n\r\n",
    b"5\t; a = b\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX-Sum: abc\r\nX-Other: d\te\r\n\r\n",
    b"4\r\n\r\n\r\n\r\n0\r\n\r\n",
    b"0000000000000001\r\nx\r\n0\r\n\r\n",
];

fn feed_all(t: &mut BodyTracker, parts: &[&[u8]]) -> Result<(usize, bool), BodyError> {
    let mut consumed = 0;
    let mut complete = false;
    for p in parts {
        let r = t.feed(p)?;
        assert!(r.consumed <= p.len());
        consumed += r.consumed;
        if r.complete {
            complete = true;
            break;
        }
        assert_eq!(
            r.consumed,
            p.len(),
            "incomplete body must consume all input"
        );
    }
    Ok((consumed, complete))
}

#[test]
fn tracker_chunked_valid_messages_whole_and_byte_by_byte() {
    for msg in VALID_CHUNKED {
        let name = String::from_utf8_lossy(msg);
        // Whole, followed by the next message.
        let mut buf = msg.to_vec();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut t = BodyTracker::new(BodyFraming::Chunked, 1000);
        let p = t.feed(&buf).unwrap();
        assert_eq!(
            p,
            BodyProgress {
                consumed: msg.len(),
                complete: true
            },
            "{name}"
        );
        assert!(t.is_complete());
        // One byte at a time.
        let mut t = BodyTracker::new(BodyFraming::Chunked, 1000);
        for (i, b) in msg.iter().enumerate() {
            assert!(!t.is_complete(), "{name} complete too early at {i}");
            let p = t.feed(std::slice::from_ref(b)).unwrap();
            assert_eq!(p.consumed, 1, "{name} at {i}");
            assert_eq!(p.complete, i == msg.len() - 1, "{name} at {i}");
        }
        assert!(t.is_complete());
        assert_eq!(
            t.feed(b"G").unwrap(),
            BodyProgress {
                consumed: 0,
                complete: true
            }
        );
    }
}

fn chunk_error(msg: &[u8]) -> BodyError {
    let mut t = BodyTracker::new(BodyFraming::Chunked, 1 << 20);
    let whole = t.feed(msg);
    // Byte by byte must fail the same way.
    let mut t2 = BodyTracker::new(BodyFraming::Chunked, 1 << 20);
    let mut split = Ok(());
    for b in msg {
        if let Err(e) = t2.feed(std::slice::from_ref(b)) {
            split = Err(e);
            break;
        }
    }
    match (whole, split) {
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "{:?}", String::from_utf8_lossy(msg));
            a
        }
        other => panic!(
            "expected an error for {:?}, got {other:?}",
            String::from_utf8_lossy(msg)
        ),
    }
}

#[test]
fn tracker_chunked_invalid() {
    for bad in [
        &b"g\r\n"[..],
        b"\r\n",
        b" 5\r\nhello\r\n",
        b"-5\r\n",
        b"+5\r\n",
        b"0x5\r\nhello\r\n",
        b"5\nhello\r\n",
        b"5\r\r\nhello\r\n",
        b"5 \r\nhello\r\n",
        b"5 x\r\nhello\r\n",
        b"5\r\nhelloX\r\n",
        b"5\r\nhello\rX",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhello\r\r",
        b"5;a\x00b\r\nhello\r\n",
        b"5;a\nb\r\nhello\r\n",
        b"5;a\rb\r\nhello\r\n",
        b"5;a\x7fb\r\n",
        b"0\r\nX: a\nY: b\r\n\r\n",
        b"0\r\nX: a\x00\r\n\r\n",
        b"0\r\n\n",
        b"0\r\n\rX",
        b"0\r\nX: a\r\n folded\r\n\r\n",
        b"0\r\nX: a\rX",
        b"11111111111111111\r\n",
        b"fffffffffffffffff\r\n",
        b"00000000000000000\r\n",
    ] {
        let e = chunk_error(bad);
        assert!(
            matches!(e, BodyError::InvalidChunk(_)),
            "{:?} -> {e:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn tracker_chunked_size_limit() {
    let mut t = BodyTracker::new(BodyFraming::Chunked, 8);
    assert_eq!(t.feed(b"5\r\nhello\r\n").unwrap().consumed, 10);
    assert_eq!(t.feed(b"4\r\n"), Err(BodyError::TooLarge(8)));
    // The error is sticky.
    assert_eq!(t.feed(b"0\r\n\r\n"), Err(BodyError::TooLarge(8)));
    assert!(!t.is_complete());

    let mut t = BodyTracker::new(BodyFraming::Chunked, 8);
    assert!(
        t.feed(b"3\r\nabc\r\n5\r\nhello\r\n0\r\n\r\n")
            .unwrap()
            .complete
    );
    // The largest size fits, and its data is then forwarded as it comes.
    let mut t = BodyTracker::new(BodyFraming::Chunked, u64::MAX);
    assert_eq!(t.feed(b"ffffffffffffffff\r\nabc").unwrap().consumed, 21);
    assert!(!t.is_complete());
}

#[test]
fn tracker_chunked_extension_and_trailer_bounds() {
    let mut long_ext = b"1;".to_vec();
    long_ext.extend(std::iter::repeat_n(b'a', MAX_CHUNK_EXT + 1));
    long_ext.extend_from_slice(b"\r\n");
    assert_eq!(
        chunk_error(&long_ext),
        BodyError::InvalidChunk("chunk extension too long")
    );
    let mut long_trailer = b"0\r\nX: ".to_vec();
    long_trailer.extend(std::iter::repeat_n(b'a', MAX_TRAILERS + 1));
    long_trailer.extend_from_slice(b"\r\n\r\n");
    assert_eq!(
        chunk_error(&long_trailer),
        BodyError::InvalidChunk("trailers too large")
    );
}

#[test]
fn tracker_chunked_truncated_is_not_complete() {
    for prefix in [
        &b"5\r\nhel"[..],
        b"5\r\nhello\r\n",
        b"0\r\n",
        b"0\r\n\r",
        b"0\r\nX: y\r\n",
    ] {
        let mut t = BodyTracker::new(BodyFraming::Chunked, 100);
        let p = t.feed(prefix).unwrap();
        assert_eq!(
            p,
            BodyProgress {
                consumed: prefix.len(),
                complete: false
            }
        );
        assert!(!t.is_complete());
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests

#[derive(Debug, Clone)]
struct ChunkSpec {
    data: Vec<u8>,
    ext: Option<String>,
    upper: bool,
    zeros: usize,
}

fn chunk_spec() -> impl Strategy<Value = ChunkSpec> {
    (
        proptest::collection::vec(any::<u8>(), 1..300),
        proptest::option::of("[a-z]{1,8}(=[a-z0-9]{1,8})?"),
        any::<bool>(),
        0usize..3,
    )
        .prop_map(|(data, ext, upper, zeros)| ChunkSpec {
            data,
            ext,
            upper,
            zeros,
        })
}

fn encode_chunked(chunks: &[ChunkSpec], trailers: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        let size = if c.upper {
            format!("{:X}", c.data.len())
        } else {
            format!("{:x}", c.data.len())
        };
        out.extend(std::iter::repeat_n(b'0', c.zeros));
        out.extend_from_slice(size.as_bytes());
        if let Some(e) = &c.ext {
            out.push(b';');
            out.extend_from_slice(e.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&c.data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    for t in trailers {
        out.extend_from_slice(t.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[test]
fn tracker_feed_decoded() {
    let msg = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Sum: 9\r\n\r\nNEXT";
    let mut t = BodyTracker::new(BodyFraming::Chunked, u64::MAX);
    let mut out = Vec::new();
    let p = t.feed_decoded(msg, &mut out).unwrap();
    assert_eq!(out, b"hello 0123456789");
    assert_eq!(p.consumed, msg.len() - 4);
    assert!(p.complete);

    // Errors are the tracker's errors, and stay.
    let mut t = BodyTracker::new(BodyFraming::Chunked, u64::MAX);
    let mut out = Vec::new();
    assert!(t.feed_decoded(b"2\r\nabX", &mut out).is_err());
    assert!(t.feed_decoded(b"\r\n", &mut out).is_err());

    // Other framings pass the consumed bytes through unchanged.
    let mut t = BodyTracker::new(BodyFraming::ContentLength(3), u64::MAX);
    let mut out = Vec::new();
    let p = t.feed_decoded(b"abcdef", &mut out).unwrap();
    assert_eq!(
        (p.consumed, p.complete, out.as_slice()),
        (3, true, &b"abc"[..])
    );
    let mut t = BodyTracker::new(BodyFraming::UntilClose, u64::MAX);
    let mut out = Vec::new();
    t.feed_decoded(b"xyz", &mut out).unwrap();
    assert_eq!(out, b"xyz");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn chunked_bodies_end_exactly_where_they_end(
        chunks in proptest::collection::vec(chunk_spec(), 0..6),
        trailers in proptest::collection::vec("X-[A-Za-z]{1,6}: [ -~]{0,20}", 0..3),
        cuts in proptest::collection::vec(0usize..4000, 0..12),
        next in proptest::collection::vec(any::<u8>(), 0..20),
    ) {
        let msg = encode_chunked(&chunks, &trailers);
        let mut buf = msg.clone();
        buf.extend_from_slice(&next);
        let decoded: usize = chunks.iter().map(|c| c.data.len()).sum();

        let mut t = BodyTracker::new(BodyFraming::Chunked, decoded as u64);
        let (consumed, complete) = feed_all(&mut t, &split_at_points(&buf, cuts)).unwrap();
        prop_assert!(complete);
        prop_assert_eq!(consumed, msg.len());
        prop_assert!(t.is_complete());

        // One byte less of allowance: too large.
        if decoded > 0 {
            let mut t = BodyTracker::new(BodyFraming::Chunked, decoded as u64 - 1);
            prop_assert_eq!(feed_all(&mut t, &[&msg]), Err(BodyError::TooLarge(decoded as u64 - 1)));
        }

        // Byte by byte.
        let mut t = BodyTracker::new(BodyFraming::Chunked, u64::MAX);
        for (i, b) in msg.iter().enumerate() {
            let p = t.feed(std::slice::from_ref(b)).unwrap();
            prop_assert_eq!(p.consumed, 1);
            prop_assert_eq!(p.complete, i + 1 == msg.len());
        }
    }

    #[test]
    fn chunked_bodies_decode_to_their_data(
        chunks in proptest::collection::vec(chunk_spec(), 0..6),
        trailers in proptest::collection::vec("X-[A-Za-z]{1,6}: [ -~]{0,20}", 0..3),
        cuts in proptest::collection::vec(0usize..4000, 0..12),
    ) {
        let msg = encode_chunked(&chunks, &trailers);
        let data: Vec<u8> = chunks.iter().flat_map(|c| c.data.iter().copied()).collect();
        let mut t = BodyTracker::new(BodyFraming::Chunked, u64::MAX);
        let mut out = Vec::new();
        let mut consumed = 0;
        let mut complete = false;
        for part in split_at_points(&msg, cuts) {
            let p = t.feed_decoded(part, &mut out).unwrap();
            consumed += p.consumed;
            complete = p.complete;
        }
        prop_assert!(complete);
        prop_assert_eq!(consumed, msg.len());
        prop_assert_eq!(out, data);
    }

    #[test]
    fn content_length_bodies_end_exactly(
        len in 0u64..2000,
        extra in 0usize..50,
        cuts in proptest::collection::vec(0usize..3000, 0..10),
    ) {
        let buf = vec![b'x'; len as usize + extra];
        let mut t = BodyTracker::new(BodyFraming::ContentLength(len), u64::MAX);
        let (consumed, complete) = feed_all(&mut t, &split_at_points(&buf, cuts)).unwrap();
        prop_assert_eq!(consumed as u64, len);
        prop_assert!(complete);
    }

    #[test]
    fn tracker_never_panics_on_garbage(
        input in proptest::collection::vec(any::<u8>(), 0..200),
        cuts in proptest::collection::vec(0usize..200, 0..10),
    ) {
        let mut t = BodyTracker::new(BodyFraming::Chunked, 1000);
        let mut total = 0;
        for part in split_at_points(&input, cuts) {
            match t.feed(part) {
                Ok(p) => {
                    prop_assert!(p.consumed <= part.len());
                    total += p.consumed;
                    if p.complete { break; }
                }
                Err(_) => break,
            }
        }
        prop_assert!(total <= input.len());
    }
}

//! `shadow` on routes, on real processes: a share of the requests is copied to the mirror
//! upstream while the client only ever sees the primary's answers, and a dead mirror delays
//! or fails nothing.

use std::time::{Duration, Instant};

use zentinel_tests::*;

fn config(port: u16, primary: &str, mirror: &str) -> String {
    format!(
        r#"
system {{
    worker-threads 1
}}
listeners {{
    listener "http" {{
        address "127.0.0.1:{port}"
    }}
}}
upstreams {{
    upstream "primary" {{
        target "{primary}"
    }}
    upstream "mirror" {{
        target "{mirror}"
    }}
}}
routes {{
    route "all" {{
        matches {{ path-prefix "/all"; }}
        upstream "primary"
        shadow {{
            upstream "mirror"
            timeout-ms 2000
        }}
    }}
    route "half" {{
        matches {{ path-prefix "/half"; }}
        upstream "primary"
        shadow {{
            upstream "mirror"
            percentage 50.0
        }}
    }}
    route "tagged" {{
        matches {{ path-prefix "/tagged"; }}
        upstream "primary"
        shadow {{
            upstream "mirror"
            sample-header "X-Shadow" "on"
        }}
    }}
}}
"#
    )
}

#[test]
fn share_of_requests_reaches_the_mirror() {
    let primary = Backend::start("primary");
    let mirror = Backend::start("mirror");
    let port = free_port();
    let z = Zentinel::start(&config(port, &primary.target(), &mirror.target()));
    for _ in 0..4 {
        let r = z.client().get("/all", "shadow.test");
        assert_eq!((r.status, r.backend()), (200, Some("primary")), "{r:?}");
    }
    assert!(
        wait_until(Duration::from_secs(10), || mirror.stats().0 == 4),
        "mirror saw {:?}",
        mirror.stats()
    );
    // `percentage 50.0` is half (upstream would read the float as 100%).
    for _ in 0..10 {
        let r = z.client().get("/half", "shadow.test");
        assert_eq!(r.backend(), Some("primary"));
    }
    assert!(
        wait_until(Duration::from_secs(10), || mirror.stats().0 == 9),
        "mirror saw {:?}",
        mirror.stats()
    );
    // Only requests carrying the sample header.
    let mut c = z.client();
    c.send(
        b"GET /tagged HTTP/1.1\r\nHost: shadow.test\r\nX-Shadow: on\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(c.read_response().backend(), Some("primary"));
    let r = z.client().get("/tagged", "shadow.test");
    assert_eq!(r.backend(), Some("primary"));
    assert!(
        wait_until(Duration::from_secs(10), || mirror.stats().0 == 10),
        "mirror saw {:?}",
        mirror.stats()
    );
    // Requests with a body are not mirrored.
    let mut c = z.client();
    c.send(b"POST /all HTTP/1.1\r\nHost: shadow.test\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi");
    assert_eq!(c.read_response().backend(), Some("primary"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(mirror.stats().0, 10);
    assert_eq!(primary.stats().0, 4 + 10 + 2 + 1);
}

#[test]
fn dead_mirror_changes_nothing() {
    let primary = Backend::start("primary");
    let dead = format!("127.0.0.1:{}", free_port());
    let port = free_port();
    let z = Zentinel::start(&config(port, &primary.target(), &dead));
    let started = Instant::now();
    for _ in 0..20 {
        let r = z.client().get("/all", "shadow.test");
        assert_eq!((r.status, r.backend()), (200, Some("primary")), "{r:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(primary.stats().0, 20);
}

//! `websocket` on routes, on real processes: upgrades are tunnelled unless the route says
//! `websocket #false`, which answers 403 as upstream does.

use std::io::{Read, Write};
use std::time::Duration;

use zentinel_tests::*;

const UPGRADE: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13";

#[test]
fn upgrades_follow_the_route_setting() {
    let backend = Backend::start("ws");
    let port = free_port();
    let cfg = format!(
        r#"
listeners {{
    listener "http" {{
        address "127.0.0.1:{port}"
    }}
}}
upstreams {{
    upstream "ws" {{
        target "{target}"
    }}
}}
routes {{
    route "off" {{
        matches {{ path-prefix "/off"; }}
        upstream "ws"
        websocket #false
    }}
    route "block" {{
        matches {{ path-prefix "/block"; }}
        upstream "ws"
        websocket {{
            enabled #true
            max-message-size-bytes 65536
        }}
    }}
}}
"#,
        target = backend.target()
    );
    let z = Zentinel::start(&cfg);

    let mut c = z.client();
    c.send(format!("GET /off HTTP/1.1\r\nHost: ws.test\r\n{UPGRADE}\r\n\r\n").as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.body_str(), "WebSocket not enabled for this route");
    // The same route still proxies plain requests.
    let r = z.client().get("/off/x", "ws.test");
    assert_eq!((r.status, r.backend()), (200, Some("ws")));

    // The block form (which upstream reads as "off") tunnels.
    let mut c = z.client();
    c.send(format!("GET /block HTTP/1.1\r\nHost: ws.test\r\n{UPGRADE}\r\n\r\n").as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 101, "{r:?}");
    assert!(c.take_buffered().is_empty());
    c.set_timeout(Duration::from_secs(10));
    c.stream
        .write_all(b"ping through the tunnel")
        .expect("write");
    let mut got = vec![0; 23];
    c.stream.read_exact(&mut got).expect("echo");
    assert_eq!(&got, b"ping through the tunnel");
}

//! TCP listeners: raw bytes both ways, half-close honoured.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use zentinel_tests::*;

fn tcp_proxy(echo: &Backend, workers: u32) -> Zentinel {
    let port = free_port();
    Zentinel::start(&format!(
        r#"
system {{
    worker-processes {workers}
    graceful-shutdown-timeout-secs 2
}}
listeners {{
    listener "tcp" {{
        address "127.0.0.1:{port}"
        protocol "tcp"
        upstream "echo"
    }}
}}
upstreams {{
    upstream "echo" {{
        target "{}"
        timeouts {{ connect-secs 2; read-secs 10; }}
    }}
}}
"#,
        echo.target()
    ))
}

/// Sends `data`, half-closes, and reads everything echoed until the proxy closes.
fn echo_round(z: &Zentinel, data: Vec<u8>) -> Vec<u8> {
    let mut c = HttpClient::connect(z.addr());
    c.set_timeout(Duration::from_secs(15));
    c.echo_round(data)
}

#[test]
fn tcp_proxy_with_half_close() {
    let echo = Backend::start_echo("echo");
    let z = tcp_proxy(&echo, 2);
    let data = pattern(3 * 1024 * 1024 + 17);
    let got = echo_round(&z, data.clone());
    assert_eq!(got.len(), data.len(), "echo length through the TCP proxy");
    assert_eq!(
        checksum(&got),
        checksum(&data),
        "echo altered by the TCP proxy"
    );
}

#[test]
fn tcp_proxy_small_message_then_half_close() {
    // The reply only completes after our FIN travelled through the proxy to the backend.
    let echo = Backend::start_echo("echo-small");
    let z = tcp_proxy(&echo, 1);
    let got = echo_round(&z, b"ping".to_vec());
    assert_eq!(got, b"ping");
}

#[test]
fn tcp_proxy_concurrent_connections() {
    let echo = Backend::start_echo("echo-many");
    let z = tcp_proxy(&echo, 2);
    thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let z = &z;
                s.spawn(move || {
                    let mut data = pattern(200_000 + i * 1000);
                    data.rotate_left(i * 7);
                    let got = echo_round(z, data.clone());
                    assert_eq!(got.len(), data.len(), "connection {i}: length");
                    assert!(got == data, "connection {i}: bytes altered");
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

#[test]
fn tcp_upstream_down_closes_client() {
    let dead = free_port();
    let port = free_port();
    let z = Zentinel::start(&format!(
        r#"
system {{
    worker-processes 1
}}
listeners {{
    listener "tcp" {{
        address "127.0.0.1:{port}"
        protocol "tcp"
        upstream "dead"
    }}
}}
upstreams {{
    upstream "dead" {{
        target "127.0.0.1:{dead}"
        timeouts {{ connect-secs 1; read-secs 5; }}
    }}
}}
"#
    ));
    let mut stream = TcpStream::connect(z.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(b"hello");
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("got {n} bytes from a proxy whose upstream is down"),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "client connection left open 5 s after the upstream connect failed"
        ),
    }
}

//! The foundation issue's acceptance check, as a test: `zentinel --config F` with one HTTP
//! listener routing to a python `http.server` backend returns the backend's content, with
//! `worker-processes` workers visible as children of the master.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use zentinel_tests::*;

/// `python3 -m http.server` serving a temp directory, killed on drop.
struct PythonServer {
    child: Child,
    addr: SocketAddr,
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python_http_server(dir: &std::path::Path) -> Option<PythonServer> {
    let port = free_port();
    let mut child = match Command::new("python3")
        .args(["-u", "-m", "http.server", "--bind", "127.0.0.1"])
        .arg(port.to_string())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("skipping: python3 cannot be started here: {e}");
            return None;
        }
    };
    // http.server prints "Serving HTTP on ..." once bound; drain stdout in the background.
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || for _ in BufReader::new(stdout).lines() {});
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("socket address");
    let server = PythonServer { child, addr };
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
        "python http.server did not start listening on {addr}"
    );
    Some(server)
}

#[test]
fn python_http_server_content_through_zentinel_with_configured_workers() {
    let dir = temp_path("pyroot");
    fs::create_dir_all(&dir).expect("create python docroot");
    let content = "hello from python http.server via zentinel\n";
    fs::write(dir.join("index.txt"), content).expect("write index.txt");
    let Some(python) = python_http_server(&dir) else {
        return;
    };
    let port = free_port();
    let config = format!(
        r#"
system {{
    worker-processes 3
}}
listeners {{
    listener "http" {{
        address "127.0.0.1:{port}"
        default-route "py"
    }}
}}
routes {{ route "py" {{ upstream "python"; }} }}
upstreams {{ upstream "python" {{ target "{}"; }} }}
"#,
        python.addr
    );
    let z = Zentinel::start(&config);
    assert_eq!(
        z.worker_pids().len(),
        3,
        "expected 3 worker children of master {}\n{}",
        z.pid,
        z.log()
    );
    for _ in 0..5 {
        let response = z.client().get("/index.txt", "localhost");
        assert_eq!(response.status, 200, "{}", z.log());
        assert_eq!(response.body_str(), content);
    }
    let _ = fs::remove_dir_all(&dir);
}

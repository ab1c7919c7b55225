//! The Python test peers in `tests/python/`: a gRPC server and client on grpcio
//! (`grpc_tool.py`), an HTTP/2 server on the h2 package (`h2_server.py`). They run in the venv
//! scripts/test-deps.sh makes: `ZENTINEL_TEST_PYTHON` (set by scripts/test.sh), else that
//! venv's default place.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::{run_with_deadline, CtlOutput};

/// How long a Python peer may take to say it listens.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The venv's interpreter; panics saying how to make it when it is missing.
pub fn python() -> PathBuf {
    let path = match std::env::var_os("ZENTINEL_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_default();
            Path::new(&home).join(".cache/zentinel-test-venv/bin/python")
        }
    };
    assert!(
        path.is_file(),
        "no Python with grpcio and h2 at {}: run scripts/test-deps.sh (it makes that venv), \
         or point ZENTINEL_TEST_PYTHON at an interpreter that has them",
        path.display()
    );
    path
}

/// A script of `tests/python/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// `python -u tests/python/SCRIPT ARGS...`, stdin and stdout piped.
pub fn command(script_name: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg("-u").arg(script(script_name)).args(args);
    cmd
}

/// A Python server (`READY <port>` on its first line), stopped on drop: closing its stdin
/// ends it, a kill makes sure.
pub struct PyServer {
    child: Child,
    stdin: Option<ChildStdin>,
    pub port: u16,
}

impl PyServer {
    pub fn start(script_name: &str, args: &[&str]) -> PyServer {
        let mut cmd = command(script_name, args);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {script_name}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(START_DEADLINE).unwrap_or_else(|e| {
            panic!("{script_name} did not say READY within {START_DEADLINE:?}: {e}")
        });
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("{script_name} said {line:?}, not `READY <port>`"));
        PyServer { child, stdin, port }
    }

    /// `127.0.0.1:PORT`.
    pub fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A line on the server's stdin (`GO` opens the gRPC server's gate).
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to the server's stdin");
        stdin.flush().expect("flush the server's stdin");
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `grpc_tool.py call TARGET ARGS...` within `deadline`: the JSON object it printed.
pub fn grpc_call(target: &str, args: &[&str], deadline: Duration) -> serde_json::Value {
    let mut full = vec!["call", target];
    full.extend_from_slice(args);
    let out: CtlOutput = run_with_deadline(command("grpc_tool.py", &full), deadline);
    assert!(out.success(), "grpc_tool.py {full:?}: {out}");
    let line = out.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("grpc_tool.py printed {line:?}: {e}\n{out}"))
}

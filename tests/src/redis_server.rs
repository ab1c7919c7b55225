//! A `redis-server` of a test's own (Debian's package, installed by scripts/test-deps.sh):
//! loopback, a free port, its own temp data directory, no persistence; killed (and its
//! directory removed) on drop. The package's system service is never used.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, temp_path};

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Start one. `None`, with the reason printed, only when `redis-server` is missing and
    /// the run says it cannot be installed (`ZENTINEL_TEST_SKIP_REDIS=1`); missing otherwise
    /// is a failure (scripts/test-deps.sh installs it).
    pub fn start() -> Option<RedisServer> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            if std::env::var_os("ZENTINEL_TEST_SKIP_REDIS").is_some() {
                eprintln!(
                    "SKIPPED: redis-server is not installed (ZENTINEL_TEST_SKIP_REDIS is set)"
                );
                return None;
            }
            panic!(
                "redis-server is not installed: run scripts/test-deps.sh (or set \
                 ZENTINEL_TEST_SKIP_REDIS=1 where it cannot be installed)"
            );
        }
        let dir = temp_path("redis");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut s = RedisServer {
            port: free_port(),
            dir,
            child: None,
        };
        s.restart();
        Some(s)
    }

    /// Start it again on the same port (after [`RedisServer::kill`]); its data is gone.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server already runs");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start redis-server: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on port {} within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL it (a crash, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

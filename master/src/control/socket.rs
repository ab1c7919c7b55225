//! The control socket file: stale/live detection, creation with mode 0600, removal on exit.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::stat::{umask, Mode};

use crate::ownership::Ownership;

/// Why the control socket could not be set up. Every variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum ControlSocketError {
    /// A master answers on the path: starting a second one would steal its socket.
    #[error("another zentinel master is running on {}", path.display())]
    AlreadyRunning { path: PathBuf },
    #[error("control socket {}: cannot {step}: {source}", path.display())]
    Io {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("control socket {}: the path exists and is a directory", path.display())]
    IsDirectory { path: PathBuf },
}

/// What the path holds before we bind.
#[derive(Debug, PartialEq, Eq)]
pub enum ExistingSocket {
    Absent,
    /// A master accepted a connection on it.
    Live,
    /// A socket nobody listens on, or a non-socket file: left over, safe to replace.
    Stale,
}

/// Probe `path`: is a master listening there?
pub fn probe(path: &Path) -> Result<ExistingSocket, ControlSocketError> {
    let io_err = |step: &'static str| {
        move |source: io::Error| ControlSocketError::Io {
            path: path.to_owned(),
            step,
            source,
        }
    };
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(ExistingSocket::Absent),
        Err(err) => return Err(io_err("inspect the existing path")(err)),
    };
    if metadata.is_dir() {
        return Err(ControlSocketError::IsDirectory {
            path: path.to_owned(),
        });
    }
    if !metadata.file_type().is_socket() {
        return Ok(ExistingSocket::Stale);
    }
    match UnixStream::connect(path) {
        // The live master sees a connection that closes before its Hello and drops it.
        Ok(_) => Ok(ExistingSocket::Live),
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => Ok(ExistingSocket::Stale),
        Err(err) => Err(io_err("probe the existing socket")(err)),
    }
}

/// The master's bound control socket. Dropping it removes the file, but only while the path
/// still names this socket (a later master may have replaced it) and only once it is ours: an
/// adopted socket stays the previous master's until the takeover is confirmed.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file we created.
    identity: (u64, u64),
    /// Tentative while a successor master has not confirmed readiness: the previous master
    /// still answers on this file, so dropping must leave it alone.
    ownership: Ownership,
}

impl ControlSocket {
    /// Create the parent directory if needed (0755), replace a stale socket, refuse a live one,
    /// bind with mode 0600, and set the listener non-blocking.
    pub fn bind(path: &Path) -> Result<Self, ControlSocketError> {
        let io_err = |step: &'static str| {
            move |source: io::Error| ControlSocketError::Io {
                path: path.to_owned(),
                step,
                source,
            }
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(io_err("create its directory"))?;
        }
        match probe(path)? {
            ExistingSocket::Absent => {}
            ExistingSocket::Live => {
                return Err(ControlSocketError::AlreadyRunning {
                    path: path.to_owned(),
                })
            }
            ExistingSocket::Stale => {
                tracing::info!(path = %path.display(), "removing stale control socket");
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => return Err(io_err("remove the stale socket")(err)),
                }
            }
        }
        // The umask closes the window between bind and chmod in which another user could
        // connect; the master is single-threaded here, so the process-wide change is safe.
        let previous = umask(Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        umask(previous);
        let listener = bound.map_err(io_err("bind"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("set mode 0600"))?;
        let metadata = std::fs::symlink_metadata(path).map_err(io_err("inspect the new socket"))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("set O_NONBLOCK"))?;
        Ok(ControlSocket {
            listener,
            path: path.to_owned(),
            identity: (metadata.dev(), metadata.ino()),
            ownership: Ownership::confirmed(),
        })
    }

    /// Take over the control socket a previous master bound (master upgrade): the fd must be a
    /// listening Unix stream socket. The file at `path` is not touched; once `ownership` is
    /// confirmed it is ours (removed on drop while it still names this socket), before that
    /// dropping leaves it to the previous master.
    pub fn adopt(fd: std::os::fd::OwnedFd, path: &Path, ownership: Ownership) -> io::Result<Self> {
        use std::os::fd::AsRawFd;
        let raw = fd.as_raw_fd();
        let bad = |what: String| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "control socket {}: inherited fd {raw} is not its listening socket: {what}",
                    path.display()
                ),
            )
        };
        let socket = socket2::SockRef::from(&fd);
        match socket.domain() {
            Ok(domain) if domain == socket2::Domain::UNIX => {}
            Ok(domain) => return Err(bad(format!("domain {domain:?}"))),
            Err(err) => return Err(bad(err.to_string())),
        }
        match socket.r#type() {
            Ok(ty) if ty == socket2::Type::STREAM => {}
            Ok(ty) => return Err(bad(format!("type {ty:?}"))),
            Err(err) => return Err(bad(err.to_string())),
        }
        if !socket.is_listener().map_err(|err| bad(err.to_string()))? {
            return Err(bad("not listening".to_owned()));
        }
        socket.set_cloexec(true)?;
        let listener = UnixListener::from(fd);
        listener.set_nonblocking(true)?;
        let identity = std::fs::symlink_metadata(path)
            .map(|m| (m.dev(), m.ino()))
            .unwrap_or((0, 0));
        Ok(ControlSocket {
            listener,
            path: path.to_owned(),
            identity,
            ownership,
        })
    }

    /// Leave the socket file in place on drop: a successor master took the socket over.
    pub fn keep_file(&mut self) {
        self.identity = (0, 0);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if !self.ownership.is_confirmed() {
            tracing::debug!(path = %self.path.display(), "takeover not confirmed: the control socket file stays the previous master's");
            return;
        }
        let ours = self.identity != (0, 0)
            && std::fs::symlink_metadata(&self.path)
                .map(|m| (m.dev(), m.ino()) == self.identity)
                .unwrap_or(false);
        if ours {
            if let Err(err) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %err, "cannot remove the control socket");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "zentinel-ctlsock-{}-{name}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn creates_parent_dir_binds_0600_and_removes_on_drop() {
        let dir = temp_dir("create");
        let path = dir.join("sub/dir/z.sock");
        let socket = ControlSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(path.parent().unwrap().is_dir());
        assert_eq!(probe(&path).unwrap(), ExistingSocket::Live);
        drop(socket);
        assert!(!path.exists(), "socket file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn live_socket_refuses_stale_socket_is_replaced() {
        let dir = temp_dir("live");
        let path = dir.join("z.sock");
        let first = ControlSocket::bind(&path).unwrap();
        let err = ControlSocket::bind(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("another zentinel master is running on {}", path.display())
        );
        // A dead master's socket: the file stays, nobody listens.
        let stale = UnixListener::bind(dir.join("other.sock")).unwrap();
        drop(stale);
        assert_eq!(
            probe(&dir.join("other.sock")).unwrap(),
            ExistingSocket::Stale
        );
        let replaced = ControlSocket::bind(&dir.join("other.sock")).unwrap();
        assert_eq!(probe(replaced.path()).unwrap(), ExistingSocket::Live);
        drop(first);
        drop(replaced);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn regular_file_is_stale_directory_is_refused() {
        let dir = temp_dir("file");
        let path = dir.join("z.sock");
        std::fs::write(&path, b"junk").unwrap();
        assert_eq!(probe(&path).unwrap(), ExistingSocket::Stale);
        let socket = ControlSocket::bind(&path).unwrap();
        assert_eq!(probe(&path).unwrap(), ExistingSocket::Live);
        drop(socket);
        std::fs::create_dir(&path).unwrap();
        assert!(matches!(
            ControlSocket::bind(&path),
            Err(ControlSocketError::IsDirectory { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn drop_leaves_a_replaced_file_alone() {
        let dir = temp_dir("replaced");
        let path = dir.join("z.sock");
        let socket = ControlSocket::bind(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let other = UnixListener::bind(&path).unwrap();
        drop(socket);
        assert!(path.exists(), "dropped a socket file that was not ours");
        drop(other);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn adopted_socket_is_unlinked_only_once_the_takeover_is_confirmed() {
        use std::os::fd::OwnedFd;
        let dir = temp_dir("adopted");
        let path = dir.join("z.sock");
        // The previous master's socket, as it would hand it over.
        let previous = ControlSocket::bind(&path).unwrap();
        let dup = || OwnedFd::from(previous.listener().try_clone().unwrap());

        // Tentative (the new master fails before confirming): the file stays, and the previous
        // master still answers on it.
        let adopted = ControlSocket::adopt(dup(), &path, Ownership::tentative()).unwrap();
        drop(adopted);
        assert_eq!(probe(&path).unwrap(), ExistingSocket::Live);

        // Confirmed: the file is the new master's, removed when it stops.
        let claim = Ownership::tentative();
        let adopted = ControlSocket::adopt(dup(), &path, claim.clone()).unwrap();
        let mut previous = previous;
        previous.keep_file(); // what the previous master does once the new one is ready
        drop(previous);
        claim.confirm();
        drop(adopted);
        assert!(!path.exists(), "confirmed socket file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

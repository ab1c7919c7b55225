//! Turning a request path into a file under the route's root, without ever leaving it.
//!
//! Two layers: the decoded path may not contain `..` (nor NUL, nor a backslash that some
//! tools treat as a separator), and the file found is canonicalized (symlinks resolved) and
//! must still be under the canonical root, so a symlink pointing outside is refused too.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Why a path was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Malformed or an attempt to leave the root: answered 404 like a missing file, so a
    /// probe learns nothing (upstream answers these with 404 as well).
    Unsafe,
}

/// Percent-decode a path. `None` for malformed escapes and for NUL bytes.
pub fn percent_decode(path: &str) -> Option<Vec<u8>> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    (!out.contains(&0)).then_some(out)
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// The normal segments of a decoded relative path (empty and `.` segments dropped). Refused
/// when any segment is `..` or contains a backslash.
pub fn segments(decoded: &[u8]) -> Result<Vec<&[u8]>, Refused> {
    let mut out = Vec::new();
    for seg in decoded.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => return Err(Refused::Unsafe),
            s if s.contains(&b'\\') => return Err(Refused::Unsafe),
            s => out.push(s),
        }
    }
    Ok(out)
}

/// `root` joined with the request's relative path (raw, still percent-encoded).
pub fn join(root: &Path, rel: &str) -> Result<PathBuf, Refused> {
    let decoded = percent_decode(rel).ok_or(Refused::Unsafe)?;
    let mut path = root.to_path_buf();
    for seg in segments(&decoded)? {
        path.push(OsStr::from_bytes(seg));
    }
    Ok(path)
}

/// Resolve symlinks in `path` and check the result is `root` or under it. `root` must be
/// canonical already. `Ok(None)`: the file does not exist.
pub fn contained(root: &Path, path: &Path) -> Result<Option<PathBuf>, Refused> {
    match std::fs::canonicalize(path) {
        Ok(real) if real.starts_with(root) => Ok(Some(real)),
        Ok(_) => Err(Refused::Unsafe),
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_and_traversal() {
        assert_eq!(percent_decode("/a%20b").as_deref(), Some(&b"/a b"[..]));
        assert_eq!(percent_decode("/%2e%2E/x").as_deref(), Some(&b"/../x"[..]));
        assert_eq!(percent_decode("/bad%2"), None);
        assert_eq!(percent_decode("/bad%zz"), None);
        assert_eq!(percent_decode("/nul%00"), None);
        let root = Path::new("/srv");
        assert_eq!(join(root, "/a/./b//c"), Ok(PathBuf::from("/srv/a/b/c")));
        assert_eq!(join(root, "/"), Ok(PathBuf::from("/srv")));
        for evil in [
            "/../etc/passwd",
            "/a/../../etc",
            "/%2e%2e/etc/passwd",
            "/%2E%2e%2fetc",
            "/a%2f..%2f..%2fetc",
            "/..%5c..%5cetc",
            "/a\\..\\b",
            "/x%00.html",
        ] {
            assert_eq!(join(root, evil), Err(Refused::Unsafe), "{evil}");
        }
    }

    #[test]
    fn symlinks_leaving_root_are_refused() {
        let base = std::env::temp_dir().join(format!("zentinel-path-{}", std::process::id()));
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(&root).expect("create root");
        std::fs::create_dir_all(&outside).expect("create outside");
        std::fs::write(outside.join("secret"), b"x").expect("write secret");
        std::fs::write(root.join("ok"), b"y").expect("write ok");
        let _ = std::os::unix::fs::symlink(&outside, root.join("escape"));
        let root = std::fs::canonicalize(&root).expect("canonical root");
        let inside = join(&root, "/ok").expect("join");
        assert_eq!(contained(&root, &inside), Ok(Some(root.join("ok"))));
        let evil = join(&root, "/escape/secret").expect("join");
        assert_eq!(contained(&root, &evil), Err(Refused::Unsafe));
        let missing = join(&root, "/nope").expect("join");
        assert_eq!(contained(&root, &missing), Ok(None));
        let _ = std::fs::remove_dir_all(&base);
    }
}

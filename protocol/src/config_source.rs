//! The source of a running configuration: every file it was read from, as the text that was
//! loaded. This, not the parsed model, is what crosses a binary upgrade (the new master parses
//! it with its own parser) and what the upgrade pre-flight checks a new binary against, so the
//! configuration model can grow without changing the state format.

use rkyv::{Archive, Deserialize, Serialize};

/// One file of a configuration, as it was read.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ConfigSourceFile {
    /// The path the file was read from (absolute), or a label such as `<embedded default>`
    /// for text that came from no file.
    pub path: String,
    /// The file's text, exactly as it was read.
    pub text: String,
}

/// A whole configuration's source.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ConfigSource {
    /// The file given to the master (`-c`), absolute; a reload re-reads it from disk. `None`:
    /// the embedded default, whose text is `files[0]`.
    pub main_path: Option<String>,
    /// The main file first, then every file it included, each once, in the order read.
    pub files: Vec<ConfigSourceFile>,
}

impl ConfigSource {
    /// The text read from `path`, if the configuration read that file.
    pub fn text_of(&self, path: &str) -> Option<&str> {
        self.files
            .iter()
            .find(|file| file.path == path)
            .map(|file| file.text.as_str())
    }

    /// The main file (the one the master was given, or the embedded default).
    pub fn main(&self) -> Option<&ConfigSourceFile> {
        self.files.first()
    }
}

impl ConfigSource {
    /// The source as bytes (an rkyv archive), for handing it to another process through a
    /// file (the upgrade pre-flight's `zentinel --check-source FILE`).
    pub fn encode(&self) -> Vec<u8> {
        match rkyv::to_bytes::<rkyv::rancor::Error>(self) {
            Ok(bytes) => bytes.to_vec(),
            // Only an archive past rkyv's 2 GiB relative pointers fails; a configuration's
            // text never is.
            Err(e) => panic!("cannot serialize a configuration source: {e}"),
        }
    }

    /// The source [`ConfigSource::encode`] wrote, validated before use.
    pub fn decode(bytes: &[u8]) -> Result<ConfigSource, String> {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        rkyv::from_bytes::<ConfigSource, rkyv::rancor::Error>(&aligned)
            .map_err(|e| format!("not a configuration source archive: {e}"))
    }
}

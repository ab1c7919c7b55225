//! A state's bytes: the header (magic, format version, payload length, checksum) and the rkyv
//! payload; encoding in the oldest format that holds the state, decoding of every format this
//! build reads, converted to the latest.

use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::ticket_keys::TicketKeys;

use super::{
    MasterState, MasterStateV1, MasterStateV2, MasterStateV3, MasterStateV4, MasterStateV5,
    MasterStateV6, MasterStateV7, MasterStateV8, StateError, DRAIN_DEADLINE_STATE_FORMAT,
    FILTER_SEGMENTS_STATE_FORMAT, NO_DRAIN_DEADLINE_STATE_FORMAT, SESSION_CACHE_STATE_FORMAT,
    STATE_FORMAT_VERSION, STATE_MAGIC, TICKET_KEYS_STATE_FORMAT,
};

/// Bytes before the payload: magic, version, payload length, checksum.
pub const STATE_HEADER_LEN: usize = 8 + 4 + 8 + 8;

/// The part of the header every format version shares: magic and version. Everything after it
/// may change with the version, so the version is dispatched on before the rest is read.
const STABLE_PREFIX_LEN: usize = 8 + 4;

/// FNV-1a 64: not cryptographic (the file is written by a trusted predecessor into a 0600
/// file), it only catches truncation and bit rot before rkyv validation sees the bytes.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(PRIME)
    })
}

/// Serialize `state` in the oldest format that holds it ([`written_format`]): magic, version,
/// length, checksum, payload. The bytes may hold the TLS session-ticket keys: they are zeroed
/// when dropped, like every intermediate buffer here.
pub fn encode_state(state: &MasterState) -> Zeroizing<Vec<u8>> {
    let Some(v7) = MasterStateV7::holding(state) else {
        return framed(FILTER_SEGMENTS_STATE_FORMAT, &archive(state));
    };
    let Some(v6) = MasterStateV6::holding(&v7) else {
        return framed(SESSION_CACHE_STATE_FORMAT, &archive(&v7));
    };
    let v5 = MasterStateV5::holding(&v6);
    match (v5.as_ref().and_then(MasterStateV4::holding), v5) {
        (Some(v4), _) => framed(NO_DRAIN_DEADLINE_STATE_FORMAT, &archive(&v4)),
        (None, Some(v5)) => framed(DRAIN_DEADLINE_STATE_FORMAT, &archive(&v5)),
        (None, None) => framed(TICKET_KEYS_STATE_FORMAT, &archive(&v6)),
    }
}

/// The format [`encode_state`] writes `state` in: 8 when it carries filter segments, else 7
/// when it carries the session cache, else 6 when it carries ticket keys, else 5 when a worker
/// carries a drain deadline, else 4.
pub fn written_format(state: &MasterState) -> u32 {
    if !state.filter_segments.is_empty() {
        FILTER_SEGMENTS_STATE_FORMAT
    } else if state.session_cache.is_some() {
        SESSION_CACHE_STATE_FORMAT
    } else if state.ticket_keys != TicketKeys::default() {
        TICKET_KEYS_STATE_FORMAT
    } else if state
        .workers
        .iter()
        .any(|w| w.drain_deadline_monotonic_ms.is_some())
    {
        DRAIN_DEADLINE_STATE_FORMAT
    } else {
        NO_DRAIN_DEADLINE_STATE_FORMAT
    }
}

fn framed(version: u32, payload: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(STATE_HEADER_LEN + payload.len()));
    out.extend_from_slice(&STATE_MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&fnv1a64(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// An rkyv archive, zeroed when dropped (it may hold the ticket keys).
struct Archived(AlignedVec);

impl std::ops::Deref for Archived {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Archived {
    fn drop(&mut self) {
        self.0.as_mut_slice().zeroize();
    }
}

fn archive<T>(value: &T) -> Archived
where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<
            AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rancor::Error,
        >,
    >,
{
    match rkyv::to_bytes::<rancor::Error>(value) {
        Ok(payload) => Archived(payload),
        // Serializing into a growable in-memory buffer only fails when the archive outgrows
        // rkyv's 32-bit relative pointers (2 GiB); a master's state is a few KiB, so reaching
        // this is a bug in the caller, not a condition to handle.
        Err(e) => panic!("cannot serialize the master state: {e}"),
    }
}

/// Parse a state file's bytes, of any supported version, into the latest `MasterState`.
/// `path` only names the file in errors.
pub fn decode_state(bytes: &[u8], path: &str) -> Result<MasterState, StateError> {
    Ok(match decode_any(bytes, path)? {
        Decoded::Model(state) => state.into(),
        Decoded::Source(state) => state,
    })
}

/// A state of format 1 to 3 as it was archived (with the parsed configuration model), before
/// its conversion to the latest format; `None` for a format 4 to 8 file. For tests that compare an
/// old fixture with the value it was written from.
pub fn decode_model_state(bytes: &[u8], path: &str) -> Result<Option<MasterStateV3>, StateError> {
    Ok(match decode_any(bytes, path)? {
        Decoded::Model(state) => Some(state),
        Decoded::Source(_) => None,
    })
}

/// What a state file decodes to before conversion: formats 1 to 3 carry the parsed model
/// (converted to format 3), formats 4 to 8 the source text (converted to format 8).
enum Decoded {
    Model(MasterStateV3),
    Source(MasterStateV8),
}

fn decode_any(bytes: &[u8], path: &str) -> Result<Decoded, StateError> {
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_owned(),
        reason,
    };

    // A file that is a prefix of the magic is a truncated state file, anything else is not ours.
    if bytes.len() < STATE_MAGIC.len() {
        if STATE_MAGIC.starts_with(bytes) {
            return Err(corrupt(format!(
                "truncated: {} bytes, shorter than the {}-byte header",
                bytes.len(),
                STATE_HEADER_LEN
            )));
        }
        return Err(StateError::BadMagic {
            path: path.to_owned(),
        });
    }
    if bytes[..STATE_MAGIC.len()] != STATE_MAGIC {
        return Err(StateError::BadMagic {
            path: path.to_owned(),
        });
    }
    let Some(version_bytes) = bytes.get(STATE_MAGIC.len()..STABLE_PREFIX_LEN) else {
        return Err(corrupt(format!(
            "truncated: {} bytes, no room for the format version",
            bytes.len()
        )));
    };
    let version = u32::from_le_bytes(le_array(version_bytes));
    match version {
        1 => {
            let payload = checked_payload(bytes, path)?;
            let state = decode_payload::<MasterStateV1>(payload, 1).map_err(corrupt)?;
            Ok(Decoded::Model(MasterStateV2::from(state).into()))
        }
        2 => {
            let payload = checked_payload(bytes, path)?;
            let state = decode_payload::<MasterStateV2>(payload, 2).map_err(corrupt)?;
            Ok(Decoded::Model(state.into()))
        }
        3 => {
            let payload = checked_payload(bytes, path)?;
            let state = decode_payload::<MasterStateV3>(payload, 3).map_err(corrupt)?;
            Ok(Decoded::Model(state))
        }
        4 => {
            let payload = checked_payload(bytes, path)?;
            let state = decode_payload::<MasterStateV4>(payload, 4).map_err(corrupt)?;
            Ok(Decoded::Source(state.into()))
        }
        5 => {
            let payload = checked_payload(bytes, path)?;
            let state = decode_payload::<MasterStateV5>(payload, 5).map_err(corrupt)?;
            Ok(Decoded::Source(state.into()))
        }
        6 => {
            let payload = checked_payload(bytes, path)?;
            let state = decode_payload::<MasterStateV6>(payload, 6).map_err(corrupt)?;
            Ok(Decoded::Source(state.into()))
        }
        7 => {
            let payload = checked_payload(bytes, path)?;
            let state = decode_payload::<MasterStateV7>(payload, 7).map_err(corrupt)?;
            Ok(Decoded::Source(state.into()))
        }
        8 => {
            let payload = checked_payload(bytes, path)?;
            let state = decode_payload::<MasterStateV8>(payload, 8).map_err(corrupt)?;
            Ok(Decoded::Source(state))
        }
        0 => Err(StateError::UnknownVersion {
            path: path.to_owned(),
            found: version,
        }),
        found if found > STATE_FORMAT_VERSION => Err(StateError::FutureVersion {
            path: path.to_owned(),
            found,
            supported: STATE_FORMAT_VERSION,
        }),
        // 1..=STATE_FORMAT_VERSION without an arm: a version was bumped without keeping the
        // decoder of the previous one, which the frozen fixture test is there to catch.
        found => Err(StateError::UnknownVersion {
            path: path.to_owned(),
            found,
        }),
    }
}

fn le_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut array = [0u8; N];
    array.copy_from_slice(bytes);
    array
}

/// Check the length and checksum of the header (the same for versions 1 to 8) and return the
/// payload.
fn checked_payload<'a>(bytes: &'a [u8], path: &str) -> Result<&'a [u8], StateError> {
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    if bytes.len() < STATE_HEADER_LEN {
        return Err(corrupt(format!(
            "truncated: {} bytes, shorter than the {STATE_HEADER_LEN}-byte header",
            bytes.len()
        )));
    }
    let declared = u64::from_le_bytes(le_array(&bytes[12..20]));
    let expected_checksum = u64::from_le_bytes(le_array(&bytes[20..28]));
    let payload = &bytes[STATE_HEADER_LEN..];
    if declared != payload.len() as u64 {
        return Err(corrupt(format!(
            "header announces a {declared}-byte payload but {} bytes follow it \
             (truncated or overwritten file)",
            payload.len()
        )));
    }
    let actual_checksum = fnv1a64(payload);
    if actual_checksum != expected_checksum {
        return Err(corrupt(format!(
            "payload checksum mismatch: header says {expected_checksum:#018x}, \
             payload hashes to {actual_checksum:#018x}"
        )));
    }
    Ok(payload)
}

fn decode_payload<T>(payload: &[u8], version: u32) -> Result<T, String>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
        + Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    // rkyv needs the archive aligned; a slice of the file buffer at offset 28 is not.
    let mut aligned = AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    let decoded = rkyv::from_bytes::<T, rancor::Error>(&aligned)
        .map_err(|e| format!("payload is not a valid version {version} state archive: {e}"));
    // The copy may hold the ticket keys.
    aligned.as_mut_slice().zeroize();
    decoded
}

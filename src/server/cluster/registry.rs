//! The room registry's records (JetStream key-value bucket [`ROOMS_BUCKET`]), sans-IO.
//!
//! One key per room of the whole cluster: the room's name in unpadded base64url (key-value
//! keys allow only `[-/_=.a-zA-Z0-9]`, room names are any UTF-8), and a small binary record:
//!
//! ```text
//!   version (1) = 1 | owner node: size (1), name | capacity (2) | members (2) | flags (1)
//!   | salt (16) | SHA-256(salt || password) (32)
//! ```
//!
//! Flags bit 0: the room has a password. The password itself never leaves the node it was
//! given to: other nodes check a JOIN's password against the salted hash.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::server::token::constant_time_eq;

/// The key-value bucket of room records.
pub const ROOMS_BUCKET: &str = "ocm_rooms";
/// The key-value bucket of node liveness keys.
pub const NODES_BUCKET: &str = "ocm_nodes";
/// Record format version; a record of another version is refused, not guessed at.
const VERSION: u8 = 1;
/// Salt bytes: enough that two rooms with the same password never share a hash.
pub const SALT_LEN: usize = 16;
/// SHA-256's output.
const HASH_LEN: usize = 32;
/// Longest node name: it appears in subjects, so short and plain.
pub const MAX_NODE_NAME: usize = 32;

/// A room as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecord {
    /// The node whose relay holds the room (its host's node).
    pub owner: String,
    /// Effective capacity.
    pub capacity: u16,
    /// Members over every node, as the owner last wrote it.
    pub members: u16,
    /// Whether JOIN needs a password.
    pub has_password: bool,
    /// Salt of the hash.
    pub salt: [u8; SALT_LEN],
    /// SHA-256(salt || password), or zeros without a password.
    pub hash: [u8; HASH_LEN],
}

/// Why a record did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// Shorter than its fields say.
    Truncated,
    /// A version this node does not know.
    Version(u8),
    /// An owner name that is not a valid node name.
    BadOwner,
    /// Bytes after the last field.
    Trailing,
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Truncated => f.write_str("record truncated"),
            RecordError::Version(v) => write!(f, "record version {v}"),
            RecordError::BadOwner => f.write_str("record owner is not a node name"),
            RecordError::Trailing => f.write_str("bytes after the record"),
        }
    }
}

impl std::error::Error for RecordError {}

/// Whether `name` may name a node: 1..=32 of `[A-Za-z0-9_-]` (it is part of subjects and
/// keys).
pub fn valid_node_name(name: &str) -> bool {
    (1..=MAX_NODE_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// SHA-256(salt || password).
fn hash(salt: &[u8; SALT_LEN], password: &[u8]) -> [u8; HASH_LEN] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password);
    h.finalize().into()
}

impl RoomRecord {
    /// The record of a new room owned by `owner`; `salt` from a CSPRNG.
    pub fn new(owner: &str, capacity: u16, password: &[u8], salt: [u8; SALT_LEN]) -> RoomRecord {
        let has_password = !password.is_empty();
        RoomRecord {
            owner: owner.to_owned(),
            capacity,
            members: 1,
            has_password,
            salt,
            hash: if has_password {
                hash(&salt, password)
            } else {
                [0; HASH_LEN]
            },
        }
    }

    /// Whether a JOIN with `password` may enter (any password when there is none), in time
    /// that does not depend on the password's bytes.
    pub fn password_ok(&self, password: &[u8]) -> bool {
        !self.has_password || constant_time_eq(&hash(&self.salt, password), &self.hash)
    }

    /// Appends the encoded record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        // Node names are at most 32 bytes (checked at start-up).
        out.push(self.owner.len() as u8);
        out.extend_from_slice(self.owner.as_bytes());
        out.extend_from_slice(&self.capacity.to_be_bytes());
        out.extend_from_slice(&self.members.to_be_bytes());
        out.push(u8::from(self.has_password));
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.hash);
    }

    /// Decodes a record (hostile bytes: anything may come out of the bucket).
    pub fn decode(bytes: &[u8]) -> Result<RoomRecord, RecordError> {
        let mut r = bytes;
        let version = take(&mut r, 1)?[0];
        if version != VERSION {
            return Err(RecordError::Version(version));
        }
        let n = usize::from(take(&mut r, 1)?[0]);
        let owner = std::str::from_utf8(take(&mut r, n)?)
            .ok()
            .filter(|o| valid_node_name(o))
            .ok_or(RecordError::BadOwner)?
            .to_owned();
        let capacity = u16::from_be_bytes(take(&mut r, 2)?.try_into().unwrap_or_default());
        let members = u16::from_be_bytes(take(&mut r, 2)?.try_into().unwrap_or_default());
        let has_password = take(&mut r, 1)?[0] & 1 == 1;
        let mut salt = [0; SALT_LEN];
        salt.copy_from_slice(take(&mut r, SALT_LEN)?);
        let mut hash = [0; HASH_LEN];
        hash.copy_from_slice(take(&mut r, HASH_LEN)?);
        if !r.is_empty() {
            return Err(RecordError::Trailing);
        }
        Ok(RoomRecord {
            owner,
            capacity,
            members,
            has_password,
            salt,
            hash,
        })
    }
}

/// The first `n` bytes of `r`, advancing it.
fn take<'a>(r: &mut &'a [u8], n: usize) -> Result<&'a [u8], RecordError> {
    if r.len() < n {
        return Err(RecordError::Truncated);
    }
    let (head, tail) = r.split_at(n);
    *r = tail;
    Ok(head)
}

/// The registry key of room `name`.
pub fn room_key(name: &str) -> String {
    URL_SAFE_NO_PAD.encode(name.as_bytes())
}

/// The room name of registry key `key`, if it is one (a key made by something else is
/// ignored).
pub fn room_name(key: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(key).ok()?;
    let name = String::from_utf8(bytes).ok()?;
    (1..=255).contains(&name.len()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(password: &[u8]) -> RoomRecord {
        RoomRecord::new("node-a", 8, password, [7; SALT_LEN])
    }

    #[test]
    fn a_record_round_trips() {
        let r = record(b"secret");
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(RoomRecord::decode(&out), Ok(r));
    }

    #[test]
    fn the_password_is_checked_against_the_salted_hash_and_never_stored() {
        let r = record(b"secret");
        assert!(r.password_ok(b"secret"));
        assert!(!r.password_ok(b"Secret"));
        assert!(!r.password_ok(b""));
        let mut out = Vec::new();
        r.encode(&mut out);
        assert!(!out.windows(6).any(|w| w == b"secret"));
        // Another salt, another hash.
        let other = RoomRecord::new("node-a", 8, b"secret", [8; SALT_LEN]);
        assert_ne!(other.hash, r.hash);
        // No password: any password enters.
        assert!(record(b"").password_ok(b"whatever"));
    }

    #[test]
    fn hostile_records_are_refused_not_trusted() {
        let mut out = Vec::new();
        record(b"x").encode(&mut out);
        for n in 0..out.len() {
            assert_eq!(RoomRecord::decode(&out[..n]), Err(RecordError::Truncated));
        }
        let mut long = out.clone();
        long.push(0);
        assert_eq!(RoomRecord::decode(&long), Err(RecordError::Trailing));
        let mut v = out.clone();
        v[0] = 2;
        assert_eq!(RoomRecord::decode(&v), Err(RecordError::Version(2)));
        let mut owner = out.clone();
        owner[2] = b'.';
        assert_eq!(RoomRecord::decode(&owner), Err(RecordError::BadOwner));
    }

    #[test]
    fn keys_round_trip_any_room_name() {
        for name in ["lobby", "a b/c.d*>", "héllo 🌍", &"x".repeat(255)] {
            let k = room_key(name);
            assert!(
                k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert_eq!(room_name(&k).as_deref(), Some(name));
        }
        assert_eq!(room_name("!!"), None);
        assert_eq!(room_name(""), None);
    }

    #[test]
    fn node_names_are_subject_safe() {
        assert!(valid_node_name("n1"));
        assert!(valid_node_name("eu-west_2"));
        assert!(!valid_node_name(""));
        assert!(!valid_node_name("a.b"));
        assert!(!valid_node_name("a*"));
        assert!(!valid_node_name(&"a".repeat(33)));
    }
}

//! The signing keys the gateway accepts, and what each may call.
//!
//! Loaded once at startup from `GATEWAY_KEYS_FILE`:
//!
//! ```json
//! {"keys": [
//!   {"id": "worker-2026-11", "secret_b64": "…", "scopes": ["*"]},
//!   {"id": "reporting",      "secret_b64": "…", "scopes": ["system.*", "admin.*"]}
//! ]}
//! ```
//!
//! Several keys are active at once so they can be rotated without downtime (add the new key,
//! move the Worker to it, remove the old one). A scope is `*`, an exact operation name, or a
//! `prefix.*` covering every operation under that prefix. Every valid key may call
//! `system.ping` whatever its scopes, so a narrowly scoped key can still check its own setup.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use callmeback_gateway_api::ops::system;
use callmeback_signing::Key;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};

/// Shortest secret accepted: HMAC-SHA256 keys shorter than the hash add no strength, and
/// `gen-key` produces exactly this many random bytes.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read keys file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "keys file is not valid JSON of the form {{\"keys\":[{{\"id\",\"secret_b64\",\"scopes\"}}]}}: {0}"
    )]
    Parse(String),
    #[error("keys file lists no keys")]
    Empty,
    #[error("key id `{0}` must be 1-64 printable ASCII characters without quotes or backslashes")]
    BadId(String),
    #[error("key id `{0}` appears twice")]
    DuplicateId(String),
    #[error("secret of key `{0}` is not valid standard base64")]
    BadSecret(String),
    #[error("secret of key `{id}` is {len} bytes; at least {MIN_SECRET_BYTES} are required")]
    ShortSecret { id: String, len: usize },
    #[error("key `{id}` has invalid scope `{scope}` (use `*`, an operation name, or `prefix.*`)")]
    BadScope { id: String, scope: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    keys: Vec<KeyFileEntry>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct KeyFileEntry {
    id: String,
    secret_b64: String,
    scopes: Vec<String>,
}

/// Which operations a key may call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    everything: bool,
    exact: Vec<String>,
    /// Stored with the trailing dot (`system.`), so `system.*` does not match `systemx.ping`.
    prefixes: Vec<String>,
}

impl Scopes {
    /// Parses scope strings; the error is the first invalid one.
    pub fn parse<'s>(scopes: impl IntoIterator<Item = &'s str>) -> Result<Self, String> {
        let mut parsed = Scopes::default();
        for scope in scopes {
            if scope == "*" {
                parsed.everything = true;
            } else if let Some(prefix) = scope.strip_suffix(".*") {
                if !is_scope_prefix(prefix) {
                    return Err(scope.to_owned());
                }
                parsed.prefixes.push(format!("{prefix}."));
            } else if crate::ops::is_valid_op_name(scope) {
                parsed.exact.push(scope.to_owned());
            } else {
                return Err(scope.to_owned());
            }
        }
        Ok(parsed)
    }

    /// Whether the scopes cover `op` (`system.ping` is always allowed; see the module docs).
    pub fn allows(&self, op: &str) -> bool {
        self.everything
            || op == system::PING.name
            || self.exact.iter().any(|exact| exact == op)
            || self
                .prefixes
                .iter()
                .any(|prefix| op.starts_with(prefix.as_str()))
    }
}

fn is_scope_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// A key and its scopes.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub key: Key,
    pub scopes: Scopes,
}

/// Every accepted key, by id.
#[derive(Clone, Default)]
pub struct KeyRing {
    entries: HashMap<String, KeyEntry>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<_> = self.entries.keys().collect();
        ids.sort();
        f.debug_struct("KeyRing").field("key_ids", &ids).finish()
    }
}

impl KeyRing {
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let bytes = std::fs::read(path).map_err(|source| KeyFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&bytes)
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, KeyFileError> {
        // serde's message can quote the offending value, which here could be a secret.
        let file: KeyFile = serde_json::from_slice(bytes).map_err(|error| {
            KeyFileError::Parse(format!("line {} column {}", error.line(), error.column()))
        })?;
        if file.keys.is_empty() {
            return Err(KeyFileError::Empty);
        }
        let mut ring = KeyRing::default();
        for entry in file.keys {
            let key = parse_entry(&entry)?;
            if ring.entries.contains_key(&entry.id) {
                return Err(KeyFileError::DuplicateId(entry.id));
            }
            ring.entries.insert(entry.id, key);
        }
        Ok(ring)
    }

    /// Builds a ring from keys already in memory (tests, embedding).
    pub fn from_entries(entries: impl IntoIterator<Item = KeyEntry>) -> Self {
        Self {
            entries: entries
                .into_iter()
                .map(|entry| (entry.key.id().to_owned(), entry))
                .collect(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&KeyEntry> {
        self.entries.get(id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn parse_entry(entry: &KeyFileEntry) -> Result<KeyEntry, KeyFileError> {
    if !is_valid_key_id(&entry.id) {
        return Err(KeyFileError::BadId(entry.id.clone()));
    }
    let secret = BASE64
        .decode(entry.secret_b64.trim())
        .map_err(|_| KeyFileError::BadSecret(entry.id.clone()))?;
    if secret.len() < MIN_SECRET_BYTES {
        return Err(KeyFileError::ShortSecret {
            id: entry.id.clone(),
            len: secret.len(),
        });
    }
    let scopes = Scopes::parse(entry.scopes.iter().map(String::as_str)).map_err(|scope| {
        KeyFileError::BadScope {
            id: entry.id.clone(),
            scope,
        }
    })?;
    Ok(KeyEntry {
        key: Key::new(entry.id.clone(), secret),
        scopes,
    })
}

/// Key ids travel as RFC 8941 strings: printable ASCII, and we also keep out `"` and `\` so an
/// id never needs escaping in logs or headers.
fn is_valid_key_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// A fresh keys-file entry with a random 32-byte secret and scope `*` (`db-gateway gen-key`).
pub fn generate_entry_json(id: &str) -> Result<String, KeyFileError> {
    if !is_valid_key_id(id) {
        return Err(KeyFileError::BadId(id.to_owned()));
    }
    let mut secret = [0u8; MIN_SECRET_BYTES];
    rand::rng().fill_bytes(&mut secret);
    let entry = KeyFileEntry {
        id: id.to_owned(),
        secret_b64: BASE64.encode(secret),
        scopes: vec!["*".to_owned()],
    };
    Ok(serde_json::to_string(&entry).expect("invariant: a struct of strings serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> String {
        BASE64.encode([7u8; 32])
    }

    #[test]
    fn scopes_match_exact_prefix_and_everything() {
        let scopes = Scopes::parse(["system.*", "users.get"]).unwrap();
        assert!(scopes.allows("system.schema_version"));
        assert!(scopes.allows("users.get"));
        assert!(!scopes.allows("users.get_by_email"));
        assert!(!scopes.allows("systemx.ping"));
        assert!(!scopes.allows("credits.debit"));
        assert!(Scopes::parse(["*"]).unwrap().allows("credits.debit"));
        assert!(
            Scopes::parse(["admin.reports.*"])
                .unwrap()
                .allows("admin.reports.daily")
        );
    }

    #[test]
    fn every_key_may_ping() {
        let nothing = Scopes::parse([]).unwrap();
        assert!(nothing.allows(system::PING.name));
        assert!(!nothing.allows(system::SCHEMA_VERSION.name));
    }

    #[test]
    fn bad_scopes_are_refused() {
        for bad in ["", "sys*", "*.ping", "system.", ".*", "Users.get", "a..b.*"] {
            assert_eq!(Scopes::parse([bad]), Err(bad.to_owned()), "{bad:?}");
        }
    }

    #[test]
    fn key_file_loads_several_keys() {
        let json = format!(
            r#"{{"keys":[{{"id":"worker-2026-11","secret_b64":"{s}","scopes":["*"]}},
                        {{"id":"reporting","secret_b64":"{s}","scopes":["system.*","admin.*"]}}]}}"#,
            s = secret()
        );
        let ring = KeyRing::from_json(json.as_bytes()).unwrap();
        assert_eq!(ring.len(), 2);
        assert!(ring.get("reporting").unwrap().scopes.allows("admin.users"));
        assert!(!ring.get("reporting").unwrap().scopes.allows("users.get"));
        assert!(!format!("{ring:?}").contains(&secret()));
    }

    #[test]
    fn key_file_problems_are_reported_without_secrets() {
        let short = BASE64.encode([1u8; 16]);
        let cases = [
            (r#"{"keys":[]}"#.to_owned(), "no keys"),
            (
                format!(r#"{{"keys":[{{"id":"a","secret_b64":"{short}","scopes":[]}}]}}"#),
                "16 bytes",
            ),
            (
                r#"{"keys":[{"id":"a","secret_b64":"***","scopes":[]}]}"#.to_owned(),
                "base64",
            ),
            (
                format!(
                    r#"{{"keys":[{{"id":"a b","secret_b64":"{}","scopes":[]}}]}}"#,
                    secret()
                ),
                "key id",
            ),
            (
                format!(
                    r#"{{"keys":[{{"id":"a","secret_b64":"{}","scopes":["x"]}}]}}"#,
                    secret()
                ),
                "scope",
            ),
            (
                format!(
                    r#"{{"keys":[{{"id":"a","secret_b64":"{s}","scopes":[]}},{{"id":"a","secret_b64":"{s}","scopes":[]}}]}}"#,
                    s = secret()
                ),
                "twice",
            ),
            (
                r#"{"keys":[{"id":"a","secret_b64":"c2VjcmV0","scopes":[],"x":1}]}"#.to_owned(),
                "line",
            ),
        ];
        for (json, expected) in cases {
            let message = KeyRing::from_json(json.as_bytes()).unwrap_err().to_string();
            assert!(
                message.contains(expected),
                "{message:?} should mention {expected:?}"
            );
            assert!(!message.contains(&secret()) && !message.contains(&short));
        }
    }

    #[test]
    fn generated_entries_load_and_differ() {
        let first = generate_entry_json("worker-2026-12").unwrap();
        let second = generate_entry_json("worker-2026-12").unwrap();
        assert_ne!(first, second);
        let ring = KeyRing::from_json(format!(r#"{{"keys":[{first}]}}"#).as_bytes()).unwrap();
        assert!(
            ring.get("worker-2026-12")
                .unwrap()
                .scopes
                .allows("anything.at_all")
        );
        assert!(generate_entry_json("bad id").is_err());
    }
}

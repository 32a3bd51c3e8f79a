//! Prefixed random identifiers such as `usr_0k3w9x…`.
//!
//! Every row id is a short type prefix followed by 128 random bits in lowercase Crockford
//! base32 (26 characters). The prefix tells you what kind of object an id names in logs,
//! support tickets and URLs, and it stops an id of one kind being passed where another is
//! expected. 128 bits make collisions irrelevant and ids unguessable. Crockford's alphabet leaves
//! out `i l o u`, so ids read aloud or copied by hand survive.
//!
//! This crate does not read OS randomness, because it must also build for wasm. The caller
//! supplies the 16 random bytes: `crypto.getRandomValues` in the Worker, `rand` natively.

/// Id prefixes, one per table. They are part of stored data, so never change one.
pub mod prefix {
    pub const USER: &str = "usr";
    pub const CALL: &str = "call";
    pub const SCHEDULED_CALL: &str = "sch";
    pub const CALL_LOG: &str = "clog";
    pub const CREDIT_TRANSACTION: &str = "txn";
    pub const COST_BREAKDOWN: &str = "cost";
    pub const PERSONA_RELATIONSHIP: &str = "rel";
    /// JWT ids (`jti`), which are also the key of the token blacklist.
    pub const TOKEN: &str = "jti";
    /// Devices that have signed in (named in device tokens and login limits, not stored).
    pub const DEVICE: &str = "dev";
}

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Characters in the random part: ceil(128 / 5).
pub const RANDOM_PART_LEN: usize = 26;

/// Builds `"{prefix}_{26 base32 chars}"` from caller-supplied randomness.
pub fn new_id(prefix: &str, random_bytes: [u8; 16]) -> String {
    let value = u128::from_be_bytes(random_bytes);
    let mut id = String::with_capacity(prefix.len() + 1 + RANDOM_PART_LEN);
    id.push_str(prefix);
    id.push('_');
    // 26 × 5 = 130 bits, so the first character carries only the top 3 bits.
    for index in (0..RANDOM_PART_LEN).rev() {
        let shift = index * 5;
        let digit = (value >> shift) & 0b1_1111;
        id.push(char::from(ALPHABET[digit as usize]));
    }
    id
}

/// Whether `candidate` has the exact shape [`new_id`] produces for `prefix`. Use it to reject
/// ids from URLs and request bodies before they are used in a query.
pub fn is_valid_id(prefix: &str, candidate: &str) -> bool {
    let Some(random_part) = candidate
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
    else {
        return false;
    };
    random_part.len() == RANDOM_PART_LEN
        && random_part.bytes().all(|b| ALPHABET.contains(&b))
        // The leading character holds 3 bits, so only 0-7 can appear there.
        && random_part.as_bytes()[0] <= b'7'
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference decoder, written independently of the encoder's shifting, to prove that no bits
    /// are lost.
    fn decode(random_part: &str) -> u128 {
        random_part.bytes().fold(0u128, |acc, b| {
            let digit = ALPHABET
                .iter()
                .position(|&a| a == b)
                .expect("alphabet char");
            (acc << 5) | digit as u128
        })
    }

    /// Deterministic byte patterns (no RNG dependency in the domain crate).
    fn pattern(seed: u64) -> [u8; 16] {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut bytes = [0u8; 16];
        for byte in &mut bytes {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = (state >> 24) as u8;
        }
        bytes
    }

    #[test]
    fn extremes_encode_as_expected() {
        assert_eq!(
            new_id(prefix::USER, [0; 16]),
            "usr_00000000000000000000000000"
        );
        assert_eq!(
            new_id(prefix::CALL, [0xff; 16]),
            "call_7zzzzzzzzzzzzzzzzzzzzzzzzz"
        );
        let mut one = [0u8; 16];
        one[15] = 1;
        assert_eq!(new_id("x", one), "x_00000000000000000000000001");
    }

    #[test]
    fn encoding_round_trips_and_validates() {
        for seed in 0..2000u64 {
            let bytes = pattern(seed);
            let id = new_id(prefix::CREDIT_TRANSACTION, bytes);
            assert!(id.starts_with("txn_"), "{id}");
            assert_eq!(id.len(), 4 + RANDOM_PART_LEN);
            assert!(is_valid_id(prefix::CREDIT_TRANSACTION, &id), "{id}");
            assert_eq!(decode(&id[4..]), u128::from_be_bytes(bytes), "{id}");
        }
    }

    #[test]
    fn distinct_randomness_gives_distinct_ids() {
        let mut ids: Vec<String> = (0..2000u64)
            .map(|s| new_id(prefix::USER, pattern(s)))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 2000);
    }

    #[test]
    fn validation_rejects_wrong_shapes() {
        let good = new_id(prefix::USER, pattern(7));
        assert!(is_valid_id(prefix::USER, &good));
        assert!(!is_valid_id(prefix::CALL, &good));
        assert!(!is_valid_id("us", &good));
        assert!(!is_valid_id(prefix::USER, &good[..good.len() - 1]));
        assert!(!is_valid_id(prefix::USER, &format!("{good}0")));
        assert!(!is_valid_id(prefix::USER, &good.to_ascii_uppercase()));
        assert!(!is_valid_id(prefix::USER, &good.replacen('_', "-", 1)));
        assert!(!is_valid_id(prefix::USER, "usr_8zzzzzzzzzzzzzzzzzzzzzzzzz"));
        for banned in ['i', 'l', 'o', 'u'] {
            let mut candidate = good.clone();
            candidate.pop();
            candidate.push(banned);
            assert!(!is_valid_id(prefix::USER, &candidate), "{candidate}");
        }
        assert!(!is_valid_id(prefix::USER, ""));
        assert!(!is_valid_id(prefix::USER, "user_123"));
    }

    #[test]
    fn prefixes_are_unique_and_url_safe() {
        let all = [
            prefix::USER,
            prefix::CALL,
            prefix::SCHEDULED_CALL,
            prefix::CALL_LOG,
            prefix::CREDIT_TRANSACTION,
            prefix::COST_BREAKDOWN,
            prefix::PERSONA_RELATIONSHIP,
            prefix::TOKEN,
        ];
        for p in all {
            assert!(
                !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()),
                "{p}"
            );
        }
        let mut sorted = all.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len());
    }
}

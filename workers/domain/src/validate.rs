//! Validation of API input, reported field by field.
//!
//! Each request body is checked in one pass. The answer collects *every* problem into
//! [`FieldErrors`], so a sign-up form can show all of its mistakes at once. On the wire that is a
//! JSON object keyed by field name:
//!
//! ```json
//! {"email": {"code": "invalid_email", "message": "must be a valid email address"}}
//! ```
//!
//! Clients branch on `code`, which is stable. `message` is English text for humans and may be
//! reworded.
//!
//! Values that pass come back as newtypes ([`Email`], [`PhoneE164`], [`Name`], [`Password`]). Code
//! further in then holds proof that a value was checked, instead of a `String` it has to trust.
//! Phone numbers and passwords are personal or secret, so their `Debug` and `Display` output is
//! masked. A `{:?}` in a log line cannot leak them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// One rule a value broke. The [`code`](Self::code) strings are a public API; do not change them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("is required")]
    Required,
    #[error("must be at least {min} characters")]
    TooShort { min: usize },
    #[error("must be at most {max} characters")]
    TooLong { max: usize },
    #[error("contains characters that are not allowed")]
    InvalidCharacters,
    #[error("must be a valid email address")]
    InvalidEmail,
    #[error("must be a phone number in international format, e.g. +15551234567")]
    InvalidPhone,
    #[error("must be at least {min} characters")]
    PasswordTooShort { min: usize },
    #[error("must be at most {max} characters")]
    PasswordTooLong { max: usize },
    #[error("must be greater than zero")]
    NotPositive,
    #[error("must be between {min} and {max}")]
    OutOfRange { min: i64, max: i64 },
    #[error("must not exceed the monthly spending limit")]
    PerCallExceedsMonthly,
    #[error("must be an IANA time zone name such as Europe/Berlin")]
    InvalidTimeZone,
    #[error("must be a time of day as HH:MM (24-hour clock)")]
    InvalidTimeOfDay,
    #[error("must be days of the week such as mon, tue, wed")]
    InvalidDay,
}

impl ValidationError {
    /// Stable machine-readable code.
    pub const fn code(&self) -> &'static str {
        match self {
            ValidationError::Required => "required",
            ValidationError::TooShort { .. } => "too_short",
            ValidationError::TooLong { .. } => "too_long",
            ValidationError::InvalidCharacters => "invalid_characters",
            ValidationError::InvalidEmail => "invalid_email",
            ValidationError::InvalidPhone => "invalid_phone",
            ValidationError::PasswordTooShort { .. } => "password_too_short",
            ValidationError::PasswordTooLong { .. } => "password_too_long",
            ValidationError::NotPositive => "not_positive",
            ValidationError::OutOfRange { .. } => "out_of_range",
            ValidationError::PerCallExceedsMonthly => "per_call_exceeds_monthly",
            ValidationError::InvalidTimeZone => "invalid_time_zone",
            ValidationError::InvalidTimeOfDay => "invalid_time_of_day",
            ValidationError::InvalidDay => "invalid_day",
        }
    }
}

/// One field's error as it appears on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub code: Cow<'static, str>,
    pub message: String,
}

impl FieldError {
    /// An error with a code of the caller's own (for rules that are not a [`ValidationError`]).
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        FieldError {
            code: Cow::Borrowed(code),
            message: message.into(),
        }
    }
}

impl From<ValidationError> for FieldError {
    fn from(error: ValidationError) -> Self {
        FieldError {
            code: Cow::Borrowed(error.code()),
            message: error.to_string(),
        }
    }
}

/// Every invalid field of one request. It is the error type of the validation boundary.
///
/// It keeps one error per field, the first one reported, because a user fixes one thing at a
/// time. Fields are kept sorted, so the JSON comes out in the same order every time.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FieldErrors {
    fields: BTreeMap<String, FieldError>,
}

impl FieldErrors {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `error` for `field` unless that field already has one.
    pub fn add(&mut self, field: &str, error: impl Into<FieldError>) {
        self.fields
            .entry(field.to_owned())
            .or_insert_with(|| error.into());
    }

    /// Returns the value, or records the error and returns `None`. Validating a whole body is then
    /// a list of `let x = errors.check("x", X::parse(..));` lines followed by
    /// [`into_result`](Self::into_result).
    pub fn check<T>(&mut self, field: &str, result: Result<T, ValidationError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.add(field, error);
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn get(&self, field: &str) -> Option<&FieldError> {
        self.fields.get(field)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldError)> {
        self.fields
            .iter()
            .map(|(field, error)| (field.as_str(), error))
    }

    /// `Ok(())` when nothing was recorded, otherwise `Err(self)`.
    pub fn into_result(self) -> Result<(), FieldErrors> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }
}

/// Names the fields but not their values: the values may be personal.
impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid fields:")?;
        for (field, error) in &self.fields {
            write!(f, " {field} ({})", error.code)?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldErrors {}

fn char_count_between(value: &str, min: usize, max: usize) -> Result<(), ValidationError> {
    let count = value.chars().count();
    if count < min {
        Err(ValidationError::TooShort { min })
    } else if count > max {
        Err(ValidationError::TooLong { max })
    } else {
        Ok(())
    }
}

/// Free text from a user (descriptions, notes), trimmed and limited to `min_chars..=max_chars`
/// characters (Unicode scalar values, not bytes).
///
/// Line breaks and tabs are allowed. Other control characters are refused: they have no place in
/// prose, and they can mangle logs, prompts and terminals further along.
pub fn bounded_text(
    input: &str,
    min_chars: usize,
    max_chars: usize,
) -> Result<String, ValidationError> {
    let trimmed = input.trim();
    if trimmed.is_empty() && min_chars > 0 {
        return Err(ValidationError::Required);
    }
    char_count_between(trimmed, min_chars, max_chars)?;
    if trimmed
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ValidationError::InvalidCharacters);
    }
    Ok(trimmed.to_owned())
}

/// A normalised email address: trimmed, lowercase, and of a sane shape.
///
/// The check covers the forms people actually type: `local@domain.tld`, with the RFC 5322
/// "atext" characters and dots in the local part, and LDH labels in the domain. Quoted local
/// parts, IP-literal domains and non-ASCII addresses are refused. They are legal, but they are
/// rare in sign-ups and common in abuse. An internationalised domain can still be entered in its
/// `xn--` form. The whole address is lowercased so that uniqueness does not depend on case, even
/// though RFC 5321 lets the local part be case-sensitive; no mainstream provider makes use of
/// that.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    /// RFC 5321's limit on a forward path, minus the angle brackets.
    pub const MAX_LEN: usize = 254;
    const MAX_LOCAL_LEN: usize = 64;
    const MAX_LABEL_LEN: usize = 63;

    pub fn parse(input: &str) -> Result<Email, ValidationError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(ValidationError::Required);
        }
        if trimmed.len() > Self::MAX_LEN {
            return Err(ValidationError::TooLong { max: Self::MAX_LEN });
        }
        if !trimmed.is_ascii() {
            return Err(ValidationError::InvalidEmail);
        }
        let email = trimmed.to_ascii_lowercase();
        let (local, domain) = email.split_once('@').ok_or(ValidationError::InvalidEmail)?;
        if Self::is_valid_local(local) && Self::is_valid_domain(domain) {
            Ok(Email(email))
        } else {
            Err(ValidationError::InvalidEmail)
        }
    }

    fn is_valid_local(local: &str) -> bool {
        const ATEXT_SYMBOLS: &str = "!#$%&'*+/=?^_`{|}~-";
        !local.is_empty()
            && local.len() <= Self::MAX_LOCAL_LEN
            && local.split('.').all(|atom| {
                !atom.is_empty()
                    && atom
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ATEXT_SYMBOLS.contains(c))
            })
    }

    fn is_valid_domain(domain: &str) -> bool {
        let labels: Vec<&str> = domain.split('.').collect();
        let well_formed_labels = labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= Self::MAX_LABEL_LEN
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
        // A bare host ("localhost") cannot receive mail from us, and an all-digit top-level label
        // means an IP address, not a domain.
        let has_real_tld = labels.len() >= 2
            && labels
                .last()
                .is_some_and(|tld| tld.chars().any(|c| c.is_ascii_alphabetic()));
        well_formed_labels && has_real_tld
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Email {
    type Error = ValidationError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Email::parse(&value)
    }
}

impl From<Email> for String {
    fn from(email: Email) -> String {
        email.0
    }
}

/// A phone number in E.164 form (`+` then 7 to 15 digits, the first not 0).
///
/// Phone numbers must never reach logs, so `Debug` and `Display` show only the last two digits
/// (`+***67`). Use [`as_str`](Self::as_str) where the real number is needed: the Twilio request
/// and the database. Serialization writes the real number for the same reason. Never serialize
/// one into a log line.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneE164(String);

impl PhoneE164 {
    const MIN_DIGITS: usize = 7;
    const MAX_DIGITS: usize = 15;

    /// Accepts what people paste, e.g. `+1 (555) 123-4567`. Whitespace, ASCII and typographic
    /// dashes and parentheses are removed before the strict E.164 check. A missing `+` is *not*
    /// filled in: the country code would have to be guessed.
    pub fn parse(input: &str) -> Result<PhoneE164, ValidationError> {
        let compact: String = input
            .chars()
            .filter(|&c| {
                !(c.is_whitespace()
                    || matches!(c, '-' | '(' | ')' | '\u{2010}'..='\u{2015}' | '\u{2212}'))
            })
            .collect();
        if compact.is_empty() {
            return Err(ValidationError::Required);
        }
        let digits = compact
            .strip_prefix('+')
            .ok_or(ValidationError::InvalidPhone)?;
        let valid = (Self::MIN_DIGITS..=Self::MAX_DIGITS).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if valid {
            Ok(PhoneE164(compact))
        } else {
            Err(ValidationError::InvalidPhone)
        }
    }

    /// The real number, e.g. `+15551234567`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A masked form for logs and UI confirmations. It has a fixed length, so it does not reveal
    /// how many digits the number has either.
    pub fn masked(&self) -> String {
        // The number is ASCII and at least 8 bytes long, so this is always a char boundary.
        let last_two = &self.0[self.0.len() - 2..];
        format!("+***{last_two}")
    }
}

impl fmt::Debug for PhoneE164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneE164({})", self.masked())
    }
}

impl fmt::Display for PhoneE164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl TryFrom<String> for PhoneE164 {
    type Error = ValidationError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        PhoneE164::parse(&value)
    }
}

impl From<PhoneE164> for String {
    fn from(phone: PhoneE164) -> String {
        phone.0
    }
}

/// A password that meets the policy for *new* passwords. `Debug` is redacted.
///
/// Following NIST SP 800-63B §3.1.1.2, the only rule is length: at least 10 and at most 128
/// characters. Characters are counted, not bytes, so a passphrase in any script is treated the
/// same. There are no composition rules, and the value is not trimmed, because spaces are valid
/// characters. The upper bound keeps the cost of hashing predictable.
///
/// Only apply the policy when a password is set. Login must accept any string and let the hash
/// comparison decide; otherwise a policy change locks out existing accounts.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub const MIN_CHARS: usize = 10;
    pub const MAX_CHARS: usize = 128;

    /// Checks a candidate new password against the policy without taking ownership.
    pub fn check_policy(candidate: &str) -> Result<(), ValidationError> {
        let count = candidate.chars().count();
        if count < Self::MIN_CHARS {
            Err(ValidationError::PasswordTooShort {
                min: Self::MIN_CHARS,
            })
        } else if count > Self::MAX_CHARS {
            Err(ValidationError::PasswordTooLong {
                max: Self::MAX_CHARS,
            })
        } else {
            Ok(())
        }
    }

    pub fn new(candidate: String) -> Result<Password, ValidationError> {
        Self::check_policy(&candidate)?;
        Ok(Password(candidate))
    }

    /// The plaintext, for the password hasher only.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A display name: 1 to 100 characters after trimming, on a single line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(input: &str) -> Result<Name, ValidationError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(ValidationError::Required);
        }
        char_count_between(trimmed, 1, Self::MAX_CHARS)?;
        // Names end up in prompts, emails and log-adjacent places; a newline there is an injection.
        if trimmed.chars().any(char::is_control) {
            return Err(ValidationError::InvalidCharacters);
        }
        Ok(Name(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Name {
    type Error = ValidationError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Name::parse(&value)
    }
}

impl From<Name> for String {
    fn from(name: Name) -> String {
        name.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_errors_serialize_to_the_documented_shape() {
        let mut errors = FieldErrors::new();
        errors.add("email", ValidationError::InvalidEmail);
        errors.add("password", ValidationError::PasswordTooShort { min: 10 });
        let json = serde_json::to_value(&errors).expect("serialize field errors");
        assert_eq!(
            json,
            serde_json::json!({
                "email": {"code": "invalid_email", "message": "must be a valid email address"},
                "password": {"code": "password_too_short", "message": "must be at least 10 characters"},
            })
        );
        let back: FieldErrors = serde_json::from_value(json).expect("deserialize field errors");
        assert_eq!(back, errors);
    }

    #[test]
    fn field_errors_keep_the_first_error_per_field() {
        let mut errors = FieldErrors::new();
        errors.add("name", ValidationError::Required);
        errors.add("name", ValidationError::TooLong { max: 100 });
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors.get("name").map(|e| e.code.as_ref()),
            Some("required")
        );
    }

    #[test]
    fn check_collects_every_failing_field() {
        let mut errors = FieldErrors::new();
        let email = errors.check("email", Email::parse("not-an-email"));
        let phone = errors.check("phone", PhoneE164::parse("+15551234567"));
        let name = errors.check("name", Name::parse("   "));
        assert!(email.is_none());
        assert!(phone.is_some());
        assert!(name.is_none());
        let fields: Vec<&str> = errors.iter().map(|(field, _)| field).collect();
        assert_eq!(fields, ["email", "name"]);
        let error = errors.into_result().expect_err("two fields failed");
        assert_eq!(
            error.to_string(),
            "invalid fields: email (invalid_email) name (required)"
        );
        assert_eq!(FieldErrors::new().into_result(), Ok(()));
    }

    #[test]
    fn every_code_is_distinct_snake_case() {
        let all = [
            ValidationError::Required,
            ValidationError::TooShort { min: 1 },
            ValidationError::TooLong { max: 1 },
            ValidationError::InvalidCharacters,
            ValidationError::InvalidEmail,
            ValidationError::InvalidPhone,
            ValidationError::PasswordTooShort { min: 1 },
            ValidationError::PasswordTooLong { max: 1 },
            ValidationError::NotPositive,
            ValidationError::OutOfRange { min: 1, max: 2 },
            ValidationError::PerCallExceedsMonthly,
        ];
        let mut codes: Vec<&str> = all.iter().map(ValidationError::code).collect();
        for code in &codes {
            assert!(
                code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}"
            );
        }
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }

    #[test]
    fn email_is_trimmed_and_lowercased() {
        let email = Email::parse("  Alice.Smith+calls@Example.COM \n").expect("valid email");
        assert_eq!(email.as_str(), "alice.smith+calls@example.com");
        assert_eq!(email.to_string(), "alice.smith+calls@example.com");
    }

    #[test]
    fn email_accepts_common_shapes() {
        for ok in [
            "a@b.co",
            "first.last@sub.domain.example",
            "user_name-1@my-host.io",
            "o'brien@example.ie",
            "x@xn--80ak6aa92e.com",
            "1234@123.example",
            "{weird}|~@example.org",
        ] {
            assert!(Email::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn email_rejects_broken_shapes() {
        for bad in [
            "plain",
            "@example.com",
            "user@",
            "user@@example.com",
            "a@b@example.com",
            "user@localhost",
            "user@example",
            "user@192.168.0.1",
            "user@[192.168.0.1]",
            ".user@example.com",
            "user.@example.com",
            "us..er@example.com",
            "user@-example.com",
            "user@example-.com",
            "user@exa_mple.com",
            "user@example..com",
            "user@.example.com",
            "user@example.com.",
            "us er@example.com",
            "\"quoted\"@example.com",
            "üser@example.com",
            "user@exämple.com",
            "user@example.com\0",
        ] {
            assert_eq!(
                Email::parse(bad),
                Err(ValidationError::InvalidEmail),
                "{bad:?}"
            );
        }
        assert_eq!(Email::parse("  "), Err(ValidationError::Required));
    }

    #[test]
    fn email_length_limits() {
        let local_64 = "a".repeat(64);
        assert!(Email::parse(&format!("{local_64}@example.com")).is_ok());
        assert_eq!(
            Email::parse(&format!("a{local_64}@example.com")),
            Err(ValidationError::InvalidEmail)
        );
        let label_63 = "d".repeat(63);
        assert!(Email::parse(&format!("u@{label_63}.com")).is_ok());
        assert_eq!(
            Email::parse(&format!("u@d{label_63}.com")),
            Err(ValidationError::InvalidEmail)
        );
        // "u@" + four labels + four dots + "com" is 9 bytes plus the label lengths.
        let address_with_labels = |lengths: [usize; 4]| {
            let labels: Vec<String> = lengths.iter().map(|&len| "d".repeat(len)).collect();
            format!("u@{}.com", labels.join("."))
        };
        let domain_for = |total: usize| {
            let spread = total - 9;
            let base = spread / 4;
            let mut lengths = [base; 4];
            for length in lengths.iter_mut().take(spread % 4) {
                *length += 1;
            }
            address_with_labels(lengths)
        };
        let at_limit = domain_for(254);
        assert_eq!(at_limit.len(), 254);
        assert!(Email::parse(&at_limit).is_ok(), "{at_limit}");
        let over_limit = domain_for(255);
        assert_eq!(over_limit.len(), 255);
        assert_eq!(
            Email::parse(&over_limit),
            Err(ValidationError::TooLong { max: 254 })
        );
        assert_eq!(ValidationError::TooLong { max: 254 }.code(), "too_long");
    }

    #[test]
    fn email_serde_validates() {
        let email: Email = serde_json::from_str("\"Bob@Example.com\"").expect("valid email");
        assert_eq!(email.as_str(), "bob@example.com");
        assert_eq!(
            serde_json::to_string(&email).expect("serialize"),
            "\"bob@example.com\""
        );
        assert!(serde_json::from_str::<Email>("\"nope\"").is_err());
    }

    #[test]
    fn phone_strips_formatting() {
        for (input, expected) in [
            ("+15551234567", "+15551234567"),
            ("+1 (555) 123-4567", "+15551234567"),
            (" +44 20 7946 0958 ", "+442079460958"),
            ("+49\u{00a0}30\u{2013}123456", "+4930123456"),
            ("+1\t555\n1234567", "+15551234567"),
        ] {
            let phone = PhoneE164::parse(input).expect("valid phone");
            assert_eq!(phone.as_str(), expected, "{input:?}");
        }
    }

    #[test]
    fn phone_rejects_non_e164() {
        for bad in [
            "15551234567",
            "+05551234567",
            "+",
            "++15551234567",
            "+1555123456a",
            "+1.555.123.4567",
            "+１５５５１２３４５６７",
            "+123456",
            "+1234567890123456",
            "0044 20 7946 0958",
            "+1 555 123 4567 ext 9",
        ] {
            assert_eq!(
                PhoneE164::parse(bad),
                Err(ValidationError::InvalidPhone),
                "{bad:?}"
            );
        }
        assert_eq!(PhoneE164::parse(" - ( ) "), Err(ValidationError::Required));
    }

    #[test]
    fn phone_digit_count_bounds_hold_for_every_length() {
        for digits in 1..=20usize {
            let number = format!("+{}", "1".repeat(digits));
            let accepted = PhoneE164::parse(&number).is_ok();
            assert_eq!(accepted, (7..=15).contains(&digits), "{digits} digits");
        }
    }

    #[test]
    fn phone_never_prints_more_than_two_digits() {
        let phone = PhoneE164::parse("+15551234567").expect("valid phone");
        assert_eq!(phone.to_string(), "+***67");
        assert_eq!(format!("{phone:?}"), "PhoneE164(+***67)");
        assert_eq!(phone.masked(), "+***67");
        let short = PhoneE164::parse("+1234567").expect("valid phone");
        assert_eq!(short.to_string(), "+***67");
        for rendering in [
            format!("{phone}"),
            format!("{phone:?}"),
            format!("{phone:#?}"),
        ] {
            assert!(!rendering.contains("5551234"), "{rendering}");
        }
    }

    #[test]
    fn phone_serde_carries_the_real_number() {
        let phone: PhoneE164 = serde_json::from_str("\"+1 555 123 4567\"").expect("valid phone");
        assert_eq!(
            serde_json::to_string(&phone).expect("serialize"),
            "\"+15551234567\""
        );
        assert!(serde_json::from_str::<PhoneE164>("\"5551234567\"").is_err());
    }

    #[test]
    fn password_policy_counts_characters_not_bytes() {
        assert_eq!(
            Password::check_policy("123456789"),
            Err(ValidationError::PasswordTooShort { min: 10 })
        );
        assert_eq!(Password::check_policy("1234567890"), Ok(()));
        // 9 characters but 27 bytes: still too short.
        assert_eq!(
            Password::check_policy("密码密码密码密码密"),
            Err(ValidationError::PasswordTooShort { min: 10 })
        );
        assert_eq!(Password::check_policy("密码密码密码密码密码"), Ok(()));
        // 128 four-byte characters are fine, 129 are not.
        assert_eq!(Password::check_policy(&"🔑".repeat(128)), Ok(()));
        let too_long = Password::check_policy(&"🔑".repeat(129)).expect_err("129 chars");
        assert_eq!(too_long, ValidationError::PasswordTooLong { max: 128 });
        assert_eq!(too_long.code(), "password_too_long");
        assert_eq!(
            ValidationError::PasswordTooShort { min: 10 }.code(),
            "password_too_short"
        );
    }

    #[test]
    fn password_policy_has_no_composition_rules_and_keeps_spaces() {
        for ok in ["aaaaaaaaaa", "          ", "correct horse battery staple"] {
            assert_eq!(Password::check_policy(ok), Ok(()), "{ok:?}");
        }
        let password = Password::new("  padded secret  ".to_owned()).expect("meets policy");
        assert_eq!(password.expose_secret(), "  padded secret  ");
    }

    #[test]
    fn password_length_bounds_hold_for_every_length() {
        for len in 0..=200usize {
            let candidate = "é".repeat(len);
            assert_eq!(
                Password::check_policy(&candidate).is_ok(),
                (10..=128).contains(&len),
                "{len}"
            );
        }
    }

    #[test]
    fn password_debug_is_redacted() {
        let password = Password::new("hunter2hunter2".to_owned()).expect("meets policy");
        let rendered = format!("{password:?}");
        assert!(!rendered.contains("hunter2"), "{rendered}");
        assert_eq!(rendered, "Password(<redacted>)");
    }

    #[test]
    fn name_rules() {
        assert_eq!(
            Name::parse("  Ada Lovelace ").expect("valid").as_str(),
            "Ada Lovelace"
        );
        assert_eq!(Name::parse("").unwrap_err(), ValidationError::Required);
        assert_eq!(Name::parse(" \t ").unwrap_err(), ValidationError::Required);
        assert_eq!(
            Name::parse("Ada\nLovelace").unwrap_err(),
            ValidationError::InvalidCharacters
        );
        assert_eq!(
            Name::parse("Ada\u{7}").unwrap_err(),
            ValidationError::InvalidCharacters
        );
        assert!(Name::parse(&"é".repeat(100)).is_ok());
        assert_eq!(
            Name::parse(&"é".repeat(101)).unwrap_err(),
            ValidationError::TooLong { max: 100 }
        );
        // Surrounding whitespace does not count towards the limit.
        assert!(Name::parse(&format!("  {}  ", "x".repeat(100))).is_ok());
        let name: Name = serde_json::from_str("\" Grace \"").expect("valid name");
        assert_eq!(name.to_string(), "Grace");
    }

    #[test]
    fn bounded_text_rules() {
        assert_eq!(bounded_text("  hello \n", 1, 10), Ok("hello".to_owned()));
        assert_eq!(
            bounded_text("line one\nline\ttwo", 1, 100),
            Ok("line one\nline\ttwo".to_owned())
        );
        assert_eq!(bounded_text("   ", 1, 10), Err(ValidationError::Required));
        assert_eq!(bounded_text("", 0, 10), Ok(String::new()));
        assert_eq!(
            bounded_text("ab", 3, 10),
            Err(ValidationError::TooShort { min: 3 })
        );
        assert_eq!(
            bounded_text("abcdef", 1, 5),
            Err(ValidationError::TooLong { max: 5 })
        );
        assert_eq!(
            bounded_text("bell\u{7}", 1, 10),
            Err(ValidationError::InvalidCharacters)
        );
        assert_eq!(
            bounded_text("esc\u{1b}[2J", 1, 10),
            Err(ValidationError::InvalidCharacters)
        );
        for len in 0..=20usize {
            let text = "ж".repeat(len);
            assert_eq!(
                bounded_text(&text, 5, 15).is_ok(),
                (5..=15).contains(&len),
                "{len}"
            );
        }
    }
}

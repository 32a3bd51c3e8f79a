//! The subset of RFC 8941 Structured Field Values that HTTP Message Signatures need.
//!
//! `Signature-Input`, `Signature` and `Content-Digest` are all Dictionaries, and the
//! `@signature-params` line of the signature base is the *serialization* of an Inner List. So the
//! verifier parses what a client sent and serializes it again in canonical form, which makes
//! harmless spelling differences (extra spaces, parameter order chosen by the client) irrelevant
//! as long as both sides serialize the same data the same way.
//!
//! Deliberately stricter than RFC 8941 in one point: a repeated dictionary key or parameter name is
//! an error instead of "last one wins". A second `sig1` member or a second `created` parameter is
//! far more likely to be an injection or a broken proxy than a legitimate client, and silently
//! picking one of them would let the value checked differ from the value a reader expects.
//!
//! The parser works on bytes, rejects anything outside ASCII and never indexes out of bounds, so
//! garbage input yields `Err(SfvError)` rather than a panic.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// RFC 8941 §4.2.7 asks parsers to tolerate missing `=` padding and non-zero pad bits, because
/// many base64 encoders in the wild produce them. The decoded bytes are what gets compared.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Limits from RFC 8941 §3.3.1 and §3.3.2.
const MAX_INTEGER_DIGITS: usize = 15;
const MAX_DECIMAL_INTEGER_DIGITS: usize = 12;
const MAX_DECIMAL_FRACTION_DIGITS: usize = 3;

/// Why a field value is not a valid Structured Field. The verifier maps every variant to
/// `MalformedHeader`, so this only needs to be precise enough for tests and debugging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SfvError {
    NotAscii,
    UnexpectedEnd,
    UnexpectedChar(u8),
    NumberTooLong,
    BadBase64,
    DuplicateKey,
}

/// An RFC 8941 bare item. Decimals are kept as thousandths, which is exactly their precision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BareItem {
    Integer(i64),
    Decimal { thousandths: i64 },
    String(String),
    Token(String),
    ByteSeq(Vec<u8>),
    Boolean(bool),
}

/// Ordered parameters; names are unique (see the module docs).
pub(crate) type Parameters = Vec<(String, BareItem)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    pub(crate) bare: BareItem,
    pub(crate) params: Parameters,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InnerList {
    pub(crate) items: Vec<Item>,
    pub(crate) params: Parameters,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Member {
    Item(Item),
    InnerList(InnerList),
}

/// An ordered dictionary; keys are unique (see the module docs).
pub(crate) type Dictionary = Vec<(String, Member)>;

/// Looks a parameter up by name.
pub(crate) fn param<'p>(params: &'p Parameters, name: &str) -> Option<&'p BareItem> {
    params
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
}

/// Looks a dictionary member up by key.
pub(crate) fn member<'d>(dictionary: &'d Dictionary, key: &str) -> Option<&'d Member> {
    dictionary
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, value)| value)
}

/// Parses a whole field value as a Dictionary (RFC 8941 §4.2.2).
pub(crate) fn parse_dictionary(input: &str) -> Result<Dictionary, SfvError> {
    if !input.is_ascii() {
        return Err(SfvError::NotAscii);
    }
    let mut parser = Parser {
        input: input.as_bytes(),
        pos: 0,
    };
    // Field values arrive with surrounding OWS already removed by HTTP, but being lenient about it
    // here costs nothing and helps hand-written headers.
    parser.skip_ows();
    let mut dictionary = Dictionary::new();
    while !parser.at_end() {
        let key = parser.parse_key()?;
        let value = if parser.peek() == Some(b'=') {
            parser.pos += 1;
            parser.parse_item_or_inner_list()?
        } else {
            Member::Item(Item {
                bare: BareItem::Boolean(true),
                params: parser.parse_parameters()?,
            })
        };
        if member(&dictionary, &key).is_some() {
            return Err(SfvError::DuplicateKey);
        }
        dictionary.push((key, value));
        parser.skip_ows();
        match parser.next() {
            None => return Ok(dictionary),
            Some(b',') => {}
            Some(other) => return Err(SfvError::UnexpectedChar(other)),
        }
        parser.skip_ows();
        if parser.at_end() {
            // A trailing comma is an error in RFC 8941.
            return Err(SfvError::UnexpectedEnd);
        }
    }
    Ok(dictionary)
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Some(byte)
    }

    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn expect_some(&mut self) -> Result<u8, SfvError> {
        self.next().ok_or(SfvError::UnexpectedEnd)
    }

    fn parse_item_or_inner_list(&mut self) -> Result<Member, SfvError> {
        if self.peek() == Some(b'(') {
            self.parse_inner_list().map(Member::InnerList)
        } else {
            self.parse_item().map(Member::Item)
        }
    }

    fn parse_inner_list(&mut self) -> Result<InnerList, SfvError> {
        let open = self.expect_some()?;
        if open != b'(' {
            return Err(SfvError::UnexpectedChar(open));
        }
        let mut items = Vec::new();
        loop {
            self.skip_sp();
            match self.peek() {
                None => return Err(SfvError::UnexpectedEnd),
                Some(b')') => {
                    self.pos += 1;
                    let params = self.parse_parameters()?;
                    return Ok(InnerList { items, params });
                }
                Some(_) => {
                    items.push(self.parse_item()?);
                    match self.peek() {
                        Some(b' ' | b')') => {}
                        None => return Err(SfvError::UnexpectedEnd),
                        Some(other) => return Err(SfvError::UnexpectedChar(other)),
                    }
                }
            }
        }
    }

    fn parse_item(&mut self) -> Result<Item, SfvError> {
        let bare = self.parse_bare_item()?;
        let params = self.parse_parameters()?;
        Ok(Item { bare, params })
    }

    fn parse_bare_item(&mut self) -> Result<BareItem, SfvError> {
        match self.peek() {
            None => Err(SfvError::UnexpectedEnd),
            Some(b'-' | b'0'..=b'9') => self.parse_number(),
            Some(b'"') => self.parse_string().map(BareItem::String),
            Some(b'*' | b'A'..=b'Z' | b'a'..=b'z') => Ok(BareItem::Token(self.parse_token())),
            Some(b':') => self.parse_byte_sequence().map(BareItem::ByteSeq),
            Some(b'?') => self.parse_boolean().map(BareItem::Boolean),
            Some(other) => Err(SfvError::UnexpectedChar(other)),
        }
    }

    fn parse_parameters(&mut self) -> Result<Parameters, SfvError> {
        let mut params = Parameters::new();
        while self.peek() == Some(b';') {
            self.pos += 1;
            self.skip_sp();
            let key = self.parse_key()?;
            let value = if self.peek() == Some(b'=') {
                self.pos += 1;
                self.parse_bare_item()?
            } else {
                BareItem::Boolean(true)
            };
            if param(&params, &key).is_some() {
                return Err(SfvError::DuplicateKey);
            }
            params.push((key, value));
        }
        Ok(params)
    }

    fn parse_key(&mut self) -> Result<String, SfvError> {
        let first = self.expect_some()?;
        if !(first.is_ascii_lowercase() || first == b'*') {
            return Err(SfvError::UnexpectedChar(first));
        }
        let mut key = String::from(char::from(first));
        while let Some(byte) = self.peek() {
            if byte.is_ascii_lowercase()
                || byte.is_ascii_digit()
                || matches!(byte, b'_' | b'-' | b'.' | b'*')
            {
                key.push(char::from(byte));
                self.pos += 1;
            } else {
                break;
            }
        }
        Ok(key)
    }

    fn parse_number(&mut self) -> Result<BareItem, SfvError> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let mut integer_digits = String::new();
        let mut fraction_digits: Option<String> = None;
        while let Some(byte) = self.peek() {
            match (byte, fraction_digits.as_mut()) {
                (b'0'..=b'9', None) => integer_digits.push(char::from(byte)),
                (b'0'..=b'9', Some(fraction)) => fraction.push(char::from(byte)),
                (b'.', None) => {
                    if integer_digits.len() > MAX_DECIMAL_INTEGER_DIGITS {
                        return Err(SfvError::NumberTooLong);
                    }
                    fraction_digits = Some(String::new());
                }
                _ => break,
            }
            self.pos += 1;
            if integer_digits.len() > MAX_INTEGER_DIGITS
                || fraction_digits
                    .as_ref()
                    .is_some_and(|f| f.len() > MAX_DECIMAL_FRACTION_DIGITS)
            {
                return Err(SfvError::NumberTooLong);
            }
        }
        if integer_digits.is_empty() {
            return Err(self
                .peek()
                .map_or(SfvError::UnexpectedEnd, SfvError::UnexpectedChar));
        }
        // The digit counts are bounded above, so these parses cannot overflow an i64.
        let integer: i64 = integer_digits
            .parse()
            .map_err(|_| SfvError::NumberTooLong)?;
        let sign = if negative { -1 } else { 1 };
        match fraction_digits {
            None => Ok(BareItem::Integer(sign * integer)),
            Some(fraction) if fraction.is_empty() => Err(self
                .peek()
                .map_or(SfvError::UnexpectedEnd, SfvError::UnexpectedChar)),
            Some(fraction) => {
                let padded = format!("{fraction:0<3}");
                let thousandths: i64 = padded.parse().map_err(|_| SfvError::NumberTooLong)?;
                Ok(BareItem::Decimal {
                    thousandths: sign * (integer * 1000 + thousandths),
                })
            }
        }
    }

    fn parse_string(&mut self) -> Result<String, SfvError> {
        let quote = self.expect_some()?;
        if quote != b'"' {
            return Err(SfvError::UnexpectedChar(quote));
        }
        let mut value = String::new();
        loop {
            match self.expect_some()? {
                b'\\' => match self.expect_some()? {
                    escaped @ (b'"' | b'\\') => value.push(char::from(escaped)),
                    other => return Err(SfvError::UnexpectedChar(other)),
                },
                b'"' => return Ok(value),
                printable @ 0x20..=0x7e => value.push(char::from(printable)),
                other => return Err(SfvError::UnexpectedChar(other)),
            }
        }
    }

    /// The caller has checked that the first byte is ALPHA or `*`.
    fn parse_token(&mut self) -> String {
        let mut token = String::new();
        while let Some(byte) = self.peek() {
            if is_tchar(byte) || matches!(byte, b':' | b'/') {
                token.push(char::from(byte));
                self.pos += 1;
            } else {
                break;
            }
        }
        token
    }

    fn parse_byte_sequence(&mut self) -> Result<Vec<u8>, SfvError> {
        let colon = self.expect_some()?;
        if colon != b':' {
            return Err(SfvError::UnexpectedChar(colon));
        }
        let start = self.pos;
        loop {
            match self.expect_some()? {
                b':' => break,
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' | b'=' => {}
                other => return Err(SfvError::UnexpectedChar(other)),
            }
        }
        let encoded = self
            .input
            .get(start..self.pos - 1)
            .ok_or(SfvError::UnexpectedEnd)?;
        LENIENT_BASE64
            .decode(encoded)
            .map_err(|_| SfvError::BadBase64)
    }

    fn parse_boolean(&mut self) -> Result<bool, SfvError> {
        let question = self.expect_some()?;
        if question != b'?' {
            return Err(SfvError::UnexpectedChar(question));
        }
        match self.expect_some()? {
            b'1' => Ok(true),
            b'0' => Ok(false),
            other => Err(SfvError::UnexpectedChar(other)),
        }
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Serializes an Inner List with its parameters (RFC 8941 §4.1.1.1).
pub(crate) fn serialize_inner_list(list: &InnerList) -> String {
    let mut out = String::from("(");
    for (index, item) in list.items.iter().enumerate() {
        if index > 0 {
            out.push(' ');
        }
        serialize_bare_item(&item.bare, &mut out);
        serialize_parameters(&item.params, &mut out);
    }
    out.push(')');
    serialize_parameters(&list.params, &mut out);
    out
}

fn serialize_parameters(params: &Parameters, out: &mut String) {
    for (key, value) in params {
        out.push(';');
        out.push_str(key);
        if *value != BareItem::Boolean(true) {
            out.push('=');
            serialize_bare_item(value, out);
        }
    }
}

fn serialize_bare_item(item: &BareItem, out: &mut String) {
    match item {
        BareItem::Integer(value) => out.push_str(&value.to_string()),
        BareItem::Decimal { thousandths } => {
            if *thousandths < 0 {
                out.push('-');
            }
            let magnitude = thousandths.unsigned_abs();
            let fraction = format!("{:03}", magnitude % 1000);
            let fraction = fraction.trim_end_matches('0');
            out.push_str(&(magnitude / 1000).to_string());
            out.push('.');
            out.push_str(if fraction.is_empty() { "0" } else { fraction });
        }
        BareItem::String(value) => out.push_str(&serialize_string(value)),
        BareItem::Token(value) => out.push_str(value),
        BareItem::ByteSeq(bytes) => {
            out.push(':');
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(bytes));
            out.push(':');
        }
        BareItem::Boolean(value) => out.push_str(if *value { "?1" } else { "?0" }),
    }
}

/// Serializes an sf-string. Only printable ASCII can be carried; anything else is replaced by
/// `?` so that signing stays infallible (see `sign_request` for what that means to callers).
pub(crate) fn serialize_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for ch in value.chars() {
        match ch {
            '"' | '\\' => {
                out.push('\\');
                out.push(ch);
            }
            ' '..='~' => out.push(ch),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string_item(value: &str) -> Item {
        Item {
            bare: BareItem::String(value.to_owned()),
            params: Parameters::new(),
        }
    }

    #[test]
    fn parses_signature_input_with_every_bare_item_type() {
        let dictionary = parse_dictionary(
            r#"sig1=("@method" "content-digest";sf);created=1618884473;keyid="k\"1";dec=-1.50;tok=a:b/c;bin=:AQID:;flag;off=?0, other=:AQ==:"#,
        )
        .expect("valid dictionary");
        assert_eq!(dictionary.len(), 2);
        let Some(Member::InnerList(list)) = member(&dictionary, "sig1") else {
            panic!("sig1 must be an inner list");
        };
        assert_eq!(list.items[0], string_item("@method"));
        assert_eq!(
            list.items[1].params,
            vec![("sf".to_owned(), BareItem::Boolean(true))]
        );
        assert_eq!(
            param(&list.params, "created"),
            Some(&BareItem::Integer(1_618_884_473))
        );
        assert_eq!(
            param(&list.params, "keyid"),
            Some(&BareItem::String("k\"1".to_owned()))
        );
        assert_eq!(
            param(&list.params, "dec"),
            Some(&BareItem::Decimal { thousandths: -1500 })
        );
        assert_eq!(
            param(&list.params, "tok"),
            Some(&BareItem::Token("a:b/c".to_owned()))
        );
        assert_eq!(
            param(&list.params, "bin"),
            Some(&BareItem::ByteSeq(vec![1, 2, 3]))
        );
        assert_eq!(param(&list.params, "flag"), Some(&BareItem::Boolean(true)));
        assert_eq!(param(&list.params, "off"), Some(&BareItem::Boolean(false)));
        assert_eq!(
            member(&dictionary, "other"),
            Some(&Member::Item(Item {
                bare: BareItem::ByteSeq(vec![1]),
                params: Parameters::new()
            }))
        );
    }

    #[test]
    fn reserializes_canonically() {
        let dictionary = parse_dictionary(
            "a=(  \"x\"   \"y\";sf  );n=7;d=2.500;e=0.0;s=\"q\\\\\";t=tok;b=:AQ:;f;g=?0",
        )
        .expect("valid dictionary");
        let Some(Member::InnerList(list)) = member(&dictionary, "a") else {
            panic!("a must be an inner list");
        };
        assert_eq!(
            serialize_inner_list(list),
            "(\"x\" \"y\";sf);n=7;d=2.5;e=0.0;s=\"q\\\\\";t=tok;b=:AQ==:;f;g=?0"
        );
    }

    #[test]
    fn empty_dictionary_is_empty() {
        assert_eq!(parse_dictionary(""), Ok(Dictionary::new()));
        assert_eq!(parse_dictionary("  "), Ok(Dictionary::new()));
    }

    #[test]
    fn rejects_invalid_input() {
        let invalid = [
            "a=",
            "a=(",
            "a=(\"x\"",
            "a=(\"x\"\"y\")",
            "a=1,",
            "a=1 b=2",
            "A=1",
            "a=\"unterminated",
            "a=\"bad\\escape\"",
            "a=\"tab\there\"",
            "a=:not base64!:",
            "a=:AQID",
            "a=?2",
            "a=1234567890123456",
            "a=1234567890123.5",
            "a=1.2345",
            "a=1.",
            "a=-",
            "a=1;",
            "a=1;B=2",
            "a=1, a=2",
            "a=1;p;p",
            "a=é",
            "a=@1",
            ",a=1",
        ];
        for input in invalid {
            assert!(parse_dictionary(input).is_err(), "{input:?} must not parse");
        }
    }

    #[test]
    fn strings_escape_and_replace_unrepresentable_characters() {
        assert_eq!(serialize_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(serialize_string("é\n"), "\"??\"");
    }
}

//! A small TwiML reader: enough XML for the verbs the simulated call executes.
//!
//! Supported: `<Response>` holding `<Connect><Stream url name statusCallback
//! statusCallbackMethod track><Parameter name value/>…</Stream></Connect>`, `<Say>`, `<Pause
//! length>` and `<Hangup/>`. Other verbs are returned as [`Verb::Unsupported`] (Twilio would
//! execute them; the simulator records and skips them). The XML reader handles the declaration,
//! comments, CDATA-free text with the five predefined entities and numeric character references,
//! and single- or double-quoted attributes; anything malformed is a parse error, which Twilio
//! reports as error 12100 and ends the call.

use std::fmt;

/// Twilio's "Document parse failure".
pub const PARSE_FAILURE: u32 = 12100;
/// `<Stream>` url with a query string.
pub const STREAM_URL_QUERY: u32 = 31920;
/// `<Connect><Stream>` only supports `inbound_track`.
pub const STREAM_TRACK_INVALID: u32 = 31941;

/// One verb of a TwiML document, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    Say {
        text: String,
    },
    Pause {
        seconds: u32,
    },
    Hangup,
    Connect(Stream),
    /// A verb (or `<Connect>` child) the simulator does not execute.
    Unsupported {
        name: String,
    },
}

/// `<Connect><Stream>`: where the phone side of the media stream connects.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stream {
    pub url: String,
    pub name: Option<String>,
    pub status_callback: Option<String>,
    pub status_callback_method: Option<String>,
    /// `<Parameter name value/>` children, in order: they arrive in `start.customParameters`.
    pub parameters: Vec<(String, String)>,
}

/// Why a document could not be executed, with the Twilio error code it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwimlError {
    #[error("document parse failure: {0}")]
    Parse(String),
    #[error("the root element must be <Response>, found <{0}>")]
    NotResponse(String),
    #[error("<Stream> url must not contain a query string: {0}")]
    StreamUrlQuery(String),
    #[error("<Stream> url must be ws:// or wss://: {0}")]
    StreamUrlScheme(String),
    #[error("<Connect><Stream> supports only track=\"inbound_track\", got {0:?}")]
    StreamTrack(String),
    #[error("<{0}> is missing attribute {1:?}")]
    MissingAttribute(&'static str, &'static str),
}

impl TwimlError {
    /// The Twilio error code this failure raises.
    pub fn code(&self) -> u32 {
        match self {
            TwimlError::StreamUrlQuery(_) => STREAM_URL_QUERY,
            TwimlError::StreamTrack(_) => STREAM_TRACK_INVALID,
            TwimlError::Parse(_)
            | TwimlError::NotResponse(_)
            | TwimlError::StreamUrlScheme(_)
            | TwimlError::MissingAttribute(..) => PARSE_FAILURE,
        }
    }
}

/// Parses a TwiML document into its verbs.
pub fn parse(document: &str) -> Result<Vec<Verb>, TwimlError> {
    let root = Reader::new(document).document()?;
    if root.name != "Response" {
        return Err(TwimlError::NotResponse(root.name));
    }
    let mut verbs = Vec::new();
    for child in root.elements() {
        verbs.push(match child.name.as_str() {
            "Say" => Verb::Say { text: child.text() },
            "Pause" => Verb::Pause {
                seconds: child
                    .attr("length")
                    .map(|l| {
                        l.trim()
                            .parse::<u32>()
                            .map_err(|_| TwimlError::Parse(format!("<Pause length={l:?}>")))
                    })
                    .transpose()?
                    .unwrap_or(1),
            },
            "Hangup" => Verb::Hangup,
            "Connect" => match child.elements().next() {
                Some(stream) if stream.name == "Stream" => Verb::Connect(read_stream(stream)?),
                Some(other) => Verb::Unsupported {
                    name: format!("Connect/{}", other.name),
                },
                None => Verb::Unsupported {
                    name: "Connect".to_owned(),
                },
            },
            other => Verb::Unsupported {
                name: other.to_owned(),
            },
        });
    }
    Ok(verbs)
}

fn read_stream(stream: &Element) -> Result<Stream, TwimlError> {
    let url = stream
        .attr("url")
        .ok_or(TwimlError::MissingAttribute("Stream", "url"))?
        .to_owned();
    if url.contains('?') {
        return Err(TwimlError::StreamUrlQuery(url));
    }
    if !(url.starts_with("ws://") || url.starts_with("wss://")) {
        return Err(TwimlError::StreamUrlScheme(url));
    }
    if let Some(track) = stream.attr("track")
        && track != "inbound_track"
    {
        return Err(TwimlError::StreamTrack(track.to_owned()));
    }
    let mut parameters = Vec::new();
    for parameter in stream.elements().filter(|e| e.name == "Parameter") {
        let name = parameter
            .attr("name")
            .ok_or(TwimlError::MissingAttribute("Parameter", "name"))?;
        let value = parameter.attr("value").unwrap_or_default();
        parameters.push((name.to_owned(), value.to_owned()));
    }
    Ok(Stream {
        url,
        name: stream.attr("name").map(str::to_owned),
        status_callback: stream.attr("statusCallback").map(str::to_owned),
        status_callback_method: stream.attr("statusCallbackMethod").map(str::to_owned),
        parameters,
    })
}

#[derive(Debug)]
enum Node {
    Element(Element),
    Text(String),
}

#[derive(Debug)]
struct Element {
    name: String,
    attributes: Vec<(String, String)>,
    children: Vec<Node>,
}

impl Element {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for node in &self.children {
            if let Node::Text(t) = node {
                out.push_str(t);
            }
        }
        out.trim().to_owned()
    }
}

struct Reader<'a> {
    rest: &'a str,
}

impl fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("remaining", &self.rest.len())
            .finish()
    }
}

fn err(message: impl Into<String>) -> TwimlError {
    TwimlError::Parse(message.into())
}

impl<'a> Reader<'a> {
    fn new(document: &'a str) -> Self {
        Self {
            rest: document.strip_prefix('\u{feff}').unwrap_or(document),
        }
    }

    fn document(mut self) -> Result<Element, TwimlError> {
        self.skip_misc()?;
        let root = self.element()?;
        self.skip_misc()?;
        if !self.rest.is_empty() {
            return Err(err("content after the root element"));
        }
        Ok(root)
    }

    /// Whitespace, the XML declaration, processing instructions and comments.
    fn skip_misc(&mut self) -> Result<(), TwimlError> {
        loop {
            self.rest = self.rest.trim_start();
            if self.rest.starts_with("<?") {
                let end = self.rest.find("?>").ok_or_else(|| err("unterminated <?"))?;
                self.rest = &self.rest[end + 2..];
            } else if self.rest.starts_with("<!--") {
                let end = self
                    .rest
                    .find("-->")
                    .ok_or_else(|| err("unterminated comment"))?;
                self.rest = &self.rest[end + 3..];
            } else {
                return Ok(());
            }
        }
    }

    fn name(&mut self) -> Result<String, TwimlError> {
        let end = self
            .rest
            .find(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '-' | ':' | '.')))
            .unwrap_or(self.rest.len());
        if end == 0 {
            return Err(err("expected a name"));
        }
        let name = self.rest[..end].to_owned();
        self.rest = &self.rest[end..];
        Ok(name)
    }

    fn element(&mut self) -> Result<Element, TwimlError> {
        self.rest = self
            .rest
            .strip_prefix('<')
            .ok_or_else(|| err("expected an element"))?;
        let name = self.name()?;
        let mut attributes = Vec::new();
        loop {
            self.rest = self.rest.trim_start();
            if let Some(rest) = self.rest.strip_prefix("/>") {
                self.rest = rest;
                return Ok(Element {
                    name,
                    attributes,
                    children: Vec::new(),
                });
            }
            if let Some(rest) = self.rest.strip_prefix('>') {
                self.rest = rest;
                break;
            }
            let attribute = self.name()?;
            self.rest = self.rest.trim_start();
            self.rest = self
                .rest
                .strip_prefix('=')
                .ok_or_else(|| err(format!("attribute {attribute} has no value")))?;
            self.rest = self.rest.trim_start();
            let quote = self.rest.chars().next().filter(|c| matches!(c, '"' | '\''));
            let quote = quote.ok_or_else(|| err(format!("attribute {attribute} is not quoted")))?;
            let body = &self.rest[1..];
            let end = body
                .find(quote)
                .ok_or_else(|| err("unterminated attribute value"))?;
            let value = unescape(&body[..end])?;
            if attributes.iter().any(|(n, _)| *n == attribute) {
                return Err(err(format!("duplicate attribute {attribute}")));
            }
            attributes.push((attribute, value));
            self.rest = &body[end + 1..];
        }
        let mut children = Vec::new();
        loop {
            if let Some(rest) = self.rest.strip_prefix("</") {
                self.rest = rest;
                let closing = self.name()?;
                if closing != name {
                    return Err(err(format!("<{name}> closed by </{closing}>")));
                }
                self.rest = self.rest.trim_start();
                self.rest = self
                    .rest
                    .strip_prefix('>')
                    .ok_or_else(|| err("bad closing tag"))?;
                return Ok(Element {
                    name,
                    attributes,
                    children,
                });
            }
            if self.rest.starts_with("<!--") {
                let end = self
                    .rest
                    .find("-->")
                    .ok_or_else(|| err("unterminated comment"))?;
                self.rest = &self.rest[end + 3..];
            } else if self.rest.starts_with('<') {
                children.push(Node::Element(self.element()?));
            } else if self.rest.is_empty() {
                return Err(err(format!("<{name}> is not closed")));
            } else {
                let end = self.rest.find('<').unwrap_or(self.rest.len());
                children.push(Node::Text(unescape(&self.rest[..end])?));
                self.rest = &self.rest[end..];
            }
        }
    }
}

fn unescape(raw: &str) -> Result<String, TwimlError> {
    if !raw.contains('&') {
        return Ok(raw.to_owned());
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let semi = after.find(';').ok_or_else(|| err("unterminated entity"))?;
        let entity = &after[..semi];
        let ch = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            numeric => {
                let code = if let Some(hex) = numeric.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(dec) = numeric.strip_prefix('#') {
                    dec.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32)
                    .ok_or_else(|| err(format!("unknown entity &{numeric};")))?
            }
        };
        out.push(ch);
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_stream_with_parameters() {
        let doc = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- the app's answer -->
<Response>
  <Say voice="alice">Connecting you &amp; your persona</Say>
  <Connect>
    <Stream url="wss://app.example/media/call_1" name='main' statusCallback="https://app.example/s">
      <Parameter name="callId" value="call_1"/>
      <Parameter name="token" value="a&quot;b&#x41;"/>
    </Stream>
  </Connect>
  <Pause length="2"/>
  <Hangup/>
</Response>"#;
        let verbs = parse(doc).expect("valid TwiML");
        assert_eq!(
            verbs,
            vec![
                Verb::Say {
                    text: "Connecting you & your persona".to_owned()
                },
                Verb::Connect(Stream {
                    url: "wss://app.example/media/call_1".to_owned(),
                    name: Some("main".to_owned()),
                    status_callback: Some("https://app.example/s".to_owned()),
                    status_callback_method: None,
                    parameters: vec![
                        ("callId".to_owned(), "call_1".to_owned()),
                        ("token".to_owned(), "a\"bA".to_owned())
                    ],
                }),
                Verb::Pause { seconds: 2 },
                Verb::Hangup,
            ]
        );
    }

    #[test]
    fn errors_carry_twilio_codes() {
        let query =
            r#"<Response><Connect><Stream url="wss://a.example/m?x=1"/></Connect></Response>"#;
        assert_eq!(parse(query).map_err(|e| e.code()), Err(STREAM_URL_QUERY));
        let track = r#"<Response><Connect><Stream url="wss://a.example/m" track="both_tracks"/></Connect></Response>"#;
        assert_eq!(
            parse(track).map_err(|e| e.code()),
            Err(STREAM_TRACK_INVALID)
        );
        for bad in [
            "<Response><Say>unclosed</Response>",
            "<Response>",
            "not xml",
            "<Response><Pause length=\"x\"/></Response>",
            "<Response/><Response/>",
            "{\"json\": true}",
        ] {
            assert_eq!(
                parse(bad).map_err(|e| e.code()),
                Err(PARSE_FAILURE),
                "{bad}"
            );
        }
        assert!(matches!(parse("<Other/>"), Err(TwimlError::NotResponse(_))));
    }

    #[test]
    fn unknown_verbs_are_kept_as_unsupported() {
        let verbs =
            parse("<Response><Dial>+1555</Dial><Connect><ConversationRelay/></Connect></Response>")
                .expect("parses");
        assert_eq!(
            verbs,
            vec![
                Verb::Unsupported {
                    name: "Dial".to_owned()
                },
                Verb::Unsupported {
                    name: "Connect/ConversationRelay".to_owned()
                }
            ]
        );
    }
}

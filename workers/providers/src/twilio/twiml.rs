//! The TwiML the voice webhook answers with.

/// `<Response><Connect><Stream url="…"><Parameter name="…" value="…"/>…</Stream></Connect></Response>`.
///
/// The stream URL must not carry a query string (Twilio refuses it, error 31920): values travel
/// as `<Parameter>`s and arrive in the `start` message's `customParameters`.
pub fn connect_stream(stream_url: &str, parameters: &[(&str, &str)]) -> String {
    debug_assert!(
        !stream_url.contains('?'),
        "Twilio refuses stream URLs with a query string"
    );
    let mut xml = String::with_capacity(256);
    xml.push_str(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url=""#);
    escape_into(stream_url, &mut xml);
    xml.push_str(r#"">"#);
    for (name, value) in parameters {
        xml.push_str(r#"<Parameter name=""#);
        escape_into(name, &mut xml);
        xml.push_str(r#"" value=""#);
        escape_into(value, &mut xml);
        xml.push_str(r#""/>"#);
    }
    xml.push_str("</Stream></Connect></Response>");
    xml
}

/// `<Response><Hangup/></Response>`: for a call that must not go on (its plan is gone, say).
pub fn hang_up() -> String {
    r#"<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/></Response>"#.to_owned()
}

/// XML attribute escaping.
fn escape_into(text: &str, out: &mut String) {
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(ch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_twiml_has_the_url_and_escaped_parameters() {
        let xml = connect_stream(
            "wss://api.example.com/twilio/media/call_1",
            &[("token", "a.b&c\"d")],
        );
        assert_eq!(
            xml,
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://api.example.com/twilio/media/call_1"><Parameter name="token" value="a.b&amp;c&quot;d"/></Stream></Connect></Response>"#
        );
    }
}

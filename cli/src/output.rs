//! How messages are printed: one line of text, or one JSON object per line.
//!
//! Invariants: every rendered message is exactly one line (control
//! characters in payloads are escaped, so a payload can neither break the
//! line format nor send escape sequences to the terminal); JSON output is
//! valid JSON with payloads that are not UTF-8 given as base64.

use std::fmt::Write as _;

use arqonbus_client::{Message, MessageStatus};
use base64::Engine as _;

/// `[#n] Received on "<subject>": <payload>`.
pub(crate) fn text_line(n: u64, message: &Message) -> String {
    let mut line = format!(
        "[#{n}] Received on \"{}\"",
        escape_text(&message.subject_str())
    );
    if let Some(reply) = message.reply_str() {
        let _infallible = write!(line, " (reply \"{}\")", escape_text(&reply));
    }
    line.push_str(": ");
    line.push_str(&escape_text(&String::from_utf8_lossy(&message.payload)));
    line
}

/// `{"n":1,"subject":"a.b","reply":"r","headers":{"k":"v"},"payload":"..."}`;
/// `payload_base64` instead of `payload` when the payload is not UTF-8.
pub(crate) fn json_line(n: u64, message: &Message) -> String {
    let mut out = format!("{{\"n\":{n},\"subject\":");
    json_string(&mut out, &message.subject_str());
    if let Some(reply) = message.reply_str() {
        out.push_str(",\"reply\":");
        json_string(&mut out, &reply);
    }
    if !message.headers.is_empty() {
        out.push_str(",\"headers\":{");
        for (i, (key, value)) in message.headers.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_string(&mut out, &String::from_utf8_lossy(key));
            out.push(':');
            json_string(&mut out, &String::from_utf8_lossy(value));
        }
        out.push('}');
    }
    if message.status == MessageStatus::NoResponders {
        out.push_str(",\"status\":\"no_responders\"");
    }
    if let Ok(text) = std::str::from_utf8(&message.payload) {
        out.push_str(",\"payload\":");
        json_string(&mut out, text);
    } else {
        out.push_str(",\"payload_base64\":\"");
        out.push_str(&base64::engine::general_purpose::STANDARD.encode(&message.payload));
        out.push('"');
    }
    out.push('}');
    out
}

pub(crate) use arqonbus_cli::escape_text;

/// Appends `s` as a JSON string literal.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _infallible = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    use arqonbus_client::Headers;

    fn json(s: &str) -> String {
        let mut out = String::new();
        json_string(&mut out, s);
        out
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json("plain"), "\"plain\"");
        assert_eq!(json("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(json("l1\nl2\r\t"), "\"l1\\nl2\\r\\t\"");
        assert_eq!(json("\u{1b}[31m\u{0}"), "\"\\u001b[31m\\u0000\"");
        assert_eq!(json("é ✓"), "\"é ✓\"");
    }

    #[test]
    fn text_lines() {
        let mut m = Message::new("orders.eu", "hello\nworld");
        assert_eq!(
            text_line(1, &m),
            "[#1] Received on \"orders.eu\": hello\\nworld"
        );
        m.reply = Some("_INBOX.a.1".into());
        m.payload = vec![0xff, b'x'].into();
        assert_eq!(
            text_line(2, &m),
            "[#2] Received on \"orders.eu\" (reply \"_INBOX.a.1\"): \u{fffd}x"
        );
    }

    #[test]
    fn json_lines() {
        let mut m = Message::new("a.b", "say \"hi\"");
        assert_eq!(
            json_line(3, &m),
            r#"{"n":3,"subject":"a.b","payload":"say \"hi\""}"#
        );
        m.reply = Some("r".into());
        m.headers = [("k", "v"), ("x", "y\\z")].into_iter().collect::<Headers>();
        m.payload = vec![0xff, 0x00].into();
        assert_eq!(
            json_line(4, &m),
            r#"{"n":4,"subject":"a.b","reply":"r","headers":{"k":"v","x":"y\\z"},"payload_base64":"/wA="}"#
        );
        m.status = MessageStatus::NoResponders;
        m.payload = bytes::Bytes::new();
        assert!(json_line(5, &m).contains(r#""status":"no_responders","payload":"""#));
    }
}

//! What the `arqon` and `arqonctl` binaries share.
//!
//! Invariant: text from the network (subjects, payloads, names, server
//! messages) reaches the terminal only through [`escape_text`].

/// Escapes control characters (newlines, escape sequences, ...) so text stays
/// on one line and cannot drive the terminal.
pub fn escape_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_stays_on_one_line() {
        assert_eq!(escape_text("a\nb"), "a\\nb");
        assert_eq!(escape_text("\u{1b}[2J"), "\\u{1b}[2J");
        assert_eq!(escape_text("héllo wörld"), "héllo wörld");
    }
}

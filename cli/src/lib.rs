//! What the `arqon` and `arqonctl` binaries share.
//!
//! Invariants: text from the network (subjects, payloads, names, server
//! messages) reaches the terminal only through [`escape_text`]; logs carry
//! colour codes only when [`colour_allowed`] says so (a terminal, and no
//! `NO_COLOR`), never into a pipe or a file.

/// Whether ANSI colour may be written to `stream`: it is a terminal and
/// `NO_COLOR` (<https://no-color.org>) is unset or empty.
pub fn colour_allowed(stream: &impl std::io::IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

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
    fn no_colour_into_files() {
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(!colour_allowed(&file));
    }

    #[test]
    fn text_stays_on_one_line() {
        assert_eq!(escape_text("a\nb"), "a\\nb");
        assert_eq!(escape_text("\u{1b}[2J"), "\\u{1b}[2J");
        assert_eq!(escape_text("héllo wörld"), "héllo wörld");
    }
}

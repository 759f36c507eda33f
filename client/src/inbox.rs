//! Reply inboxes for request/reply.
//!
//! Each client owns one inbox prefix `_INBOX.<id>` where `<id>` is 22 random
//! characters from `[A-Za-z0-9]` (about 131 bits), subscribes once to
//! `_INBOX.<id>.*`, and gives request `n` the reply subject
//! `_INBOX.<id>.<n>`. Invariant: every subject produced here is a valid
//! literal subject and [`Inbox::token_of`] inverts [`Inbox::reply_subject`].

use bytes::Bytes;

/// First token of every inbox subject.
const ROOT: &str = "_INBOX";
/// Characters in the random part.
pub(crate) const ID_LEN: usize = 22;
const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// One client's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inbox {
    /// `_INBOX.<id>`.
    prefix: String,
}

impl Inbox {
    /// A fresh inbox with an id from the OS random source.
    pub(crate) fn new() -> Result<Self, getrandom::Error> {
        Self::with_random(getrandom::fill)
    }

    /// A fresh inbox drawing random bytes from `fill` (rejection sampling, so
    /// every character is equally likely).
    pub(crate) fn with_random(
        mut fill: impl FnMut(&mut [u8]) -> Result<(), getrandom::Error>,
    ) -> Result<Self, getrandom::Error> {
        let mut prefix = String::with_capacity(ROOT.len() + 1 + ID_LEN);
        prefix.push_str(ROOT);
        prefix.push('.');
        let mut produced = 0;
        let mut buf = [0u8; 32];
        while produced < ID_LEN {
            fill(&mut buf)?;
            for &b in &buf {
                // 248 = 4 * 62: bytes above it would favour some characters.
                if b < 248 && produced < ID_LEN {
                    prefix.push(char::from(ALPHABET[usize::from(b % 62)]));
                    produced += 1;
                }
            }
        }
        Ok(Self { prefix })
    }

    /// The wildcard pattern the client subscribes to: `_INBOX.<id>.*`.
    pub(crate) fn pattern(&self) -> Bytes {
        Bytes::from(format!("{}.*", self.prefix))
    }

    /// The reply subject of request `token`.
    pub(crate) fn reply_subject(&self, token: u64) -> String {
        format!("{}.{token}", self.prefix)
    }

    /// The request token a reply subject belongs to, if it is one of ours.
    pub(crate) fn token_of(&self, subject: &[u8]) -> Option<u64> {
        let rest = subject.strip_prefix(self.prefix.as_bytes())?;
        let digits = rest.strip_prefix(b".")?;
        std::str::from_utf8(digits).ok()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use arqonbus_core::subject::{Pattern, Subject};

    use super::*;

    #[test]
    fn ids_are_22_alphanumerics() {
        let a = Inbox::new().unwrap();
        let b = Inbox::new().unwrap();
        assert_ne!(a, b);
        let id = a.prefix.strip_prefix("_INBOX.").unwrap();
        assert_eq!(id.len(), ID_LEN);
        assert!(id.bytes().all(|c| c.is_ascii_alphanumeric()), "{id}");
    }

    #[test]
    fn biased_bytes_are_rejected() {
        // A source that only yields 255 (rejected) and then 0..: the id must
        // consist of the accepted bytes only.
        let mut calls = 0u8;
        let inbox = Inbox::with_random(|buf| {
            calls += 1;
            let value = if calls == 1 { 255 } else { 61 };
            buf.fill(value);
            Ok(())
        })
        .unwrap();
        assert_eq!(inbox.prefix, format!("_INBOX.{}", "9".repeat(ID_LEN)));
        assert_eq!(calls, 2);
    }

    #[test]
    fn reply_subjects_are_valid_and_invertible() {
        let inbox = Inbox::new().unwrap();
        let pattern = Pattern::parse(inbox.pattern(), 256).unwrap();
        for token in [0, 1, 42, u64::MAX] {
            let reply = inbox.reply_subject(token);
            let subject = Subject::parse(Bytes::from(reply.clone()), 256).unwrap();
            assert!(pattern.matches(&subject));
            assert_eq!(inbox.token_of(reply.as_bytes()), Some(token));
        }
        assert_eq!(inbox.token_of(b"_INBOX.other.1"), None);
        assert_eq!(inbox.token_of(inbox.prefix.as_bytes()), None);
        let not_a_number = format!("{}.x", inbox.prefix);
        assert_eq!(inbox.token_of(not_a_number.as_bytes()), None);
    }
}

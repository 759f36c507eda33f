//! Subject grammar (specs/protocol.md#subjects).
//!
//! [`Subject`], [`Pattern`] and [`QueueGroup`] can only be built through their
//! `parse` functions, so holding one proves it is valid; so can
//! [`SubjectRef`], the borrowed subject the publish path validates in place
//! (through [`SubjectMemo::check`], which answers as `SubjectRef::parse`
//! does). The owned ones wrap the [`Bytes`] they were parsed from:
//! validating a subject sliced out of a receive buffer copies nothing. A value kept past the read batch (a
//! subscription's pattern and queue group, a reply permission) is
//! [`detach`](Pattern::detach)ed first, so it never pins the receive buffer
//! it came from (`specs/architecture.md`, "Ownership of received bytes").
//!
//! - subject: 1..=max_len bytes, 1..=[`MAX_TOKENS`] tokens joined by `.`, each
//!   token non-empty printable ASCII without `.`, `*`, `>`;
//! - pattern: a subject whose tokens may also be `*` (one token) or `>` (one or
//!   more tokens, last only);
//! - a first token starting with `$` is reserved for the server.

use std::fmt;

use arqonbus_proto::codec::same_bytes;
use bytes::Bytes;

/// Most tokens in one subject or pattern.
pub const MAX_TOKENS: usize = 32;
/// Longest queue group name, in bytes.
pub const MAX_QUEUE_GROUP_LEN: usize = 64;

/// Why a subject, pattern or queue group is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// Zero bytes.
    #[error("empty subject")]
    Empty,
    /// Longer than the configured maximum.
    #[error("subject is {len} bytes, the maximum is {max}")]
    TooLong {
        /// The subject's length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// More than [`MAX_TOKENS`] tokens.
    #[error("subject has more than {MAX_TOKENS} tokens")]
    TooManyTokens,
    /// A leading, trailing or doubled `.`.
    #[error("subject has an empty token")]
    EmptyToken,
    /// A byte outside printable ASCII, or `*`/`>` inside a token.
    #[error("subject contains byte 0x{0:02x}, which is not allowed")]
    InvalidByte(u8),
    /// `*` or `>` in a subject that must be literal.
    #[error("wildcards are not allowed here")]
    WildcardNotAllowed,
    /// `>` that is not the last token.
    #[error("'>' must be the last token")]
    FullWildcardNotLast,
    /// First token starts with `$`.
    #[error("subjects starting with '$' are reserved for the server")]
    Reserved,
}

/// Byte classes of the grammar: one table lookup per byte.
const TOKEN: u8 = 0;
const DOT: u8 = 1;
const STAR: u8 = 2;
const GT: u8 = 3;
const BAD: u8 = 4;

const CLASS: [u8; 256] = {
    let mut t = [BAD; 256];
    let mut b = 0x21;
    while b <= 0x7e {
        t[b] = TOKEN;
        b += 1;
    }
    t[b'.' as usize] = DOT;
    t[b'*' as usize] = STAR;
    t[b'>' as usize] = GT;
    t
};

/// The error for wildcard byte `w` inside a token (not a token of its own).
fn misplaced_wildcard(w: u8, allow_wildcards: bool) -> SubjectError {
    if allow_wildcards {
        SubjectError::InvalidByte(w)
    } else {
        SubjectError::WildcardNotAllowed
    }
}

/// Checks `s` against the grammar in one pass over its bytes (every publish
/// does this, so it reads each byte once, through [`CLASS`]). Returns
/// whether it contains wildcards.
///
/// The error reported is the first in token order, and within a token the
/// whole-token checks (count, empty, wildcard placement) before the first
/// bad byte, as `specs/protocol.md` lists them.
fn check(s: &[u8], max_len: usize, allow_wildcards: bool) -> Result<bool, SubjectError> {
    if s.is_empty() {
        return Err(SubjectError::Empty);
    }
    if s.len() > max_len {
        return Err(SubjectError::TooLong {
            len: s.len(),
            max: max_len,
        });
    }
    if s[0] == b'$' {
        return Err(SubjectError::Reserved);
    }
    let mut tokens = 1usize;
    let mut wild = false;
    // Where the current token starts, and its first byte when that byte is
    // a wildcard (valid only if the token is that one byte).
    let mut start = 0usize;
    let mut lead_wildcard: Option<u8> = None;
    for (i, &b) in s.iter().enumerate() {
        let class = CLASS[b as usize];
        if class == DOT {
            // The token before this dot ends here.
            if i == start {
                return Err(SubjectError::EmptyToken);
            }
            if let Some(w) = lead_wildcard.take() {
                if !allow_wildcards {
                    return Err(SubjectError::WildcardNotAllowed);
                }
                if w == b'>' {
                    return Err(SubjectError::FullWildcardNotLast);
                }
                wild = true;
            }
            if i + 1 == s.len() {
                return Err(SubjectError::EmptyToken);
            }
            tokens += 1;
            if tokens > MAX_TOKENS {
                return Err(SubjectError::TooManyTokens);
            }
            start = i + 1;
            continue;
        }
        if let Some(w) = lead_wildcard {
            // A wildcard followed by more bytes in its token.
            return Err(misplaced_wildcard(w, allow_wildcards));
        }
        match class {
            TOKEN => {}
            STAR | GT if i == start => lead_wildcard = Some(b),
            STAR | GT => return Err(misplaced_wildcard(b, allow_wildcards)),
            _ => return Err(SubjectError::InvalidByte(b)),
        }
    }
    if lead_wildcard.is_some() {
        if !allow_wildcards {
            return Err(SubjectError::WildcardNotAllowed);
        }
        wild = true;
    }
    Ok(wild)
}

/// Whether `s` is a valid literal subject: the question every publish asks,
/// answered in one pass without branching on the bytes (each is classified
/// through [`CLASS`] and the verdicts are or-ed together). `false` says
/// nothing about why: [`check`] then finds the error the spec names (every
/// `true` is one [`check`] gives too; the tests hold them together).
#[inline]
fn valid_literal(s: &[u8], max_len: usize) -> bool {
    let Some(&first) = s.first() else {
        return false;
    };
    if s.len() > max_len || first == b'$' {
        return false;
    }
    // The start counts as a dot: a leading dot is an empty token. Verdicts
    // are 0 or 1 in a `u8`, or-ed without branching; every class above
    // `DOT` (wildcards, bad bytes) is refused in a literal.
    let mut after_dot = 1u8;
    let mut dots = 0usize;
    let mut bad = 0u8;
    for &b in s {
        let class = CLASS[b as usize];
        let dot = u8::from(class == DOT);
        bad |= u8::from(class > DOT) | (dot & after_dot);
        dots += usize::from(dot);
        after_dot = dot;
    }
    bad == 0 && after_dot == 0 && dots < MAX_TOKENS
}

/// The first token of `s` and what follows its `.` (`None` after the last).
#[inline]
pub(crate) fn split_token(s: &[u8]) -> (&[u8], Option<&[u8]>) {
    match s.iter().position(|&b| b == b'.') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

/// A valid literal subject.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject(Bytes);

impl Subject {
    /// Validates `raw` as a literal subject of at most `max_len` bytes.
    pub fn parse(raw: Bytes, max_len: usize) -> Result<Self, SubjectError> {
        SubjectRef::parse(&raw, max_len)?;
        Ok(Self(raw))
    }

    /// The subject borrowed: what routing and permission checks read.
    #[inline]
    pub fn view(&self) -> SubjectRef<'_> {
        SubjectRef(&self.0)
    }

    /// The subject's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The `.`-separated tokens.
    pub fn tokens(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'.')
    }
}

/// A valid literal subject borrowed from where it was read: a frame in a
/// read batch, or a [`Subject`]. The hot path validates, authorises and
/// routes a publish through one of these, taking no reference count; a
/// subject that must live on (crossing to another shard, held by a rate
/// limit) is made a [`Subject`] by whoever owns the bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubjectRef<'a>(&'a [u8]);

impl<'a> SubjectRef<'a> {
    /// Validates `raw` as a literal subject of at most `max_len` bytes (as
    /// [`Subject::parse`] does).
    #[inline]
    pub fn parse(raw: &'a [u8], max_len: usize) -> Result<Self, SubjectError> {
        if !valid_literal(raw, max_len) {
            check(raw, max_len, false)?;
        }
        Ok(Self(raw))
    }

    /// The subject's bytes.
    #[inline]
    pub fn as_bytes(self) -> &'a [u8] {
        self.0
    }

    /// The `.`-separated tokens.
    pub fn tokens(self) -> impl Iterator<Item = &'a [u8]> {
        self.0.split(|&b| b == b'.')
    }

    /// The subject owned: a slice of `owner` (one reference count) when it
    /// was read from `owner`, a copy otherwise.
    pub fn to_subject_in(self, owner: &Bytes) -> Subject {
        Subject(arqonbus_proto::codec::share(owner, self.0))
    }
}

impl<'a> From<&'a Subject> for SubjectRef<'a> {
    #[inline]
    fn from(s: &'a Subject) -> Self {
        s.view()
    }
}

impl fmt::Debug for SubjectRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Subject({})", self.0.escape_ascii())
    }
}

impl fmt::Display for SubjectRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.escape_ascii(), f)
    }
}

/// The last subject a shard validated in full. A publisher's read batch
/// usually names one subject many times: the repeats are recognised by one
/// comparison instead of a pass through the grammar. Holds a copy, never a
/// slice of a receive buffer.
#[derive(Debug, Default)]
pub struct SubjectMemo(Vec<u8>);

/// Longest subject the memo keeps; a longer one is validated every time.
const MEMO_MAX: usize = 256;

impl SubjectMemo {
    /// [`SubjectRef::parse`], remembering what passed: the same result for
    /// every input (the tests hold the two together).
    #[inline]
    pub fn check<'a>(
        &mut self,
        raw: &'a [u8],
        max_len: usize,
    ) -> Result<SubjectRef<'a>, SubjectError> {
        if raw.len() <= max_len && !self.0.is_empty() && same_bytes(raw, &self.0) {
            return Ok(SubjectRef(raw));
        }
        let subject = SubjectRef::parse(raw, max_len)?;
        if raw.len() <= MEMO_MAX {
            self.0.clear();
            self.0.extend_from_slice(raw);
        }
        Ok(subject)
    }
}

/// A valid subscription pattern (a subject that may contain wildcards).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern(Bytes);

impl Pattern {
    /// Validates `raw` as a pattern of at most `max_len` bytes.
    pub fn parse(raw: Bytes, max_len: usize) -> Result<Self, SubjectError> {
        check(&raw, max_len, true)?;
        Ok(Self(raw))
    }

    /// The same pattern in memory of its own (to keep past the batch).
    pub fn detach(self) -> Self {
        Self(Bytes::copy_from_slice(&self.0))
    }

    /// The pattern's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The underlying buffer (cheap to clone).
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The `.`-separated tokens, wildcards included.
    pub fn tokens(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'.')
    }

    /// Whether `subject` matches this pattern. A straightforward reference
    /// matcher: the index does the same work for many patterns at once.
    pub fn matches<'s>(&self, subject: impl Into<SubjectRef<'s>>) -> bool {
        let mut p = self.tokens();
        let mut s = subject.into().tokens();
        loop {
            match (p.next(), s.next()) {
                (Some(b">"), Some(_)) => return true,
                (Some(b"*"), Some(_)) => {}
                (Some(pt), Some(st)) if pt == st => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

/// A valid queue group name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueGroup(Bytes);

impl QueueGroup {
    /// Validates `raw`: 1..=[`MAX_QUEUE_GROUP_LEN`] printable ASCII bytes
    /// without `*` and `>`.
    pub fn parse(raw: Bytes) -> Result<Self, SubjectError> {
        if raw.is_empty() {
            return Err(SubjectError::Empty);
        }
        if raw.len() > MAX_QUEUE_GROUP_LEN {
            return Err(SubjectError::TooLong {
                len: raw.len(),
                max: MAX_QUEUE_GROUP_LEN,
            });
        }
        if let Some(&b) = raw
            .iter()
            .find(|&&b| !(0x21..=0x7e).contains(&b) || b == b'*' || b == b'>')
        {
            return Err(SubjectError::InvalidByte(b));
        }
        Ok(Self(raw))
    }

    /// The same name in memory of its own (to keep past the batch).
    pub fn detach(self) -> Self {
        Self(Bytes::copy_from_slice(&self.0))
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

macro_rules! ascii_debug {
    ($($t:ident),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($t), self.0.escape_ascii())
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.escape_ascii(), f)
            }
        }
    )*};
}
ascii_debug!(Subject, Pattern, QueueGroup);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The grammar checked token by token, as written in the spec: the
    /// reference the one-pass [`check`] is held to.
    fn reference_check(
        s: &[u8],
        max_len: usize,
        allow_wildcards: bool,
    ) -> Result<bool, SubjectError> {
        let is_token_byte =
            |b: u8| (0x21..=0x7e).contains(&b) && b != b'.' && b != b'*' && b != b'>';
        if s.is_empty() {
            return Err(SubjectError::Empty);
        }
        if s.len() > max_len {
            return Err(SubjectError::TooLong {
                len: s.len(),
                max: max_len,
            });
        }
        if s[0] == b'$' {
            return Err(SubjectError::Reserved);
        }
        let mut tokens = 0usize;
        let mut wild = false;
        let mut rest = s;
        loop {
            let end = rest.iter().position(|&b| b == b'.').unwrap_or(rest.len());
            let token = &rest[..end];
            tokens += 1;
            if tokens > MAX_TOKENS {
                return Err(SubjectError::TooManyTokens);
            }
            match token {
                [] => return Err(SubjectError::EmptyToken),
                [b'*' | b'>'] if !allow_wildcards => {
                    return Err(SubjectError::WildcardNotAllowed);
                }
                [b'*'] => wild = true,
                [b'>'] => {
                    if end != rest.len() {
                        return Err(SubjectError::FullWildcardNotLast);
                    }
                    wild = true;
                }
                _ => {
                    if let Some(&b) = token.iter().find(|&&b| !is_token_byte(b)) {
                        return Err(if b == b'*' || b == b'>' {
                            misplaced_wildcard(b, allow_wildcards)
                        } else {
                            SubjectError::InvalidByte(b)
                        });
                    }
                }
            }
            if end == rest.len() {
                return Ok(wild);
            }
            rest = &rest[end + 1..];
            if rest.is_empty() {
                return Err(SubjectError::EmptyToken);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5_000))]
        /// The one-pass check gives the reference's verdict and error on
        /// inputs dense in the grammar's edge cases.
        #[test]
        fn one_pass_check_agrees_with_the_reference(
            raw in proptest::collection::vec(
                prop_oneof![
                    Just(b'a'), Just(b'b'), Just(b'.'), Just(b'*'), Just(b'>'),
                    Just(b'$'), Just(b' '), Just(0x7f_u8), Just(0xc3_u8), any::<u8>(),
                ],
                0..80,
            ),
            max_len in 1usize..90,
            wildcards: bool,
        ) {
            prop_assert_eq!(
                check(&raw, max_len, wildcards),
                reference_check(&raw, max_len, wildcards)
            );
            prop_assert_eq!(
                valid_literal(&raw, max_len),
                reference_check(&raw, max_len, false).is_ok()
            );
        }

        /// The memo answers as `Subject::parse` does, for sequences that
        /// repeat subjects (valid or not) under changing limits.
        #[test]
        fn the_memo_agrees_with_parse(
            seq in proptest::collection::vec(
                (
                    prop_oneof![
                        Just(&b"a.b"[..]), Just(&b"a.b."[..]), Just(&b"a..b"[..]),
                        Just(&b"a.*"[..]), Just(&b"$a.b"[..]), Just(&b"orders.eu.created"[..]),
                        Just(&b""[..]),
                    ],
                    1usize..20,
                ),
                1..40,
            ),
        ) {
            let mut memo = SubjectMemo::default();
            for (raw, max_len) in seq {
                let expected = Subject::parse(Bytes::from_static(raw), max_len);
                prop_assert_eq!(
                    memo.check(raw, max_len).map(SubjectRef::as_bytes),
                    expected.as_ref().map(Subject::as_bytes).map_err(|e| *e)
                );
            }
        }

        /// Many short tokens: the token-count limit and its neighbours.
        #[test]
        fn token_limits_agree_with_the_reference(
            n in 28usize..36,
            tail in prop_oneof![Just(&b""[..]), Just(&b"."[..]), Just(&b".>"[..]), Just(&b"..x"[..])],
            wildcards: bool,
        ) {
            let mut raw = vec![b'a'; 1];
            for _ in 1..n {
                raw.extend_from_slice(b".a");
            }
            raw.extend_from_slice(tail);
            prop_assert_eq!(
                check(&raw, 256, wildcards),
                reference_check(&raw, 256, wildcards)
            );
            prop_assert_eq!(
                valid_literal(&raw, 256),
                reference_check(&raw, 256, false).is_ok()
            );
        }
    }

    #[test]
    fn the_fast_literal_check_finds_empty_tokens_and_bad_bytes_anywhere() {
        let cases: &[(&[u8], bool)] = &[
            (b"abcdefg.h", true),
            (b"abcdefg..h", false),
            (b"abcdefgh.", false),
            (b"abcdefgh.ijklmno", true),
            (b"abcdefgh.ijklmno.", false),
            (b"abcdefghijklmnop", true),
            (b"abcdefghijklmno\x7f", false),
            (b"abcdefghijklmno\xe9", false),
            (b"abcdefghijklmn*x", false),
            (b".abcdefgh", false),
        ];
        for &(raw, ok) in cases {
            assert_eq!(valid_literal(raw, 256), ok, "{}", raw.escape_ascii());
            assert_eq!(check(raw, 256, false).is_ok(), ok, "{}", raw.escape_ascii());
        }
    }

    fn subject(s: &'static str) -> Result<Subject, SubjectError> {
        Subject::parse(Bytes::from_static(s.as_bytes()), 256)
    }
    fn pattern(s: &'static str) -> Result<Pattern, SubjectError> {
        Pattern::parse(Bytes::from_static(s.as_bytes()), 256)
    }

    #[test]
    fn valid_subjects() {
        for s in ["a", "a.b.c", "orders.eu-west.created", "x_1.Y~2", "a.b$c"] {
            assert!(subject(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn invalid_subjects() {
        use SubjectError::*;
        let cases: [(&'static str, SubjectError); 11] = [
            ("", Empty),
            (".a", EmptyToken),
            ("a.", EmptyToken),
            ("a..b", EmptyToken),
            ("a b", InvalidByte(b' ')),
            ("a.*", WildcardNotAllowed),
            ("a.>", WildcardNotAllowed),
            ("a*", WildcardNotAllowed),
            ("$SYS.x", Reserved),
            ("a\u{e9}", InvalidByte(0xc3)),
            ("a\tb", InvalidByte(b'\t')),
        ];
        for (s, e) in cases {
            assert_eq!(subject(s).err(), Some(e), "{s:?}");
        }
        let long = "a".repeat(257);
        assert_eq!(
            Subject::parse(Bytes::from(long), 256).err(),
            Some(TooLong { len: 257, max: 256 })
        );
        let many = vec!["a"; MAX_TOKENS + 1].join(".");
        assert_eq!(
            Subject::parse(Bytes::from(many), 256).err(),
            Some(TooManyTokens)
        );
    }

    #[test]
    fn patterns() {
        use SubjectError::*;
        for p in ["a", "*", ">", "a.*", "a.>", "*.b.>", "*.*"] {
            assert!(pattern(p).is_ok(), "{p}");
        }
        assert_eq!(pattern("a.>.b").err(), Some(FullWildcardNotLast));
        assert_eq!(pattern("a*").err(), Some(InvalidByte(b'*')));
        assert_eq!(pattern("a.b>").err(), Some(InvalidByte(b'>')));
        assert_eq!(pattern("$SYS.>").err(), Some(Reserved));
    }

    #[test]
    fn reference_matcher() {
        let m =
            |p: &'static str, s: &'static str| pattern(p).unwrap().matches(&subject(s).unwrap());
        assert!(m("a.b", "a.b"));
        assert!(!m("a.b", "a.c"));
        assert!(m("a.*", "a.b"));
        assert!(!m("a.*", "a.b.c"));
        assert!(!m("a.*", "a"));
        assert!(m("a.>", "a.b.c"));
        assert!(!m("a.>", "a"));
        assert!(m(">", "a"));
        assert!(m("*.b.>", "x.b.c.d"));
    }

    #[test]
    fn queue_groups() {
        assert!(QueueGroup::parse(Bytes::from_static(b"workers.v2")).is_ok());
        assert!(QueueGroup::parse(Bytes::new()).is_err());
        assert!(QueueGroup::parse(Bytes::from_static(b"a b")).is_err());
        assert!(QueueGroup::parse(Bytes::from_static(b"a*")).is_err());
        assert!(QueueGroup::parse(Bytes::from(vec![b'q'; 65])).is_err());
    }
}

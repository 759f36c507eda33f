//! Origins of WebSocket clients: what an allowed-origin entry may be, and
//! whether a connection's `Origin` passes a list.
//!
//! Browsers send `Origin` on every WebSocket upgrade and scripts cannot
//! forge it, so an origin list stops other sites' pages from using a
//! visitor's browser against the bus (cross-site WebSocket hijacking).
//! Programs that are not browsers send no `Origin` (or any they like): an
//! origin list is not authentication, the credential is.
//!
//! Invariants: an entry is `scheme://host[:port]` exactly as browsers send
//! it (scheme `http` or `https`, no path, no trailing slash, no userinfo,
//! at most [`MAX_ORIGIN_LEN`] bytes); matching is ASCII case-insensitive and
//! exact otherwise (no wildcards); an empty list allows everything; a
//! request without `Origin` passes. No I/O.

/// Longest origin entry, bytes.
pub const MAX_ORIGIN_LEN: usize = 256;
/// Most entries in one list (server-wide or one tenant's).
pub const MAX_ORIGINS: usize = 64;

/// Why an allowed-origin entry is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// Empty or longer than [`MAX_ORIGIN_LEN`].
    #[error("must be 1..=256 bytes")]
    Length,
    /// Not `http://` or `https://`.
    #[error("must start with http:// or https://")]
    Scheme,
    /// A path, query, fragment, userinfo, whitespace or an empty host.
    #[error("must be scheme://host[:port] with nothing after the host and port")]
    Shape,
}

/// Checks one allowed-origin entry.
pub fn validate(origin: &str) -> Result<(), OriginError> {
    if origin.is_empty() || origin.len() > MAX_ORIGIN_LEN {
        return Err(OriginError::Length);
    }
    let lower = origin.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .ok_or(OriginError::Scheme)?;
    let bad = |b: u8| matches!(b, b'/' | b'?' | b'#' | b'@' | b'\\') || !b.is_ascii_graphic();
    if rest.is_empty() || rest.bytes().any(bad) {
        return Err(OriginError::Shape);
    }
    let host = match rest.rsplit_once(':') {
        // An IPv6 literal's colons are inside brackets.
        Some((host, port)) if !port.contains(']') => {
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(OriginError::Shape);
            }
            host
        }
        _ => rest,
    };
    if host.is_empty() {
        return Err(OriginError::Shape);
    }
    Ok(())
}

/// Whether a connection whose upgrade carried `origin` passes `allowed`.
pub fn allowed<S: AsRef<str>>(allowed: &[S], origin: Option<&str>) -> bool {
    match origin {
        _ if allowed.is_empty() => true,
        None => true,
        Some(o) => allowed.iter().any(|a| a.as_ref().eq_ignore_ascii_case(o)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_scheme_host_and_port_only() {
        for ok in [
            "https://app.example.com",
            "http://localhost:5173",
            "https://[::1]:8443",
            "HTTPS://App.Example.com",
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate(""), Err(OriginError::Length));
        assert_eq!(validate(&"a".repeat(300)), Err(OriginError::Length));
        for scheme in ["ftp://x", "app.example.com", "ws://x"] {
            assert_eq!(validate(scheme), Err(OriginError::Scheme), "{scheme}");
        }
        for shape in [
            "https://",
            "https://x/",
            "https://x/path",
            "https://x?q",
            "https://u@x",
            "https://x:",
            "https://x:80a",
            "https://:80",
            "https://x y",
        ] {
            assert_eq!(validate(shape), Err(OriginError::Shape), "{shape}");
        }
    }

    #[test]
    fn matching_is_exact_but_case_insensitive() {
        let list = ["https://app.example.com", "http://localhost:5173"];
        assert!(allowed(&list, Some("https://app.example.com")));
        assert!(allowed(&list, Some("HTTPS://APP.example.com")));
        assert!(!allowed(&list, Some("https://app.example.com:443")));
        assert!(!allowed(&list, Some("https://evil.example.com")));
        assert!(!allowed(&list, Some("http://app.example.com")));
        assert!(!allowed(&list, Some("null")));
        // Not a browser: no Origin to check.
        assert!(allowed(&list, None));
        // No list: no restriction.
        let none: [&str; 0] = [];
        assert!(allowed(&none, Some("https://anything.example")));
    }

    #[test]
    fn a_snapshot_keeps_each_tenants_list() {
        use crate::TenantId;
        use crate::limits::Limits;
        use crate::snapshot::ConfigSnapshot;

        let mut snap = ConfigSnapshot::new(1, Limits::default());
        snap.set_allowed_origins(TenantId(1), vec!["https://a.example".into()]);
        assert!(allowed(
            snap.allowed_origins(TenantId(1)),
            Some("https://a.example")
        ));
        assert!(!allowed(
            snap.allowed_origins(TenantId(1)),
            Some("https://b.example")
        ));
        // Another tenant, or a list set empty: any origin.
        assert!(snap.allowed_origins(TenantId(2)).is_empty());
        snap.set_allowed_origins(TenantId(1), Vec::new());
        assert!(allowed(
            snap.allowed_origins(TenantId(1)),
            Some("https://b.example")
        ));
    }
}

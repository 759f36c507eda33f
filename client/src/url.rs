//! Server URLs: `tls://host:port` (the default scheme), `tcp://host:port`
//! (plaintext, only when asked for explicitly), or a bare `host[:port]`.
//!
//! Invariants: a parsed [`ServerUrl`] has a non-empty host without brackets
//! (IPv6 literals are stored bare, e.g. `::1`), a port, and no path, query or
//! user info.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use crate::DEFAULT_PORT;
use crate::error::OptionsError;

/// How the connection is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// TLS 1.3 over TCP (ALPN `arqonbus/1`). The default.
    Tls,
    /// Plaintext TCP. Only for servers configured with `tls.enabled = false`.
    Tcp,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Self::Tls => "tls",
            Self::Tcp => "tcp",
        }
    }
}

/// A parsed server address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerUrl {
    /// TLS or plaintext.
    pub scheme: Scheme,
    /// Host name or IP address (IPv6 without brackets). Also the name the
    /// server's certificate is verified against.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl ServerUrl {
    /// Parses `tls://host:port`, `tcp://host:port` or `host[:port]`.
    pub fn parse(raw: &str) -> Result<Self, OptionsError> {
        let invalid = |reason| OptionsError::InvalidUrl {
            url: raw.to_owned(),
            reason,
        };
        let trimmed = raw.trim();
        let (scheme, rest) = match trimmed.split_once("://") {
            Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
                "tls" => (Scheme::Tls, rest),
                "tcp" => (Scheme::Tcp, rest),
                _ => return Err(invalid("the scheme must be tls:// or tcp://")),
            },
            None => (Scheme::Tls, trimmed),
        };
        // Allow one trailing slash ("tls://host:7420/"), nothing else after
        // the authority.
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err(invalid("a server URL has no path, query or fragment"));
        }
        if rest.contains('@') {
            return Err(invalid(
                "credentials do not belong in the URL; use a credential file",
            ));
        }
        let (host, port) = split_host_port(rest).map_err(invalid)?;
        Ok(Self { scheme, host, port })
    }
}

/// Splits `host[:port]` or `[v6][:port]`.
fn split_host_port(s: &str) -> Result<(String, u16), &'static str> {
    if s.is_empty() {
        return Err("the host is missing");
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address needs a closing ']'")?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err("the bracketed host is not an IPv6 address");
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("expected ':' after ']'")?),
        };
        (host, port)
    } else if s.parse::<Ipv6Addr>().is_ok() {
        // A bare IPv6 literal such as ::1 (no port possible without brackets).
        (s, None)
    } else {
        match s.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("the host is missing");
    }
    if host.contains(':') && host.parse::<Ipv6Addr>().is_err() {
        return Err("an IPv6 address must be written in brackets, e.g. [::1]:7420");
    }
    if host
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err("the host contains whitespace or control characters");
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err("the port must be a number from 1 to 65535"),
            Ok(p) => p,
        },
    };
    Ok((host.to_owned(), port))
}

impl FromStr for ServerUrl {
    type Err = OptionsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(
                f,
                "{}://[{}]:{}",
                self.scheme.as_str(),
                self.host,
                self.port
            )
        } else {
            write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> (Scheme, String, u16) {
        let u = ServerUrl::parse(s).unwrap();
        (u.scheme, u.host, u.port)
    }

    #[test]
    fn parses_schemes_hosts_and_ports() {
        assert_eq!(
            ok("tls://localhost:7420"),
            (Scheme::Tls, "localhost".into(), 7420)
        );
        assert_eq!(
            ok("tcp://127.0.0.1:4000"),
            (Scheme::Tcp, "127.0.0.1".into(), 4000)
        );
        assert_eq!(ok("example.com"), (Scheme::Tls, "example.com".into(), 7420));
        assert_eq!(ok("example.com:9"), (Scheme::Tls, "example.com".into(), 9));
        assert_eq!(ok("TLS://h/"), (Scheme::Tls, "h".into(), 7420));
        assert_eq!(ok("tls://[::1]:7421"), (Scheme::Tls, "::1".into(), 7421));
        assert_eq!(ok("tcp://[::1]"), (Scheme::Tcp, "::1".into(), 7420));
        assert_eq!(ok("::1"), (Scheme::Tls, "::1".into(), 7420));
        assert_eq!(ok("  tls://h:1  "), (Scheme::Tls, "h".into(), 1));
    }

    #[test]
    fn rejects_malformed_urls() {
        for bad in [
            "",
            "tls://",
            "http://h:1",
            "tls://h:0",
            "tls://h:70000",
            "tls://h:x",
            "tls://h:1/path",
            "tls://user:pw@h",
            "tls://[::1",
            "tls://[nothex]:1",
            "tls://::1:7420:x",
            "tls://:7420",
            "tls://h?x=1",
        ] {
            assert!(ServerUrl::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["tls://h:1", "tcp://[::1]:7420", "tls://10.0.0.1:7420"] {
            let u = ServerUrl::parse(s).unwrap();
            assert_eq!(u.to_string(), s);
            assert_eq!(ServerUrl::parse(&u.to_string()).unwrap(), u);
        }
    }
}

//! Per-connection limits (specs/protocol.md#limits). Pure data with defaults
//! and a `validate()`; the server's config file embeds it as `[limits]`.

use serde::{Deserialize, Serialize};

use crate::presence::PresenceLimits;

/// Bytes a frame may carry on top of its payload (subject, reply, headers).
pub const FRAME_OVERHEAD: u32 = 16 * 1024;
/// Largest payload any configuration may allow.
pub const MAX_PAYLOAD_CEILING: u32 = 64 * 1024 * 1024;
/// Longest header value, in bytes.
pub const MAX_HEADER_VALUE_LEN: usize = 1024;
/// Longest header key, in bytes.
pub const MAX_HEADER_KEY_LEN: usize = 64;
/// Most header bytes (keys and values) on one message.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Limits enforced on every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest payload, bytes.
    pub max_payload: u32,
    /// Most subscriptions per connection.
    pub max_subscriptions: u32,
    /// Most headers per message.
    pub max_headers: u32,
    /// Longest subject or pattern, bytes.
    pub max_subject_len: u32,
    /// Outbound bytes buffered per connection before it is a slow consumer.
    pub max_pending_bytes: u64,
    /// Idle time before the server pings a connection, milliseconds.
    pub ping_interval_ms: u64,
    /// Unanswered pings before the connection is stale.
    pub max_pings_outstanding: u32,
    /// Time allowed between accept and a valid `Connect`, milliseconds.
    pub auth_timeout_ms: u64,
    /// Time allowed to write a final error before closing, milliseconds.
    pub close_grace_ms: u64,
    /// Most connections one shard accepts.
    pub max_connections_per_shard: u32,
    /// Presence: most members of one subject, over all shards.
    pub presence_members_per_subject: u32,
    /// Presence: most members of one tenant (all its subjects), over all
    /// shards.
    pub presence_members_per_tenant: u32,
    /// Presence: most watches of one connection.
    pub presence_watches_per_connection: u32,
    /// Presence: most members one query answer lists (an answer is also
    /// cut to fit `max_frame`).
    pub presence_query_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload: 1024 * 1024,
            max_subscriptions: 10_000,
            max_headers: 32,
            max_subject_len: 256,
            max_pending_bytes: 64 * 1024 * 1024,
            ping_interval_ms: 30_000,
            max_pings_outstanding: 2,
            auth_timeout_ms: 5_000,
            close_grace_ms: 5_000,
            max_connections_per_shard: 65_536,
            presence_members_per_subject: 1_000,
            presence_members_per_tenant: 100_000,
            presence_watches_per_connection: 256,
            presence_query_max: 1_000,
        }
    }
}

/// A limit outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limits.{field} = {value} is out of range ({allowed})")]
pub struct LimitsError {
    /// The offending key.
    pub field: &'static str,
    /// Its value.
    pub value: u64,
    /// What is allowed.
    pub allowed: &'static str,
}

impl Limits {
    /// The presence bounds these limits set.
    pub fn presence(&self) -> PresenceLimits {
        PresenceLimits {
            per_subject: self.presence_members_per_subject,
            per_tenant: self.presence_members_per_tenant,
            watches_per_conn: self.presence_watches_per_connection,
            query_max: self.presence_query_max,
        }
    }

    /// Largest frame accepted: the payload limit plus room for the envelope.
    pub fn max_frame(&self) -> u32 {
        self.max_payload.saturating_add(FRAME_OVERHEAD)
    }

    /// Checks every limit is in range.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let checks: [(&'static str, u64, u64, u64, &'static str); 13] = [
            (
                "max_payload",
                self.max_payload.into(),
                1,
                MAX_PAYLOAD_CEILING.into(),
                "1..=67108864",
            ),
            (
                "max_subscriptions",
                self.max_subscriptions.into(),
                1,
                10_000_000,
                "1..=10000000",
            ),
            ("max_headers", self.max_headers.into(), 0, 256, "0..=256"),
            // Subject and reply at this length plus the header budget must
            // fit FRAME_OVERHEAD (see the test below).
            (
                "max_subject_len",
                self.max_subject_len.into(),
                16,
                2048,
                "16..=2048",
            ),
            (
                "max_pending_bytes",
                self.max_pending_bytes,
                64 * 1024,
                1 << 34,
                "65536..=17179869184",
            ),
            (
                "ping_interval_ms",
                self.ping_interval_ms,
                10,
                3_600_000,
                "10..=3600000",
            ),
            (
                "max_pings_outstanding",
                self.max_pings_outstanding.into(),
                1,
                100,
                "1..=100",
            ),
            (
                "auth_timeout_ms",
                self.auth_timeout_ms,
                10,
                600_000,
                "10..=600000",
            ),
            (
                "close_grace_ms",
                self.close_grace_ms,
                0,
                600_000,
                "0..=600000",
            ),
            (
                "presence_members_per_subject",
                self.presence_members_per_subject.into(),
                1,
                1_000_000,
                "1..=1000000",
            ),
            (
                "presence_members_per_tenant",
                self.presence_members_per_tenant.into(),
                1,
                10_000_000,
                "1..=10000000",
            ),
            (
                "presence_watches_per_connection",
                self.presence_watches_per_connection.into(),
                1,
                65_536,
                "1..=65536",
            ),
            (
                "presence_query_max",
                self.presence_query_max.into(),
                1,
                100_000,
                "1..=100000",
            ),
        ];
        for (field, value, lo, hi, allowed) in checks {
            if !(lo..=hi).contains(&value) {
                return Err(LimitsError {
                    field,
                    value,
                    allowed,
                });
            }
        }
        if self.max_pending_bytes < u64::from(self.max_frame()) {
            return Err(LimitsError {
                field: "max_pending_bytes",
                value: self.max_pending_bytes,
                allowed: ">= max_payload + 16384 (one whole frame must fit)",
            });
        }
        if self.presence_members_per_subject > self.presence_members_per_tenant {
            return Err(LimitsError {
                field: "presence_members_per_subject",
                value: self.presence_members_per_subject.into(),
                allowed: "<= presence_members_per_tenant",
            });
        }
        if self.max_connections_per_shard == 0 {
            return Err(LimitsError {
                field: "max_connections_per_shard",
                value: 0,
                allowed: ">= 1",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Limits::default().validate(), Ok(()));
    }

    #[test]
    fn the_largest_envelope_fits_the_frame_overhead() {
        // Message: frame key + length, sid, subject, reply, headers, status,
        // payload key + length. Each key and length takes at most 6 bytes.
        let max_subject = 2048;
        let headers = MAX_HEADER_BYTES + 256 * 6 * 2;
        let envelope = 6 + 11 + 2 * (max_subject + 6) + headers + 11 + 6;
        assert!(envelope <= FRAME_OVERHEAD as usize, "{envelope}");
    }

    #[test]
    fn out_of_range_is_named() {
        let l = Limits {
            max_payload: 0,
            ..Limits::default()
        };
        assert_eq!(l.validate().unwrap_err().field, "max_payload");
        let l: Limits = toml::from_str("max_pending_bytes = 10").unwrap();
        assert_eq!(l.validate().unwrap_err().field, "max_pending_bytes");
        assert!(toml::from_str::<Limits>("max_payloads = 10").is_err());
        let l: Limits = toml::from_str("presence_query_max = 0").unwrap();
        assert_eq!(l.validate().unwrap_err().field, "presence_query_max");
        let l: Limits =
            toml::from_str("presence_members_per_subject = 20\npresence_members_per_tenant = 10")
                .unwrap();
        assert_eq!(
            l.validate().unwrap_err().field,
            "presence_members_per_subject"
        );
    }

    #[test]
    fn the_default_presence_bounds_are_the_cores() {
        assert_eq!(Limits::default().presence(), PresenceLimits::default());
    }
}

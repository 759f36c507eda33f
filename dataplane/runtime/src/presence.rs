//! Presence on a shard: carries out the core's presence decisions
//! (`arqonbus_core::presence`) for one connection's requests.
//!
//! Owns nothing: the shard holds the `Presence` (its members and watches,
//! and its replica of the other shards' members); this module turns a
//! session's presence steps into calls on it, answers the client, and hands
//! deltas and events to the shard (`Shard::presence_out`), which sends the
//! deltas to every peer as `Command::Presence` and the events to watchers.
//!
//! Invariants: a member is always a live subscription of its connection to
//! a literal subject; every answer is a frame on the asking connection only;
//! refusals are non-fatal `Error` frames (`sid` = the subscription or watch
//! id) or, for a query, `PresenceReply.error`.

use std::sync::Arc;

use arqonbus_core::presence::{Member, Metadata, PresenceError};
use arqonbus_core::session::Session;
use arqonbus_core::subject::Subject;
use arqonbus_core::{ConnId, Sid};
use arqonbus_proto::v1::{self, ErrorCode, frame::Kind};
use bytes::Bytes;

use crate::conn::ConnShared;
use crate::shard::Shard;

/// A non-fatal error frame to `conn`, counted.
fn refuse(shard: &Shard, conn: &ConnShared, code: ErrorCode, id: u64, detail: &str) {
    shard.errors.borrow_mut().count(code.into());
    shard.stats.borrow_mut().client_errors += 1;
    conn.out.borrow_mut().push_frame(&Kind::Error(v1::Error {
        code: code.into(),
        message: detail.to_owned(),
        close: false,
        sid: id,
        seq: 0,
    }));
}

/// Counts a refusal at one of the presence bounds (for
/// `arqonbus_presence_refused_total{reason}`).
fn count_bound(shard: &Shard, e: PresenceError) {
    let mut stats = shard.stats.borrow_mut();
    match e {
        PresenceError::SubjectFull { .. } => stats.presence_refused_subject_full += 1,
        PresenceError::TenantFull { .. } => stats.presence_refused_tenant_full += 1,
        PresenceError::TooManyWatches { .. } => stats.presence_refused_watches += 1,
        _ => {}
    }
}

/// Whether the session's principal may see the presence of `subject`
/// (the core's rule: all without a policy, else what a policy allows).
fn may_see(session: &Session, subject: &Subject) -> bool {
    session
        .identity()
        .is_some_and(|id| id.principal.permissions.may_see_presence(subject))
}

/// `PresenceTrack{sid, metadata}`: lists the subscription `sid` (a literal
/// subject) in its subject's presence.
pub(crate) fn track(
    shard: &Shard,
    conn: &ConnShared,
    session: &Session,
    sid: Sid,
    metadata: Metadata,
) {
    let Some(id) = session.identity() else { return };
    let pattern = shard
        .router
        .borrow()
        .subscriptions_of(conn.id)
        .into_iter()
        .find(|(s, _)| *s == sid)
        .map(|(_, p)| p);
    let Some(pattern) = pattern else {
        refuse(
            shard,
            conn,
            ErrorCode::UnknownSid,
            sid.0,
            "no such subscription",
        );
        return;
    };
    let max = shard.config.borrow().limits().max_subject_len as usize;
    let Ok(subject) = Subject::parse(Bytes::copy_from_slice(pattern.as_bytes()), max) else {
        refuse(
            shard,
            conn,
            ErrorCode::InvalidSubject,
            sid.0,
            "presence needs a subscription to a literal subject",
        );
        return;
    };
    let member = Arc::new(Member {
        client_id: conn.id.0,
        kind: session.client_kind(),
        name: conn.with_client_name(|n| Arc::from(n)),
        metadata,
    });
    let (mut deltas, mut events) = (Vec::new(), Vec::new());
    let tracked = shard.presence.borrow_mut().track(
        id.tenant.id,
        &subject,
        conn.id,
        sid,
        member,
        &mut deltas,
        &mut events,
    );
    match tracked {
        Ok(()) => shard.presence_out(deltas, events),
        Err(e) => {
            count_bound(shard, e);
            refuse(shard, conn, e.code(), sid.0, &e.to_string());
        }
    }
}

/// The subscription `sid` of `conn` ended: it leaves presence, if listed.
pub(crate) fn left(shard: &Shard, conn: ConnId, sid: Sid) {
    let (mut deltas, mut events) = (Vec::new(), Vec::new());
    if shard
        .presence
        .borrow_mut()
        .untrack(conn, sid, &mut deltas, &mut events)
    {
        shard.presence_out(deltas, events);
    }
}

/// `PresenceWatch`: starts (`Some(subject)`) or stops watch `watch`.
pub(crate) fn watch(
    shard: &Shard,
    conn: &ConnShared,
    session: &Session,
    watch: u64,
    subject: Option<Subject>,
) {
    let Some(id) = session.identity() else { return };
    let result = match subject {
        None => shard.presence.borrow_mut().unwatch(conn.id, watch),
        Some(subject) => {
            if !may_see(session, &subject) {
                deny_watch(
                    shard,
                    conn,
                    watch,
                    "not allowed to see this subject's presence",
                );
                return;
            }
            shard
                .presence
                .borrow_mut()
                .watch(id.tenant.id, &subject, conn.id, watch)
        }
    };
    if let Err(e) = result {
        count_bound(shard, e);
        refuse(shard, conn, e.code(), watch, &e.to_string());
    }
}

/// After a permission change: stops the watches the principal may no
/// longer see, each with a PERMISSION_DENIED naming it.
pub(crate) fn recheck_watches(shard: &Shard, conn: &ConnShared, session: &Session) {
    let revoked = shard
        .presence
        .borrow_mut()
        .revoke_watches(conn.id, |subject| may_see(session, subject));
    for watch in revoked {
        deny_watch(
            shard,
            conn,
            watch,
            "no longer allowed to see this subject's presence",
        );
    }
}

/// A watch the principal's permissions refuse: counted, and answered with
/// PERMISSION_DENIED naming it.
fn deny_watch(shard: &Shard, conn: &ConnShared, watch: u64, detail: &str) {
    shard.stats.borrow_mut().permission_denied += 1;
    refuse(shard, conn, ErrorCode::PermissionDenied, watch, detail);
}

/// `PresenceQuery`: answers with the subject's members, from this shard's
/// replica.
pub(crate) fn query(
    shard: &Shard,
    conn: &ConnShared,
    session: &Session,
    request_id: u64,
    subject: &Subject,
) {
    let Some(id) = session.identity() else { return };
    let mut reply = v1::PresenceReply {
        request_id,
        subject: Bytes::copy_from_slice(subject.as_bytes()),
        ..v1::PresenceReply::default()
    };
    if may_see(session, subject) {
        // The answer must fit a frame the client accepts: the largest
        // frame, less room for the reply's own fields.
        let budget = {
            let config = shard.config.borrow();
            let limits = config.limits();
            (limits.max_frame() as usize).saturating_sub(limits.max_subject_len as usize + 64)
        };
        let mut members = Vec::new();
        reply.truncated =
            shard
                .presence
                .borrow()
                .query(id.tenant.id, subject, budget, &mut members);
        reply.members = members.iter().map(|m| m.to_wire()).collect();
    } else {
        shard.stats.borrow_mut().permission_denied += 1;
        reply.error = ErrorCode::PermissionDenied.into();
    }
    conn.out
        .borrow_mut()
        .push_frame(&Kind::PresenceReply(reply));
}

//! What resync does for one live object, from the object, its record and its policy: pure.

use jiff::Timestamp;
use serde_json::Value;

use crate::{
    policy::{ANNOTATION_RESTORED_AT, PROTECTED_ANNOTATIONS, Policy, RestoreFor, pending_job},
    store::{ObjectIdentity, Record, RecordWrite, Source},
};

/// What resync needs to know of a live object.
#[derive(Debug, Clone)]
pub struct Live<'a> {
    pub identity: ObjectIdentity,
    pub api_version: &'a str,
    pub kind: &'a str,
    pub uid: &'a str,
    pub resource_version: &'a str,
    pub generation: Option<i64>,
    /// When this incarnation was created.
    pub created: Option<Timestamp>,
    pub annotations: Option<&'a std::collections::BTreeMap<String, String>>,
    pub deleting: bool,
    pub status: Option<&'a Value>,
}

/// Why resync leaves an object alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// Its policy is `disabled`.
    Disabled,
    /// It has no status, and its record (if any) is its own.
    NoStatus,
    /// It is marked pending: a restore is under way, or the next write strips a dead marker.
    Pending,
    /// Its record was written after the list was taken: it knows more than the list.
    NewerRecord,
    /// It is being deleted, and its record is another incarnation's: nothing to catch up.
    Deleting,
}

/// What resync does for one live object.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    Leave(Leave),
    /// Record its status (the store's script keeps a newer record, and skips an unchanged
    /// one): a status written while restatus did not see it, or an object it never recorded.
    Record(Box<RecordWrite>),
    /// The object was created while restatus was not looking (its uid is not its record's,
    /// and it carries none of restatus's annotations): restore the record into it, bound to
    /// its uid, in fill mode. The creator is unknown, so only where policy opens restores to
    /// any creator.
    CatchUp {
        record_uid: String,
    },
    /// As [`Check::CatchUp`], but the policy keeps restores to status writers: the saved
    /// status waits, and the record is left as it is.
    Hold {
        record_uid: String,
    },
}

/// What resync does for `live`, whose record is `record`, under `policy`, with the list it
/// came from taken at `listed_at`.
pub fn check(
    live: &Live<'_>,
    record: Option<&Record>,
    policy: &Policy,
    listed_at: Timestamp,
) -> Check {
    if !policy.enabled {
        return Check::Leave(Leave::Disabled);
    }
    let record_status = || -> Check {
        match live.status {
            Some(status) => Check::Record(Box::new(RecordWrite {
                identity: live.identity.clone(),
                status: policy.restore.restorable(status),
                api_version: live.api_version.to_owned(),
                kind: live.kind.to_owned(),
                uid: live.uid.to_owned(),
                resource_version: live.resource_version.to_owned(),
                generation: live.generation,
                source: Source::Observed,
                deleting: live.deleting,
                retention: policy.retention,
                restored_by: None,
                catch_up: None,
                listed_at: Some(listed_at),
            })),
            None => Check::Leave(Leave::NoStatus),
        }
    };
    let Some(record) = record else {
        return record_status();
    };
    if record.uid == live.uid || record.uid.is_empty() {
        return record_status();
    }
    if record.recorded_at.is_some_and(|at| at >= listed_at) {
        return Check::Leave(Leave::NewerRecord);
    }
    if pending_job(live.annotations).is_some() {
        return Check::Leave(Leave::Pending);
    }
    let handled = live.annotations.is_some_and(|a| {
        PROTECTED_ANNOTATIONS.iter().any(|k| a.contains_key(*k))
            || a.contains_key(ANNOTATION_RESTORED_AT)
    });
    if handled {
        // restatus restored (or was asked to restore, or failed to restore) this object: its
        // status is its own now, and the record only missed the adoption. The webhook records
        // its writes the same way.
        return record_status();
    }
    if !live.created.is_some_and(|created| record.predates(created)) {
        // Written while this incarnation already lived: no earlier incarnation's status, but
        // a forged review's or one planted in Redis. The object's own status replaces it.
        return record_status();
    }
    if live.deleting {
        return Check::Leave(Leave::Deleting);
    }
    let record_uid = record.uid.clone();
    match policy.restore_for {
        RestoreFor::Creators => Check::CatchUp { record_uid },
        RestoreFor::StatusWriters => Check::Hold { record_uid },
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use serde_json::json;

    use super::*;
    use crate::policy::{RestoreMode, RestorePolicy};

    fn policy(enabled: bool, restore_for: RestoreFor) -> Policy {
        Policy {
            enabled,
            restore: RestorePolicy {
                mode: RestoreMode::Fill,
                fields: vec![],
                narrowed_to: vec![],
                exclude_fields: vec!["/observedGeneration".parse().unwrap()],
            },
            retention: Duration::from_secs(3600),
            restore_for,
        }
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    fn record(uid: &str, recorded_at: i64) -> Record {
        Record {
            status: json!({"phase": "Saved"}),
            digest: String::new(),
            api_version: "v1".into(),
            kind: "Service".into(),
            uid: uid.into(),
            resource_version: "5".into(),
            generation: None,
            recorded_at: Some(at(recorded_at)),
            deleted_at: None,
            restored_at: None,
            restored_by: None,
        }
    }

    fn live<'a>(
        status: Option<&'a Value>,
        annotations: Option<&'a BTreeMap<String, String>>,
    ) -> Live<'a> {
        Live {
            identity: ObjectIdentity {
                group: String::new(),
                resource: "services".into(),
                namespace: Some("ns".into()),
                name: "web".into(),
            },
            api_version: "v1",
            kind: "Service",
            uid: "live-uid",
            resource_version: "9",
            generation: Some(2),
            created: Some(at(60)),
            annotations,
            deleting: false,
            status,
        }
    }

    #[test]
    fn what_resync_does_for_each_kind_of_object() {
        let status = json!({"phase": "Live", "observedGeneration": 2});
        let pending = BTreeMap::from([
            ("restatus.io/restore".to_owned(), "pending".to_owned()),
            ("restatus.io/restore-job".to_owned(), "j".to_owned()),
        ]);
        let restored = BTreeMap::from([(
            "restatus.io/restored-at".to_owned(),
            "2026-12-01T00:00:00Z".to_owned(),
        )]);
        let creators = policy(true, RestoreFor::Creators);
        let writers = policy(true, RestoreFor::StatusWriters);
        let listed = at(100);
        let recorded = |c: Check| match c {
            Check::Record(w) => {
                assert_eq!(w.status, json!({"phase": "Live"}), "narrowed by the policy");
                assert_eq!(w.source, Source::Observed);
                assert_eq!(
                    (w.uid.as_str(), w.resource_version.as_str()),
                    ("live-uid", "9")
                );
                "record"
            }
            Check::Leave(Leave::NoStatus) => "no status",
            Check::Leave(Leave::Disabled) => "disabled",
            Check::Leave(Leave::Pending) => "pending",
            Check::Leave(Leave::NewerRecord) => "newer record",
            Check::Leave(Leave::Deleting) => "deleting",
            Check::CatchUp { record_uid } => {
                assert_eq!(record_uid, "old-uid");
                "catch up"
            }
            Check::Hold { record_uid } => {
                assert_eq!(record_uid, "old-uid");
                "hold"
            }
        };
        let failed = BTreeMap::from([("restatus.io/restore".to_owned(), "failed".to_owned())]);
        let own = record("live-uid", 50);
        let old = record("old-uid", 50);
        let newer = record("old-uid", 150);
        // Written after the object was created: planted, or from a forged review.
        let planted = record("old-uid", 61);
        let same_second = record("old-uid", 60);
        let undated = Live {
            created: None,
            ..live(None, None)
        };
        let deleting = Live {
            deleting: true,
            ..live(None, None)
        };
        let cases = [
            (
                "created unseen, being deleted",
                deleting.clone(),
                Some(&old),
                &creators,
                "deleting",
            ),
            (
                "created unseen, being deleted, restores for status writers",
                deleting,
                Some(&old),
                &writers,
                "deleting",
            ),
            (
                "never recorded",
                live(Some(&status), None),
                None,
                &creators,
                "record",
            ),
            (
                "never recorded, no status",
                live(None, None),
                None,
                &creators,
                "no status",
            ),
            (
                "its own record",
                live(Some(&status), None),
                Some(&own),
                &creators,
                "record",
            ),
            (
                "disabled",
                live(Some(&status), None),
                Some(&own),
                &policy(false, RestoreFor::Creators),
                "disabled",
            ),
            (
                "created unseen",
                live(None, None),
                Some(&old),
                &creators,
                "catch up",
            ),
            (
                "created unseen, with a status",
                live(Some(&status), None),
                Some(&old),
                &creators,
                "catch up",
            ),
            (
                "created unseen, restores for status writers",
                live(None, None),
                Some(&old),
                &writers,
                "hold",
            ),
            (
                "a restore under way",
                live(None, Some(&pending)),
                Some(&old),
                &creators,
                "pending",
            ),
            (
                "restored, the adoption missed",
                live(Some(&status), Some(&restored)),
                Some(&old),
                &creators,
                "record",
            ),
            (
                "a catch-up that failed for good",
                live(Some(&status), Some(&failed)),
                Some(&old),
                &creators,
                "record",
            ),
            (
                "a record written after the object was created",
                live(Some(&status), None),
                Some(&planted),
                &creators,
                "record",
            ),
            (
                "a record written after the object was created, restores for status writers",
                live(Some(&status), None),
                Some(&planted),
                &writers,
                "record",
            ),
            (
                "a record written within the second the object was created",
                live(None, None),
                Some(&same_second),
                &creators,
                "catch up",
            ),
            (
                "an object that does not say when it was created",
                undated,
                Some(&old),
                &creators,
                "no status",
            ),
            (
                "a record newer than the list",
                live(None, None),
                Some(&newer),
                &creators,
                "newer record",
            ),
        ];
        for (what, live, record, policy, want) in cases {
            assert_eq!(
                recorded(check(&live, record, policy, listed)),
                want,
                "{what}"
            );
        }
    }
}

//! `review::decode` then `admission::plan` with a context from the input.
//!
//! Input: a header line `type|own-user|crd|namespace`, then the review bytes.
//! - `type`: `keeps` (the type keeps `.status` on create) or anything else (drops it);
//! - `own-user`: restatus's own user, empty for unknown;
//! - `crd`, `namespace`: `key=value;key=value` policy annotations of those levels, keys
//!   without their `restatus.io/` prefix. The object's own come from the review, as the
//!   webhook reads them.
//!
//! Invariants: nothing panics; the plan is what the request allows (a dry run is skipped, a
//! record is asked only for an enabled object with a status, by an UPDATE or a DELETE, under
//! the request's own resource, a restore check only for a named CREATE, a pending merge only
//! for a status write, an expiry only for a disabled DELETE); the identity never has an empty
//! namespace and keeps the request's name; the plan is the same when asked twice; warnings
//! about skipped annotations are bounded.
#![no_main]

use std::{collections::BTreeMap, time::Duration};

use kube::core::admission::Operation;
use libfuzzer_sys::fuzz_target;
use restatus::{
    admission::{Context, Plan, Skip, plan, review},
    policy::{
        Defaults, Enablement, LevelAnnotations, Overrides, RestoreFor, RestoreMode, TypeInfo,
        resolve,
    },
    store::Source,
};
use restatus_fuzz::{MESSAGE_LIMIT, skipped, split_header};

fn level(spec: &str) -> Option<LevelAnnotations> {
    if spec.is_empty() {
        return None;
    }
    let map: BTreeMap<String, String> = spec
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (format!("restatus.io/{k}"), v.to_owned()))
        .collect();
    Some(Overrides::parse(Some(&map)))
}

fn defaults() -> Defaults {
    Defaults {
        policy: Enablement::Enabled,
        mode: RestoreMode::Fill,
        fields: vec![],
        exclude_fields: vec![
            "/observedGeneration".parse().expect("a valid pattern"),
            "/conditions/*/observedGeneration"
                .parse()
                .expect("a valid pattern"),
        ],
        retention: Duration::from_secs(30 * 86_400),
        restore_for: RestoreFor::StatusWriters,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((header, body)) = split_header(data) else {
        return;
    };
    let mut parts = header.split('|');
    let type_info = match parts.next() {
        Some("keeps") => TypeInfo::KeepsStatusOnCreate,
        _ => TypeInfo::DropsStatusOnCreate,
    };
    let own_user = parts.next().filter(|u| !u.is_empty());
    let crd = level(parts.next().unwrap_or(""));
    let namespace = level(parts.next().unwrap_or(""));

    let Ok(req) = review::decode(body) else {
        return;
    };
    // The object's own annotations, as the webhook reads them: the old object's for a
    // DELETE, else the new one's.
    let subject = match req.operation {
        Operation::Delete => req.old_object.as_ref(),
        _ => req.object.as_ref(),
    };
    let object = subject
        .and_then(|o| o.metadata.annotations.as_ref())
        .map(|a| Overrides::parse(Some(a)));
    let resolved = resolve(
        &defaults(),
        crd.as_ref(),
        namespace.as_ref(),
        object.as_ref(),
    );
    if !skipped("warning_bound") {
        for s in &resolved.skipped {
            let warning = s.warning();
            assert!(
                warning.len() <= MESSAGE_LIMIT,
                "a {} byte admission warning quotes the annotation back: {}...",
                warning.len(),
                warning.chars().take(160).collect::<String>()
            );
        }
    }
    let policy = &resolved.policy;
    let ctx = Context {
        type_info,
        own_user,
        policy,
    };
    let planned = plan(&req, &ctx);
    assert_eq!(planned, plan(&req, &ctx), "the plan is a pure function");

    if req.dry_run {
        assert_eq!(planned, Plan::Skip(Skip::DryRun));
        return;
    }
    let sub = req.sub_resource.as_deref();
    if sub.is_some_and(|s| s != "status") {
        assert_eq!(planned, Plan::Skip(Skip::OtherSubresource));
    }
    if req.operation == Operation::Connect && sub.is_none() {
        assert_eq!(planned, Plan::Skip(Skip::Unsupported));
    }
    let check_identity = |id: &restatus::store::ObjectIdentity| {
        assert_eq!(id.group, req.resource.group);
        assert_eq!(id.resource, req.resource.resource);
        assert_ne!(id.namespace.as_deref(), Some(""), "no empty namespace");
        if !req.name.is_empty() {
            assert_eq!(id.name, req.name);
        }
    };
    match &planned {
        Plan::Record(write) => {
            assert!(policy.enabled, "a disabled object is never recorded");
            assert!(!write.status.is_null(), "a record always has a status");
            assert!(matches!(
                req.operation,
                Operation::Update | Operation::Delete
            ));
            assert!(sub.is_none() || sub == Some("status"));
            if req.operation == Operation::Delete {
                assert_eq!(write.source, Source::Deleted);
                assert!(write.deleting);
            }
            assert_eq!(write.retention, policy.retention);
            assert_eq!(write.kind, req.kind.kind);
            check_identity(&write.identity);
        }
        Plan::Create(check) => {
            assert_eq!(req.operation, Operation::Create);
            assert!(sub.is_none());
            assert!(!req.name.is_empty());
            assert!(policy.enabled);
            assert_eq!(check.type_info, type_info);
            if type_info == TypeInfo::DropsStatusOnCreate {
                assert_eq!(check.status, None);
            }
            check_identity(&check.identity);
        }
        Plan::PendingStatusWrite(write) => {
            assert_eq!(req.operation, Operation::Update);
            assert_eq!(sub, Some("status"));
            assert!(policy.enabled);
            let own = own_user.is_some() && req.user_info.username.as_deref() == own_user;
            assert!(!own, "restatus's own status writes are never merged");
            check_identity(&write.identity);
        }
        Plan::Expire {
            identity,
            retention,
        } => {
            assert_eq!(req.operation, Operation::Delete);
            assert!(!policy.enabled);
            assert_eq!(*retention, policy.retention);
            check_identity(identity);
        }
        Plan::Skip(Skip::Disabled) => assert!(!policy.enabled),
        Plan::Skip(_) => {}
    }
});

//! What status a restore writes: pure, no I/O. The webhook uses it to merge a status write
//! into a pending object, the worker to decide its status patch.

use serde_json::Value;

use super::{RestoreMode, RestorePolicy};

/// The status to write so that `live` gets the saved facts, or `None` when `live` already
/// has them.
///
/// `saved` is a record (what the policy kept when the status was recorded), and only the
/// part the policy restores counts ([`RestorePolicy::restorable_of_saved`]): the policy's
/// `fields`, minus its `exclude_fields`. Then, by the policy's mode:
/// - `Fill` adds the saved fields absent from the live status, recursing into objects; a
///   list, a string or a number counts as one value, and a live value always wins. A `null`
///   counts as absent.
/// - `Replace` writes every saved field over the live one; live fields the record does not
///   have are kept, so an excluded field such as `observedGeneration` is never erased.
pub fn decide(saved: &Value, live: Option<&Value>, policy: &RestorePolicy) -> Option<Value> {
    merge(&policy.restorable_of_saved(saved), live, policy.mode)
}

/// [`decide`] in `fill` mode whatever `policy.mode` says: for a status write to an object
/// waiting for its restore, where the writer's fresh facts always win.
pub fn decide_fill(saved: &Value, live: Option<&Value>, policy: &RestorePolicy) -> Option<Value> {
    merge(&policy.restorable_of_saved(saved), live, RestoreMode::Fill)
}

fn merge(saved: &Value, live: Option<&Value>, mode: RestoreMode) -> Option<Value> {
    let live = live.filter(|v| !v.is_null());
    let merged = match mode {
        RestoreMode::Fill => fill(saved, live),
        RestoreMode::Replace => replace(saved, live),
    };
    (Some(&merged) != live).then_some(merged)
}

fn fill(saved: &Value, live: Option<&Value>) -> Value {
    match (saved, live) {
        (_, None) => saved.clone(),
        (Value::Object(s), Some(Value::Object(l))) => {
            let mut out = l.clone();
            for (key, saved_child) in s {
                let merged = fill(saved_child, l.get(key).filter(|v| !v.is_null()));
                out.insert(key.clone(), merged);
            }
            Value::Object(out)
        }
        (_, Some(live)) => live.clone(),
    }
}

fn replace(saved: &Value, live: Option<&Value>) -> Value {
    match (saved, live) {
        (Value::Object(s), Some(Value::Object(l))) => {
            let mut out = l.clone();
            for (key, saved_child) in s {
                let merged = replace(saved_child, l.get(key));
                out.insert(key.clone(), merged);
            }
            Value::Object(out)
        }
        _ => saved.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decide_fill_fills_whatever_the_mode() {
        let saved = json!({"phase": "Running", "clusterID": "c-1"});
        let live = json!({"phase": "Provisioning"});
        let replace = policy(RestoreMode::Replace, &["/secret"]);
        assert_eq!(
            decide_fill(&saved, Some(&live), &replace),
            Some(json!({"phase": "Provisioning", "clusterID": "c-1"}))
        );
        assert_eq!(
            decide(&saved, Some(&live), &replace),
            Some(json!({"phase": "Running", "clusterID": "c-1"}))
        );
        let complete = json!({"phase": "Provisioning", "clusterID": "c-1"});
        assert_eq!(decide_fill(&saved, Some(&complete), &replace), None);
    }

    fn policy(mode: RestoreMode, exclude: &[&str]) -> RestorePolicy {
        RestorePolicy {
            mode,
            fields: vec![],
            narrowed_to: vec![],
            exclude_fields: exclude.iter().map(|p| p.parse().unwrap()).collect(),
        }
    }

    fn fill() -> RestorePolicy {
        policy(RestoreMode::Fill, &[])
    }

    fn replace_all() -> RestorePolicy {
        policy(RestoreMode::Replace, &[])
    }

    #[test]
    fn a_record_made_with_an_index_exclusion_is_restored_whole() {
        // Excluding the second endpoint closes up the list: the record's second element is
        // the status's third, which the exclusion does not name.
        let policy = policy(RestoreMode::Replace, &["/endpoints/1"]);
        let status = json!({"endpoints": [{"host": "a"}, {"host": "b"}, {"host": "c"}]});
        let saved = policy.restorable(&status);
        assert_eq!(saved, json!({"endpoints": [{"host": "a"}, {"host": "c"}]}));
        assert_eq!(decide(&saved, None, &policy), Some(saved.clone()));
        assert_eq!(decide_fill(&saved, None, &policy), Some(saved));
    }

    #[test]
    fn fill_into_missing_status_restores_everything() {
        let saved = json!({"apiServerURL": "https://k", "masterVersion": "1.30"});
        assert_eq!(decide(&saved, None, &fill()), Some(saved.clone()));
        assert_eq!(
            decide(&saved, Some(&Value::Null), &fill()),
            Some(saved.clone())
        );
        assert_eq!(decide(&saved, Some(&json!({})), &fill()), Some(saved));
    }

    #[test]
    fn fill_keeps_the_controllers_fresh_facts() {
        let saved =
            json!({"phase": "Running", "apiServerURL": "https://k", "masterVersion": "1.30"});
        let live = json!({"phase": "Provisioning"});
        assert_eq!(
            decide(&saved, Some(&live), &fill()),
            Some(
                json!({"phase": "Provisioning", "apiServerURL": "https://k", "masterVersion": "1.30"})
            )
        );
    }

    #[test]
    fn fill_recurses_into_objects_but_not_lists() {
        let saved = json!({
            "loadBalancer": {"ingress": [{"ip": "1.2.3.4"}], "class": "a"},
            "conditions": [{"type": "Ready"}, {"type": "Synced"}]
        });
        let live = json!({
            "loadBalancer": {"class": "b"},
            "conditions": []
        });
        assert_eq!(
            decide(&saved, Some(&live), &fill()),
            Some(json!({
                "loadBalancer": {"ingress": [{"ip": "1.2.3.4"}], "class": "b"},
                "conditions": []
            }))
        );
    }

    #[test]
    fn fill_treats_null_as_absent() {
        let saved = json!({"endpoint": "x"});
        let live = json!({"endpoint": null, "phase": "P"});
        assert_eq!(
            decide(&saved, Some(&live), &fill()),
            Some(json!({"endpoint": "x", "phase": "P"}))
        );
    }

    #[test]
    fn nothing_to_do_when_live_has_everything() {
        let saved = json!({"a": 1, "b": {"c": 2}});
        let live = json!({"a": 5, "b": {"c": 3, "d": 4}});
        assert_eq!(decide(&saved, Some(&live), &fill()), None);
        assert_eq!(decide(&saved, Some(&saved), &replace_all()), None);
        assert_eq!(decide(&json!({}), None, &fill()), Some(json!({})));
        assert_eq!(decide(&json!({}), Some(&json!({})), &fill()), None);
    }

    #[test]
    fn replace_overwrites_saved_fields_and_keeps_the_rest() {
        let saved = json!({"phase": "Running", "endpoint": "x", "nested": {"a": 1}, "list": [1]});
        let live = json!({"phase": "Provisioning", "observedGeneration": 1, "nested": {"b": 2}, "list": [2, 3]});
        assert_eq!(
            decide(&saved, Some(&live), &replace_all()),
            Some(json!({
                "phase": "Running",
                "endpoint": "x",
                "observedGeneration": 1,
                "nested": {"a": 1, "b": 2},
                "list": [1]
            }))
        );
    }

    #[test]
    fn filters_apply_before_the_mode() {
        let saved = json!({
            "phase": "Running",
            "observedGeneration": 4,
            "conditions": [{"type": "Ready", "observedGeneration": 4}]
        });
        let p = policy(
            RestoreMode::Fill,
            &["/observedGeneration", "/conditions/*/observedGeneration"],
        );
        assert_eq!(
            decide(&saved, None, &p),
            Some(json!({"phase": "Running", "conditions": [{"type": "Ready"}]}))
        );
        // Replace never erases a live value the filters exclude.
        let p = policy(RestoreMode::Replace, &["/observedGeneration"]);
        let live = json!({"observedGeneration": 1, "phase": "Provisioning"});
        assert_eq!(
            decide(&saved, Some(&live), &p),
            Some(json!({
                "observedGeneration": 1,
                "phase": "Running",
                "conditions": [{"type": "Ready", "observedGeneration": 4}]
            }))
        );
        // Only selected fields are restored.
        let p = RestorePolicy {
            mode: RestoreMode::Fill,
            narrowed_to: vec![],
            fields: vec!["/phase".parse().unwrap()],
            exclude_fields: vec![],
        };
        assert_eq!(decide(&saved, None, &p), Some(json!({"phase": "Running"})));
    }
}

//! JSON Patch operations (RFC 6902) on objects: the webhook answers with them, and the
//! restore worker sends them to the status subresource.
//!
//! Pointers are built from tokens, so keys with `/` or `~` are escaped (`restatus.io/restore`
//! becomes `restatus.io~1restore`).

use std::collections::BTreeMap;

use json_patch::{
    AddOperation, PatchOperation, RemoveOperation, ReplaceOperation, TestOperation,
    jsonptr::PointerBuf,
};
use serde_json::Value;

/// Operations that set `annotations` on an object whose current annotations are `existing`.
/// A missing `/metadata/annotations` is created with all of them at once; otherwise each is
/// added under its escaped key (`restatus.io/restore` becomes `restatus.io~1restore`).
pub fn set_annotations(
    existing: Option<&BTreeMap<String, String>>,
    annotations: &[(&str, &str)],
) -> Vec<PatchOperation> {
    match existing {
        None => {
            let map: serde_json::Map<String, Value> = annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
                .collect();
            vec![PatchOperation::Add(AddOperation {
                path: PointerBuf::from_tokens(["metadata", "annotations"]),
                value: Value::Object(map),
            })]
        }
        Some(_) => annotations
            .iter()
            .map(|(k, v)| {
                PatchOperation::Add(AddOperation {
                    path: PointerBuf::from_tokens(["metadata", "annotations", *k]),
                    value: Value::String((*v).to_owned()),
                })
            })
            .collect(),
    }
}

/// Removes an annotation if the object has it.
pub fn remove_annotation(
    existing: Option<&BTreeMap<String, String>>,
    key: &str,
) -> Option<PatchOperation> {
    existing.filter(|a| a.contains_key(key)).map(|_| {
        PatchOperation::Remove(RemoveOperation {
            path: PointerBuf::from_tokens(["metadata", "annotations", key]),
        })
    })
}

/// Sets the whole `.status` ("add" replaces an existing member).
pub fn set_status(status: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(["status"]),
        value: status,
    })
}

/// Makes the patch apply only to this resourceVersion: the API server answers 409 Conflict
/// when the object changed meanwhile, since a patch's resourceVersion is a precondition.
pub fn expect_resource_version(resource_version: &str) -> PatchOperation {
    PatchOperation::Replace(ReplaceOperation {
        path: PointerBuf::from_tokens(["metadata", "resourceVersion"]),
        value: Value::String(resource_version.to_owned()),
    })
}

/// Makes the patch apply only to the object with this uid: the API server refuses it (422)
/// when the name now belongs to another incarnation.
pub fn expect_uid(uid: &str) -> PatchOperation {
    PatchOperation::Test(TestOperation {
        path: PointerBuf::from_tokens(["metadata", "uid"]),
        value: Value::String(uid.to_owned()),
    })
}

/// Makes the patch apply only while the object's annotation `key` has `value`: the API server
/// refuses it (422) otherwise.
pub fn expect_annotation(key: &str, value: &str) -> PatchOperation {
    PatchOperation::Test(TestOperation {
        path: PointerBuf::from_tokens(["metadata", "annotations", key]),
        value: Value::String(value.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apply(doc: &mut Value, ops: Vec<PatchOperation>) {
        json_patch::patch(doc, &ops).unwrap();
    }

    #[test]
    fn annotation_keys_are_escaped() {
        let existing = BTreeMap::from([("a".to_owned(), "b".to_owned())]);
        let ops = set_annotations(Some(&existing), &[("restatus.io/restore", "pending")]);
        let text = serde_json::to_value(&ops).unwrap();
        assert_eq!(
            text,
            json!([{"op": "add", "path": "/metadata/annotations/restatus.io~1restore", "value": "pending"}])
        );
    }

    #[test]
    fn missing_annotations_are_created_first() {
        let mut doc = json!({"metadata": {"name": "x"}});
        apply(
            &mut doc,
            set_annotations(None, &[("restatus.io/restore", "pending"), ("x~y", "z")]),
        );
        assert_eq!(
            doc["metadata"]["annotations"],
            json!({"restatus.io/restore": "pending", "x~y": "z"})
        );
    }

    #[test]
    fn patches_apply_to_real_objects() {
        let mut doc =
            json!({"metadata": {"annotations": {"keep": "1", "restatus.io/restore": "pending"}}});
        let existing: BTreeMap<String, String> =
            serde_json::from_value(doc["metadata"]["annotations"].clone()).unwrap();
        let mut ops = set_annotations(Some(&existing), &[("restatus.io/restored-at", "t")]);
        ops.extend(remove_annotation(Some(&existing), "restatus.io/restore"));
        assert!(remove_annotation(Some(&existing), "absent").is_none());
        ops.push(set_status(json!({"phase": "Ready"})));
        apply(&mut doc, ops);
        assert_eq!(
            doc,
            json!({
                "metadata": {"annotations": {"keep": "1", "restatus.io/restored-at": "t"}},
                "status": {"phase": "Ready"}
            })
        );
        // "add" of /status replaces an existing one too.
        apply(&mut doc, vec![set_status(json!({"phase": "Other"}))]);
        assert_eq!(doc["status"], json!({"phase": "Other"}));
    }

    #[test]
    fn preconditions_on_the_version_and_the_incarnation() {
        // The resourceVersion is replaced: the API server compares it with the stored one.
        let version = expect_resource_version("42");
        let uid = expect_uid("u-2");
        assert_eq!(
            serde_json::to_value([&version, &uid]).unwrap(),
            json!([
                {"op": "replace", "path": "/metadata/resourceVersion", "value": "42"},
                {"op": "test", "path": "/metadata/uid", "value": "u-2"}
            ])
        );
        let mut doc = json!({"metadata": {"resourceVersion": "41", "uid": "u-2"}});
        apply(&mut doc, vec![version, uid.clone()]);
        assert_eq!(doc["metadata"]["resourceVersion"], "42");
        // The uid is tested: the patch fails on another incarnation.
        let mut other = json!({"metadata": {"uid": "u-1"}});
        assert!(json_patch::patch(&mut other, &[uid]).is_err());
    }
}

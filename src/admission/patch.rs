//! JSON patches the webhook answers with.

use std::collections::BTreeMap;

use json_patch::{AddOperation, PatchOperation, RemoveOperation, jsonptr::PointerBuf};
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
}

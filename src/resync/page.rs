//! One page of a resync list, read within a byte budget and decoded the way the webhook decodes
//! a review: of each object only the metadata resync reads, and its status kept as raw JSON
//! (a slice of the body) until it is checked against the status limits and parsed. `spec` and
//! everything else is skipped without being built, so a page costs its body and one parsed
//! status at a time, not a tree of every object on it.

use std::collections::BTreeMap;

use futures::AsyncReadExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    api::{ApiResource, DynamicObject, ListParams},
    core::{Request, Resource},
};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The body bytes of one page at most. A page whose body is larger is dropped and asked for
/// again with half as many objects; one object fits, since the API server stores none larger
/// than a few MiB.
pub const PAGE_BYTES: usize = 16 << 20;

/// A page of a list as the API server sends it.
#[derive(Debug, Deserialize)]
pub struct Page<'a> {
    #[serde(default)]
    pub metadata: PageMeta,
    #[serde(borrow, default)]
    pub items: Vec<Item<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageMeta {
    #[serde(rename = "continue", default)]
    pub continue_token: Option<String>,
    #[serde(default)]
    pub remaining_item_count: Option<i64>,
}

/// A listed object: what resync reads of it.
#[derive(Debug, Deserialize)]
pub struct Item<'a> {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(borrow, default)]
    pub status: Option<&'a RawValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub resource_version: String,
    #[serde(default)]
    pub generation: Option<i64>,
    #[serde(default)]
    pub creation_timestamp: Option<String>,
    #[serde(default)]
    pub deletion_timestamp: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Item<'_> {
    /// The status, unless it is absent or `null`.
    pub fn raw_status(&self) -> Option<&RawValue> {
        self.status.filter(|raw| raw.get() != "null")
    }

    pub fn created(&self) -> Option<Timestamp> {
        self.metadata
            .creation_timestamp
            .as_deref()
            .and_then(|t| t.parse().ok())
    }

    /// A reference to the object, for an Event about it.
    pub fn reference(&self, ar: &ApiResource) -> ObjectReference {
        ObjectReference {
            api_version: Some(ar.api_version.clone()),
            kind: Some(ar.kind.clone()),
            name: Some(self.metadata.name.clone()),
            namespace: self.metadata.namespace.clone(),
            uid: Some(self.metadata.uid.clone()),
            resource_version: Some(self.metadata.resource_version.clone()),
            field_path: None,
        }
    }
}

/// What reading a page gave.
pub enum Read {
    /// The body, within [`PAGE_BYTES`].
    Body(Vec<u8>),
    /// The body was larger: ask again for fewer objects.
    TooLarge,
}

/// Reads one page of `ar`'s list with `params`, stopping at `budget` bytes.
pub async fn read(
    client: &Client,
    ar: &ApiResource,
    params: &ListParams,
    budget: usize,
) -> Result<Read, kube::Error> {
    let request = Request::new(DynamicObject::url_path(ar, None))
        .list(params)
        .map_err(kube::Error::BuildRequest)?;
    let mut body = client.request_stream(request).await?;
    let mut buf = Vec::new();
    let limit = u64::try_from(budget).unwrap_or(u64::MAX).saturating_add(1);
    (&mut body)
        .take(limit)
        .read_to_end(&mut buf)
        .await
        .map_err(kube::Error::ReadEvents)?;
    if buf.len() > budget {
        return Ok(Read::TooLarge);
    }
    Ok(Read::Body(buf))
}

/// Decodes a page's body.
pub fn decode(body: &[u8]) -> Result<Page<'_>, serde_json::Error> {
    serde_json::from_slice(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_keeps_only_metadata_and_the_raw_status() {
        let body = br#"{"kind":"FooList","metadata":{"continue":"abc","remainingItemCount":3,"resourceVersion":"9"},
            "items":[
              {"metadata":{"name":"a","namespace":"n","uid":"u1","resourceVersion":"7","generation":2,
                 "creationTimestamp":"2026-01-01T00:00:00Z","annotations":{"k":"v"},
                 "managedFields":[{"x":[1,2,3]}]},
               "spec":{"big":[0,0,0,0]},"status":{"phase":"Ready","n":[1,2]}},
              {"metadata":{"name":"b","uid":"u2","resourceVersion":"8","deletionTimestamp":"2026-01-02T00:00:00Z"},"status":null},
              {"metadata":{"name":"c","uid":"u3","resourceVersion":"9"}}
            ]}"#;
        let page = decode(body).unwrap();
        assert_eq!(page.metadata.continue_token.as_deref(), Some("abc"));
        assert_eq!(page.metadata.remaining_item_count, Some(3));
        assert_eq!(page.items.len(), 3);
        let a = &page.items[0];
        assert_eq!(a.metadata.name, "a");
        assert_eq!(a.metadata.namespace.as_deref(), Some("n"));
        assert_eq!(a.metadata.uid, "u1");
        assert_eq!(a.metadata.resource_version, "7");
        assert_eq!(a.metadata.generation, Some(2));
        assert_eq!(
            a.created(),
            Some("2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap())
        );
        assert!(a.metadata.deletion_timestamp.is_none());
        assert_eq!(a.metadata.annotations.as_ref().unwrap()["k"], "v");
        assert_eq!(
            a.raw_status().unwrap().get(),
            r#"{"phase":"Ready","n":[1,2]}"#
        );
        // The status is a slice of the body, not a copy.
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        assert!(range.contains(&(a.raw_status().unwrap().get().as_ptr() as usize)));
        let b = &page.items[1];
        assert!(b.metadata.deletion_timestamp.is_some());
        assert!(b.raw_status().is_none(), "a null status is no status");
        assert!(page.items[2].raw_status().is_none());
        let reference = a.reference(&ApiResource {
            group: "g".into(),
            version: "v1".into(),
            api_version: "g/v1".into(),
            kind: "Foo".into(),
            plural: "foos".into(),
        });
        assert_eq!(reference.kind.as_deref(), Some("Foo"));
        assert_eq!(reference.uid.as_deref(), Some("u1"));
        assert_eq!(reference.namespace.as_deref(), Some("n"));
    }

    #[test]
    fn the_last_page_has_no_continue_token() {
        let page = decode(br#"{"metadata":{},"items":[]}"#).unwrap();
        assert!(page.metadata.continue_token.is_none());
        assert!(page.items.is_empty());
        let page = decode(br#"{"metadata":{"continue":""},"items":null}"#);
        assert!(page.is_err() || page.unwrap().items.is_empty());
    }
}

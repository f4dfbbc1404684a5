//! Object identity and the Redis key schema (see `docs/store.md`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::text::clip;

/// Which object a record belongs to: survives delete and recreate, unlike the uid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectIdentity {
    /// API group; `""` is the core group.
    pub group: String,
    /// Plural resource name, e.g. `services`.
    pub resource: String,
    /// `None` for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectIdentity {
    /// `resource.group/namespace/name`, the way logs and Events name an object. Each part is
    /// cut at 256 characters: the API server's names are shorter, a forged review's need not be.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const PART: usize = 256;
        f.write_str(&clip(&self.resource, PART))?;
        if !self.group.is_empty() {
            write!(f, ".{}", clip(&self.group, PART))?;
        }
        if let Some(ns) = &self.namespace {
            write!(f, "/{}", clip(ns, PART))?;
        }
        write!(f, "/{}", clip(&self.name, PART))
    }
}

/// Builds every key restatus uses. Keys carry a Redis Cluster hash tag (`{...}`) so all keys
/// of one object share a slot, and the queue keys of one cluster share a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySchema {
    prefix: String,
    cluster: String,
}

impl KeySchema {
    /// `prefix` must not contain braces and `cluster` must be a DNS label; the flags validate both.
    pub fn new(prefix: &str, cluster: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            cluster: cluster.to_owned(),
        }
    }

    /// `<prefix>:rec:{<cluster>|<group>|<resource>|<namespace>|<name>}`; the core group and the
    /// namespace of a cluster-scoped object are empty. Kubernetes names never contain `|`,
    /// `{`, `}` or `%`; should a part hold one anyway (a forged review), it is percent-encoded,
    /// so that two identities never share a key and the hash tag stays whole.
    pub fn record(&self, id: &ObjectIdentity) -> String {
        self.object_key("rec", id)
    }

    /// `<prefix>:job:{...}` with the record's hash tag: the restore jobs under way for the
    /// object, each id with the time (ms) until which it is live.
    pub fn job(&self, id: &ObjectIdentity) -> String {
        self.object_key("job", id)
    }

    /// `<prefix>:hist:{...}` with the record's hash tag: the object's last statuses, newest
    /// first.
    pub fn history(&self, id: &ObjectIdentity) -> String {
        self.object_key("hist", id)
    }

    /// `<prefix>:catchup:{...}` with the record's hash tag: the incarnation a catch-up restore
    /// was queued for, while it is held.
    pub fn catch_up(&self, id: &ObjectIdentity) -> String {
        self.object_key("catchup", id)
    }

    /// `<prefix>:unmark:{...}` with the record's hash tag: a dead pending marker whose removal
    /// is already queued, so that a burst of writes queues it once.
    pub fn unmark(&self, id: &ObjectIdentity) -> String {
        self.object_key("unmark", id)
    }

    fn object_key(&self, kind: &str, id: &ObjectIdentity) -> String {
        format!(
            "{}:{kind}:{{{}|{}|{}|{}|{}}}",
            self.prefix,
            self.cluster,
            escape(&id.group),
            escape(&id.resource),
            escape(id.namespace.as_deref().unwrap_or("")),
            escape(&id.name)
        )
    }

    /// A `SCAN MATCH` pattern of every record of this cluster under this prefix.
    pub fn record_pattern(&self) -> String {
        format!("{}:rec:{{{}|*", glob_escape(&self.prefix), self.cluster)
    }

    /// A `SCAN MATCH` pattern of the records of one type (`group`, plural `resource`).
    pub fn type_pattern(&self, group: &str, resource: &str) -> String {
        format!(
            "{}:rec:{{{}|{}|{}|*",
            glob_escape(&self.prefix),
            self.cluster,
            glob_escape(&escape(group)),
            glob_escape(&escape(resource))
        )
    }

    /// The identity a record key of this schema names, `None` for any other key.
    pub fn identity_of(&self, key: &str) -> Option<ObjectIdentity> {
        let tag = key
            .strip_prefix(&self.prefix)?
            .strip_prefix(":rec:{")?
            .strip_suffix('}')?;
        let mut parts = tag.split('|');
        let cluster = parts.next()?;
        let (group, resource, namespace, name) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if cluster != self.cluster || parts.next().is_some() {
            return None;
        }
        Some(ObjectIdentity {
            group: unescape(group)?,
            resource: unescape(resource)?,
            namespace: Some(unescape(namespace)?).filter(|ns| !ns.is_empty()),
            name: unescape(name)?,
        })
    }

    /// `<prefix>:lock:{<cluster>}:<name>`: a lock one replica of the cluster holds for a while
    /// (a resync pass).
    pub fn lock(&self, name: &str) -> String {
        format!("{}:lock:{{{}}}:{name}", self.prefix, self.cluster)
    }

    /// The restore job stream.
    pub fn queue(&self) -> String {
        format!("{}:queue:{{{}}}", self.prefix, self.cluster)
    }

    /// Where jobs that kept failing go.
    pub fn dead_letters(&self) -> String {
        format!("{}:dead:{{{}}}", self.prefix, self.cluster)
    }
}

/// A key part with the characters the key format uses percent-encoded; a part without them
/// (every real Kubernetes name) is unchanged.
fn escape(part: &str) -> std::borrow::Cow<'_, str> {
    if !part.contains(['%', '|', '{', '}']) {
        return std::borrow::Cow::Borrowed(part);
    }
    let mut out = String::with_capacity(part.len() + 8);
    for c in part.chars() {
        match c {
            '%' => out.push_str("%25"),
            '|' => out.push_str("%7C"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The inverse of [`escape`]; `None` for text it cannot have written.
fn unescape(part: &str) -> Option<String> {
    if !part.contains('%') {
        return Some(part.to_owned());
    }
    let mut out = String::with_capacity(part.len());
    let mut rest = part;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(match code {
            "25" => '%',
            "7C" => '|',
            "7B" => '{',
            "7D" => '}',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// `text` with the characters of Redis glob patterns escaped.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The slot-determining part of a key, as Redis Cluster computes it.
#[cfg(test)]
fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(group: &str, resource: &str, ns: Option<&str>, name: &str) -> ObjectIdentity {
        ObjectIdentity {
            group: group.into(),
            resource: resource.into(),
            namespace: ns.map(Into::into),
            name: name.into(),
        }
    }

    #[test]
    fn namespaced_custom_resource_key() {
        let keys = KeySchema::new("restatus", "prod");
        let key = keys.record(&id(
            "infra.example.com",
            "kubernetesclusters",
            Some("team-a"),
            "eu-1",
        ));
        assert_eq!(
            key,
            "restatus:rec:{prod|infra.example.com|kubernetesclusters|team-a|eu-1}"
        );
    }

    #[test]
    fn core_group_and_cluster_scoped_keys_leave_the_part_empty() {
        let keys = KeySchema::new("restatus", "default");
        assert_eq!(
            keys.record(&id("", "services", Some("web"), "lb")),
            "restatus:rec:{default||services|web|lb}"
        );
        assert_eq!(
            keys.record(&id("infra.example.com", "regions", None, "eu")),
            "restatus:rec:{default|infra.example.com|regions||eu}"
        );
        // A cluster-scoped object and a namespaced one never collide.
        assert_ne!(
            keys.record(&id("g", "r", None, "x")),
            keys.record(&id("g", "r", Some("x"), "x"))
        );
    }

    #[test]
    fn prefix_and_cluster_separate_tenants() {
        let i = id("", "services", Some("a"), "b");
        let a = KeySchema::new("restatus", "one").record(&i);
        let b = KeySchema::new("restatus", "two").record(&i);
        let c = KeySchema::new("other", "one").record(&i);
        assert!(a != b && a != c && b != c);
    }

    #[test]
    fn hash_tags_keep_an_object_and_a_cluster_queue_in_one_slot() {
        let keys = KeySchema::new("restatus", "prod");
        let rec = keys.record(&id("", "services", Some("a"), "b"));
        assert_eq!(hash_tag(&rec), "prod||services|a|b");
        let job = keys.job(&id("", "services", Some("a"), "b"));
        assert_eq!(job, "restatus:job:{prod||services|a|b}");
        assert_eq!(hash_tag(&job), hash_tag(&rec));
        let history = keys.history(&id("", "services", Some("a"), "b"));
        assert_eq!(history, "restatus:hist:{prod||services|a|b}");
        let unmark = keys.unmark(&id("", "services", Some("a"), "b"));
        assert_eq!(hash_tag(&unmark), hash_tag(&rec));
        assert!(unmark != job && unmark != rec);
        assert_eq!(hash_tag(&keys.queue()), "prod");
        assert_eq!(hash_tag(&keys.queue()), hash_tag(&keys.dead_letters()));
    }

    #[test]
    fn separators_in_parts_are_escaped_so_identities_never_share_a_key() {
        let keys = KeySchema::new("restatus", "prod");
        let a = id("infra.example.com|kubernetesclusters", "team-a", None, "x");
        let b = id(
            "infra.example.com",
            "kubernetesclusters",
            Some("team-a|"),
            "x",
        );
        assert_ne!(keys.record(&a), keys.record(&b));
        let braces = id("", "services", Some("a}b{c"), "%7C");
        let key = keys.record(&braces);
        assert_eq!(key, "restatus:rec:{prod||services|a%7Db%7Bc|%257C}");
        assert_eq!(hash_tag(&key), "prod||services|a%7Db%7Bc|%257C");
        // Real names are unchanged.
        assert_eq!(
            keys.record(&id("", "services", Some("web"), "lb")),
            "restatus:rec:{prod||services|web|lb}"
        );
    }

    #[test]
    fn a_record_key_names_its_identity_back() {
        let keys = KeySchema::new("restatus", "prod");
        for identity in [
            id("", "services", Some("web"), "lb"),
            id("infra.example.com", "regions", None, "eu"),
            id("g|h", "r{s}", Some("a%7Cb"), "n|%"),
        ] {
            assert_eq!(
                keys.identity_of(&keys.record(&identity)),
                Some(identity.clone())
            );
        }
        assert_eq!(
            keys.identity_of("restatus:rec:{other||services|web|lb}"),
            None
        );
        assert_eq!(
            keys.identity_of("restatus:job:{prod||services|web|lb}"),
            None
        );
        assert_eq!(keys.identity_of("restatus:rec:{prod||services|web}"), None);
        assert_eq!(
            keys.identity_of("restatus:rec:{prod||services|web|%4}"),
            None
        );
        assert_eq!(
            keys.type_pattern("infra.example.com", "regions"),
            "restatus:rec:{prod|infra.example.com|regions|*"
        );
    }

    #[test]
    fn the_record_pattern_matches_this_clusters_records_only() {
        let keys = KeySchema::new("restatus", "prod");
        assert_eq!(keys.record_pattern(), "restatus:rec:{prod|*");
        assert_eq!(
            KeySchema::new("a*b[c]", "prod").record_pattern(),
            "a\\*b\\[c\\]:rec:{prod|*"
        );
    }

    #[test]
    fn display_names_the_object() {
        assert_eq!(
            id("", "services", Some("web"), "lb").to_string(),
            "services/web/lb"
        );
        assert_eq!(
            id("infra.example.com", "regions", None, "eu").to_string(),
            "regions.infra.example.com/eu"
        );
        let long = "n".repeat(1 << 20);
        let shown = id(&long, &long, Some(&long), &long).to_string();
        assert_eq!(shown.chars().count(), 4 * 257 + 3, "{}", &shown[..80]);
        assert!(shown.ends_with(&format!("/{}…", "n".repeat(256))));
    }
}

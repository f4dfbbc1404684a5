//! Which policy applies to an object: the global settings, refined by annotations on the CRD,
//! the namespace and the object. Pure: the caller hands in the levels it has.
//!
//! - CRD and namespace annotations are set by people with rights on those objects: the most
//!   specific level wins, key by key (namespace > CRD > global).
//! - The object's annotations are written by whoever creates the object, so they can only
//!   narrow what restatus does: disable it, restore fewer fields, exclude more, switch
//!   `replace` to `fill`, keep a deleted object's record for a shorter time. They can never
//!   enable a disabled object, widen the fields, or open restores to other creators.
//! - A level with an invalid value is skipped as a whole (the levels below it apply) and
//!   reported, so that a typo never half-applies.

use std::{borrow::Cow, collections::BTreeMap, fmt, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    ANNOTATION_EXCLUDE_FIELDS, ANNOTATION_FIELDS, ANNOTATION_MODE, ANNOTATION_POLICY,
    ANNOTATION_RESTORE_FOR, ANNOTATION_RETENTION, FieldPattern, FieldPatterns, RestoreMode,
    RestorePolicy,
};
use crate::{duration, text::clip};

/// Whether restatus records and restores an object.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Enablement {
    Enabled,
    Disabled,
}

/// Who gets a saved status back when they create an object that has a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreFor {
    /// Only a creator who may update `<resource>/status` of the object (a SubjectAccessReview).
    StatusWriters,
    /// Any creator.
    Creators,
}

/// Where a policy annotation was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Object,
    Namespace,
    Crd,
}

impl Level {
    pub fn label(self) -> &'static str {
        match self {
            Level::Object => "object",
            Level::Namespace => "namespace",
            Level::Crd => "crd",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A policy annotation restatus cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key}={value:?} is not valid ({expected})")]
pub struct InvalidAnnotation {
    pub key: &'static str,
    pub value: String,
    pub expected: String,
}

/// The restatus policy annotations of one level; `None` where a key is not set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub policy: Option<Enablement>,
    pub mode: Option<RestoreMode>,
    pub fields: Option<Vec<FieldPattern>>,
    pub exclude_fields: Option<Vec<FieldPattern>>,
    pub retention: Option<Duration>,
    pub restore_for: Option<RestoreFor>,
}

/// The parsed annotations of one level, or the first invalid one.
pub type LevelAnnotations = Result<Overrides, InvalidAnnotation>;

fn parse_key<T>(
    annotations: &BTreeMap<String, String>,
    key: &'static str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, InvalidAnnotation> {
    let Some(value) = annotations.get(key) else {
        return Ok(None);
    };
    parse(value.trim())
        .map(Some)
        .map_err(|expected| InvalidAnnotation {
            key,
            value: value.chars().take(128).collect(),
            expected,
        })
}

fn parse_enum<T: clap::ValueEnum>(value: &str) -> Result<T, String> {
    T::from_str(value, false).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_owned()))
            .collect();
        format!("expected {}", names.join(" or "))
    })
}

fn parse_patterns(value: &str) -> Result<Vec<FieldPattern>, String> {
    value
        .parse::<FieldPatterns>()
        .map(|p| p.0)
        .map_err(|e| clip(&e.to_string(), 160))
}

fn parse_retention(value: &str) -> Result<Duration, String> {
    match duration::parse(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("expected a duration longer than zero".into()),
        Err(e) => Err(clip(&e.to_string(), 160)),
    }
}

impl Overrides {
    /// Reads the restatus policy annotations among `annotations`.
    pub fn parse(annotations: Option<&BTreeMap<String, String>>) -> LevelAnnotations {
        let Some(a) = annotations else {
            return Ok(Self::default());
        };
        Ok(Self {
            policy: parse_key(a, ANNOTATION_POLICY, parse_enum)?,
            mode: parse_key(a, ANNOTATION_MODE, parse_enum)?,
            fields: parse_key(a, ANNOTATION_FIELDS, parse_patterns)?,
            exclude_fields: parse_key(a, ANNOTATION_EXCLUDE_FIELDS, parse_patterns)?,
            retention: parse_key(a, ANNOTATION_RETENTION, parse_retention)?,
            restore_for: parse_key(a, ANNOTATION_RESTORE_FOR, parse_enum)?,
        })
    }

    /// True when no key is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The global policy of one type: what the flags say.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    pub policy: Enablement,
    pub mode: RestoreMode,
    pub fields: Vec<FieldPattern>,
    pub exclude_fields: Vec<FieldPattern>,
    pub retention: Duration,
    pub restore_for: RestoreFor,
}

/// What restatus does for one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub enabled: bool,
    /// What is recorded and how it is restored.
    pub restore: RestorePolicy,
    /// How long a deleted object's record is kept.
    pub retention: Duration,
    pub restore_for: RestoreFor,
}

/// A level that was skipped because of an invalid annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub level: Level,
    pub error: InvalidAnnotation,
}

impl Skipped {
    /// The admission warning `kubectl` prints.
    pub fn warning(&self) -> String {
        format!(
            "restatus: {} ignored the {} level's annotations: {}",
            self.error.key, self.level, self.error
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub policy: Policy,
    pub skipped: Vec<Skipped>,
}

/// The policy of an object from the global `defaults` and the annotations of its type's CRD,
/// its namespace and itself (`None`: the level does not apply or has no annotations).
pub fn resolve(
    defaults: &Defaults,
    crd: Option<&LevelAnnotations>,
    namespace: Option<&LevelAnnotations>,
    object: Option<&LevelAnnotations>,
) -> Resolved {
    let mut skipped = Vec::new();
    let mut usable = |level: Level, annotations: Option<&LevelAnnotations>| match annotations {
        None => None,
        Some(Ok(o)) => Some(o.clone()),
        Some(Err(error)) => {
            skipped.push(Skipped {
                level,
                error: error.clone(),
            });
            None
        }
    };
    let crd = usable(Level::Crd, crd);
    let namespace = usable(Level::Namespace, namespace);
    let object = usable(Level::Object, object);

    // CRD, then namespace: the most specific level that sets a key wins.
    let mut policy = defaults.policy;
    let mut mode = defaults.mode;
    let mut fields = defaults.fields.clone();
    let mut exclude_fields = defaults.exclude_fields.clone();
    let mut retention = defaults.retention;
    let mut restore_for = defaults.restore_for;
    for level in [crd.as_ref(), namespace.as_ref()].into_iter().flatten() {
        policy = level.policy.unwrap_or(policy);
        mode = level.mode.unwrap_or(mode);
        fields = level.fields.clone().unwrap_or(fields);
        exclude_fields = level.exclude_fields.clone().unwrap_or(exclude_fields);
        retention = level.retention.unwrap_or(retention);
        restore_for = level.restore_for.unwrap_or(restore_for);
    }

    // The object narrows only.
    let mut narrowed_to = Vec::new();
    if let Some(o) = &object {
        if o.policy == Some(Enablement::Disabled) {
            policy = Enablement::Disabled;
        }
        if o.mode == Some(RestoreMode::Fill) {
            mode = RestoreMode::Fill;
        }
        narrowed_to = o.fields.clone().unwrap_or_default();
        exclude_fields.extend(o.exclude_fields.iter().flatten().cloned());
        retention = o.retention.map_or(retention, |r| r.min(retention));
    }

    Resolved {
        policy: Policy {
            enabled: policy == Enablement::Enabled,
            restore: RestorePolicy {
                mode,
                fields,
                narrowed_to,
                exclude_fields,
            },
            retention,
            restore_for,
        },
        skipped,
    }
}

/// The global settings: defaults for every type, and types that are opted in or out.
#[derive(Debug, Clone)]
pub struct GlobalPolicy {
    pub defaults: Defaults,
    /// `(group, resource)` to its enablement; types not listed use `defaults.policy`.
    pub types: BTreeMap<(String, String), Enablement>,
}

impl GlobalPolicy {
    /// The defaults for objects of `group`/`resource`: borrowed, unless the type is opted
    /// in or out against them (on every review, so no copy when nothing differs).
    pub fn for_type(&self, group: &str, resource: &str) -> Cow<'_, Defaults> {
        let listed = self
            .types
            .iter()
            .find(|((g, r), _)| g == group && r == resource);
        match listed {
            Some((_, policy)) if *policy != self.defaults.policy => {
                let mut defaults = self.defaults.clone();
                defaults.policy = *policy;
                Cow::Owned(defaults)
            }
            _ => Cow::Borrowed(&self.defaults),
        }
    }
}

/// One `--resource-policy` entry: `resource.group=enabled|disabled` (`resource=...` for the
/// core group), e.g. `services=disabled`, `kubernetesclusters.infra.example.com=enabled`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypePolicy {
    pub group: String,
    pub resource: String,
    pub policy: Enablement,
}

impl std::str::FromStr for TypePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, policy) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not of the form resource.group=enabled|disabled"))?;
        let policy = parse_enum(policy.trim())?;
        let name = name.trim();
        let (resource, group) = name.split_once('.').unwrap_or((name, ""));
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        if !valid(resource) || !(group.is_empty() || valid(group)) {
            return Err(format!(
                "{name:?} is not a resource name (plural, lowercase, then .group)"
            ));
        }
        Ok(Self {
            group: group.to_owned(),
            resource: resource.to_owned(),
            policy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn patterns(list: &[&str]) -> Vec<FieldPattern> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    fn defaults() -> Defaults {
        Defaults {
            policy: Enablement::Enabled,
            mode: RestoreMode::Fill,
            fields: vec![],
            exclude_fields: patterns(&["/observedGeneration"]),
            retention: Duration::from_secs(30 * DAY),
            restore_for: RestoreFor::StatusWriters,
        }
    }

    fn level(pairs: &[(&str, &str)]) -> LevelAnnotations {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Overrides::parse(Some(&map))
    }

    fn resolved(
        crd: &[(&str, &str)],
        namespace: &[(&str, &str)],
        object: &[(&str, &str)],
    ) -> Resolved {
        resolve(
            &defaults(),
            Some(&level(crd)),
            Some(&level(namespace)),
            Some(&level(object)),
        )
    }

    #[test]
    fn parses_every_key_and_ignores_other_annotations() {
        let o = level(&[
            (ANNOTATION_POLICY, "disabled"),
            (ANNOTATION_MODE, " replace "),
            (ANNOTATION_FIELDS, "/a,/b/*"),
            (ANNOTATION_EXCLUDE_FIELDS, ""),
            (ANNOTATION_RETENTION, "90d"),
            (ANNOTATION_RESTORE_FOR, "creators"),
            ("example.com/other", "x"),
        ])
        .unwrap();
        assert_eq!(o.policy, Some(Enablement::Disabled));
        assert_eq!(o.mode, Some(RestoreMode::Replace));
        assert_eq!(o.fields, Some(patterns(&["/a", "/b/*"])));
        assert_eq!(o.exclude_fields, Some(vec![]));
        assert_eq!(o.retention, Some(Duration::from_secs(90 * DAY)));
        assert_eq!(o.restore_for, Some(RestoreFor::Creators));
        assert!(Overrides::parse(None).unwrap().is_empty());
        assert!(level(&[("example.com/other", "x")]).unwrap().is_empty());
    }

    #[test]
    fn invalid_values_say_what_is_expected() {
        let cases = [
            (ANNOTATION_POLICY, "off", "expected enabled or disabled"),
            (ANNOTATION_MODE, "sideways", "expected fill or replace"),
            (ANNOTATION_FIELDS, "phase", "must start with '/'"),
            (ANNOTATION_EXCLUDE_FIELDS, "/a~2", "invalid escape"),
            (ANNOTATION_RETENTION, "forever", "not of the form"),
            (ANNOTATION_RETENTION, "0d", "longer than zero"),
            (
                ANNOTATION_RESTORE_FOR,
                "everyone",
                "expected status-writers or creators",
            ),
        ];
        for (key, value, expected) in cases {
            let error = level(&[(key, value)]).unwrap_err();
            assert_eq!(error.key, key);
            assert!(
                error.to_string().contains(expected),
                "{key}={value}: {error}"
            );
        }
    }

    #[test]
    fn with_no_annotations_the_global_defaults_apply() {
        let r = resolve(&defaults(), None, None, None);
        assert!(r.policy.enabled);
        assert_eq!(r.policy.restore.mode, RestoreMode::Fill);
        assert_eq!(r.policy.retention, Duration::from_secs(30 * DAY));
        assert_eq!(r.policy.restore_for, RestoreFor::StatusWriters);
        assert_eq!(
            r.policy.restore.exclude_fields,
            patterns(&["/observedGeneration"])
        );
        assert!(r.skipped.is_empty());
    }

    /// The precedence matrix: for each key, which level's value wins.
    #[test]
    fn namespace_beats_crd_beats_global_key_by_key() {
        let r = resolved(
            &[(ANNOTATION_MODE, "replace"), (ANNOTATION_RETENTION, "7d")],
            &[(ANNOTATION_RETENTION, "2d")],
            &[],
        );
        assert_eq!(
            r.policy.restore.mode,
            RestoreMode::Replace,
            "the CRD's mode"
        );
        assert_eq!(
            r.policy.retention,
            Duration::from_secs(2 * DAY),
            "the namespace's"
        );
        let r = resolved(
            &[(ANNOTATION_POLICY, "disabled")],
            &[(ANNOTATION_POLICY, "enabled")],
            &[],
        );
        assert!(
            r.policy.enabled,
            "a namespace re-enables what its CRD disables"
        );
        let r = resolved(
            &[(ANNOTATION_RESTORE_FOR, "creators")],
            &[(ANNOTATION_RESTORE_FOR, "status-writers")],
            &[],
        );
        assert_eq!(r.policy.restore_for, RestoreFor::StatusWriters);
        let r = resolved(&[(ANNOTATION_EXCLUDE_FIELDS, "")], &[], &[]);
        assert!(
            r.policy.restore.exclude_fields.is_empty(),
            "a CRD may restore everything"
        );
        let r = resolved(
            &[(ANNOTATION_FIELDS, "/a")],
            &[(ANNOTATION_FIELDS, "/b")],
            &[],
        );
        assert_eq!(r.policy.restore.fields, patterns(&["/b"]));
    }

    #[test]
    fn the_object_narrows_and_never_widens() {
        // Disabling works; enabling a disabled namespace does not.
        assert!(
            !resolved(&[], &[], &[(ANNOTATION_POLICY, "disabled")])
                .policy
                .enabled
        );
        let r = resolved(
            &[],
            &[(ANNOTATION_POLICY, "disabled")],
            &[(ANNOTATION_POLICY, "enabled")],
        );
        assert!(!r.policy.enabled);
        // fill narrows replace; replace does not widen fill.
        let r = resolved(
            &[(ANNOTATION_MODE, "replace")],
            &[],
            &[(ANNOTATION_MODE, "fill")],
        );
        assert_eq!(r.policy.restore.mode, RestoreMode::Fill);
        let r = resolved(&[], &[], &[(ANNOTATION_MODE, "replace")]);
        assert_eq!(r.policy.restore.mode, RestoreMode::Fill);
        // Fields narrow: the object's selection applies after the upper levels'.
        let r = resolved(
            &[],
            &[(ANNOTATION_FIELDS, "/a,/b")],
            &[(ANNOTATION_FIELDS, "/b,/c")],
        );
        assert_eq!(r.policy.restore.fields, patterns(&["/a", "/b"]));
        assert_eq!(r.policy.restore.narrowed_to, patterns(&["/b", "/c"]));
        let saved = serde_json::json!({"a": 1, "b": 2, "c": 3});
        assert_eq!(
            r.policy.restore.restorable(&saved),
            serde_json::json!({"b": 2})
        );
        // Exclusions add up; an empty object list removes none.
        let r = resolved(&[], &[], &[(ANNOTATION_EXCLUDE_FIELDS, "/secret")]);
        assert_eq!(
            r.policy.restore.exclude_fields,
            patterns(&["/observedGeneration", "/secret"])
        );
        let r = resolved(&[], &[], &[(ANNOTATION_EXCLUDE_FIELDS, "")]);
        assert_eq!(
            r.policy.restore.exclude_fields,
            patterns(&["/observedGeneration"])
        );
        // Retention only shortens.
        let r = resolved(&[], &[], &[(ANNOTATION_RETENTION, "1d")]);
        assert_eq!(r.policy.retention, Duration::from_secs(DAY));
        let r = resolved(&[], &[], &[(ANNOTATION_RETENTION, "90d")]);
        assert_eq!(r.policy.retention, Duration::from_secs(30 * DAY));
        // restore-for is ignored on the object.
        let r = resolved(&[], &[], &[(ANNOTATION_RESTORE_FOR, "creators")]);
        assert_eq!(r.policy.restore_for, RestoreFor::StatusWriters);
    }

    /// Where a pattern list is set: the global flags, or an annotation of one level.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum At {
        Global,
        Crd,
        Namespace,
        Object,
    }

    /// The policy with `fields` set at one level and `exclude` at another (or the same).
    fn resolved_at(fields: (At, &str), exclude: (At, &str)) -> Resolved {
        let mut global = defaults();
        let mut levels: [Vec<(&str, &str)>; 3] = Default::default();
        for (at, key, list) in [
            (fields.0, ANNOTATION_FIELDS, fields.1),
            (exclude.0, ANNOTATION_EXCLUDE_FIELDS, exclude.1),
        ] {
            match at {
                At::Global if key == ANNOTATION_FIELDS => global.fields = patterns_of(list),
                At::Global => global.exclude_fields = patterns_of(list),
                At::Crd => levels[0].push((key, list)),
                At::Namespace => levels[1].push((key, list)),
                At::Object => levels[2].push((key, list)),
            }
        }
        resolve(
            &global,
            Some(&level(&levels[0])),
            Some(&level(&levels[1])),
            Some(&level(&levels[2])),
        )
    }

    fn patterns_of(list: &str) -> Vec<FieldPattern> {
        list.parse::<FieldPatterns>().unwrap().0
    }

    /// Selections and exclusions name places in the saved status, whichever level sets them;
    /// an object's selection never brings back what a level above it excludes.
    #[test]
    fn exclusions_hold_against_selections_at_every_level() {
        let levels = [At::Global, At::Crd, At::Namespace, At::Object];
        let saved = serde_json::json!({
            "endpoints": [
                {"host": "a"},
                {"host": "b", "token": "t1"},
                {"host": "c", "token": "t2"},
            ],
            "a": [0, 1, 2],
        });
        // (fields, exclude-fields, restorable)
        let cases = [
            (
                "/endpoints/*/token",
                "/endpoints/1/token",
                serde_json::json!({"endpoints": [{"token": "t2"}]}),
            ),
            ("/a/1", "/a/0", serde_json::json!({"a": [1]})),
            ("/a", "/a/0,/a/1", serde_json::json!({"a": [2]})),
            ("/a/*", "/a/1", serde_json::json!({"a": [0, 2]})),
            (
                "/*/*/token",
                "/endpoints/2/*",
                serde_json::json!({"endpoints": [{"token": "t1"}]}),
            ),
        ];
        for (fields, exclude, want) in cases {
            for fields_at in levels {
                for exclude_at in levels {
                    let r = resolved_at((fields_at, fields), (exclude_at, exclude));
                    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
                    assert_eq!(
                        r.policy.restore.restorable(&saved),
                        want,
                        "fields {fields:?} at {fields_at:?}, exclude-fields {exclude:?} at {exclude_at:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_invalid_level_is_skipped_whole_and_reported() {
        let r = resolved(
            &[(ANNOTATION_MODE, "replace")],
            &[(ANNOTATION_MODE, "fill"), (ANNOTATION_RETENTION, "soon")],
            &[
                (ANNOTATION_POLICY, "off"),
                (ANNOTATION_EXCLUDE_FIELDS, "/x"),
            ],
        );
        assert_eq!(r.skipped.len(), 2);
        assert_eq!(r.skipped[0].level, Level::Namespace);
        assert_eq!(r.skipped[1].level, Level::Object);
        assert_eq!(
            r.policy.restore.mode,
            RestoreMode::Replace,
            "the namespace's fill is skipped"
        );
        assert_eq!(r.policy.retention, Duration::from_secs(30 * DAY));
        assert!(r.policy.enabled);
        assert_eq!(
            r.policy.restore.exclude_fields,
            patterns(&["/observedGeneration"]),
            "no half-applied object level"
        );
        let warning = r.skipped[1].warning();
        assert!(warning.contains("restatus.io/policy"), "{warning}");
        assert!(warning.contains("object"), "{warning}");
    }

    #[test]
    fn types_can_be_opted_in_or_out_globally() {
        let mut global = GlobalPolicy {
            defaults: defaults(),
            types: BTreeMap::new(),
        };
        let p: TypePolicy = "kubernetesclusters.infra.example.com=disabled"
            .parse()
            .unwrap();
        global.types.insert((p.group, p.resource), p.policy);
        let p: TypePolicy = "services=disabled".parse().unwrap();
        assert_eq!((p.group.as_str(), p.resource.as_str()), ("", "services"));
        let kc = global.for_type("infra.example.com", "kubernetesclusters");
        assert_eq!(kc.policy, Enablement::Disabled);
        assert_eq!(global.for_type("", "services").policy, Enablement::Enabled);
        // Only the type listed, by group and resource.
        let other = global.for_type("infra.example.com", "regions");
        assert_eq!(other.policy, Enablement::Enabled);
        // The defaults are copied only to change them.
        assert!(matches!(kc, Cow::Owned(_)));
        assert!(matches!(other, Cow::Borrowed(_)));
        // A namespace can opt a disabled type in.
        let r = resolve(
            &kc,
            None,
            Some(&level(&[(ANNOTATION_POLICY, "enabled")])),
            None,
        );
        assert!(r.policy.enabled);
        for bad in ["services", "services=maybe", "Services=enabled", "=enabled"] {
            assert!(bad.parse::<TypePolicy>().is_err(), "{bad}");
        }
        // A type listed with the defaults' own enablement needs no copy either.
        global
            .types
            .insert((String::new(), "services".into()), Enablement::Enabled);
        assert!(matches!(global.for_type("", "services"), Cow::Borrowed(_)));
    }
}

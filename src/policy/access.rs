//! Who may get a status back: by default only a creator who may update `<resource>/status`
//! of the object, asked of the API server with a SubjectAccessReview for the user in the
//! CREATE's `userInfo` (name, uid, groups, extra), answered within a time budget and cached
//! briefly.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use k8s_openapi::api::{
    authentication::v1::UserInfo,
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams};
use tokio::time::Instant;

use super::PolicyMetrics;
use crate::error::error_chain;

/// Cached answers kept at most; the cache is cleared when it is full.
const CACHED: usize = 10_000;

/// The answer to "may this creator get the saved status back".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Allowed,
    Denied,
    /// The API server did not answer in time or refused the review.
    Unknown(String),
}

/// What is asked: may `user` update the status of this object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Question {
    user: String,
    uid: String,
    groups: Vec<String>,
    extra: BTreeMap<String, Vec<String>>,
    group: String,
    resource: String,
    namespace: String,
    name: String,
}

/// Asks the API server, with a short-lived cache of answers.
pub struct AccessChecker {
    client: Client,
    timeout: Duration,
    ttl: Duration,
    metrics: PolicyMetrics,
    cache: Mutex<HashMap<Question, (bool, Instant)>>,
}

impl AccessChecker {
    pub fn new(client: Client, timeout: Duration, ttl: Duration, metrics: PolicyMetrics) -> Self {
        Self {
            client,
            timeout,
            ttl,
            metrics,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// May `user` update `<resource>/status` of the object `namespace/name` in `group`?
    ///
    /// First asked for every object of the resource in the namespace (an empty name, which
    /// authorizers read as "all"): that answer serves every object the creator makes there
    /// while it is cached. Only when it is not "allowed" is the object itself asked about,
    /// for rights limited to some names (RBAC `resourceNames`).
    pub async fn may_write_status(
        &self,
        user: &UserInfo,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Access {
        let any = Question {
            user: user.username.clone().unwrap_or_default(),
            uid: user.uid.clone().unwrap_or_default(),
            groups: user.groups.clone().unwrap_or_default(),
            extra: user.extra.clone().unwrap_or_default(),
            group: group.to_owned(),
            resource: resource.to_owned(),
            namespace: namespace.unwrap_or_default().to_owned(),
            name: String::new(),
        };
        let this = Question {
            name: name.to_owned(),
            ..any.clone()
        };
        let deadline = Instant::now() + self.timeout;
        let known_for_any = self.cached(&any);
        if known_for_any == Some(true) {
            return self.answered(true, true);
        }
        if let Some(allowed) = self.cached(&this) {
            return self.answered(allowed, true);
        }
        if known_for_any.is_none() {
            match self.ask(&any, deadline).await {
                Ok(true) => return self.answered(true, false),
                Ok(false) => {}
                Err(reason) => return Access::Unknown(reason),
            }
        }
        match self.ask(&this, deadline).await {
            Ok(allowed) => self.answered(allowed, false),
            Err(reason) => Access::Unknown(reason),
        }
    }

    /// Counts an answer and gives it.
    fn answered(&self, allowed: bool, cached: bool) -> Access {
        self.metrics.access_check(outcome(allowed), cached);
        if allowed {
            Access::Allowed
        } else {
            Access::Denied
        }
    }

    /// Asks the API server, by `deadline`, and remembers the answer.
    async fn ask(&self, question: &Question, deadline: Instant) -> Result<bool, String> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(question.user.clone()),
                uid: Some(question.uid.clone()).filter(|u| !u.is_empty()),
                groups: Some(question.groups.clone()),
                extra: Some(question.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(question.group.clone()),
                    resource: Some(question.resource.clone()),
                    subresource: Some("status".into()),
                    verb: Some("update".into()),
                    namespace: Some(question.namespace.clone()).filter(|n| !n.is_empty()),
                    name: Some(question.name.clone()).filter(|n| !n.is_empty()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let params = PostParams::default();
        let asked = tokio::time::timeout_at(deadline, api.create(&params, &review));
        let answer = match asked.await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                self.metrics.access_check("failed", false);
                return Err(error_chain(&error));
            }
            Err(_) => {
                self.metrics.access_check("failed", false);
                return Err(format!("no answer within {:?}", self.timeout));
            }
        };
        let allowed = answer.status.is_some_and(|s| s.allowed);
        self.remember(question.clone(), allowed);
        Ok(allowed)
    }

    fn cached(&self, question: &Question) -> Option<bool> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let (allowed, at) = cache.get(question)?;
        (at.elapsed() < self.ttl).then_some(*allowed)
    }

    fn remember(&self, question: Question, allowed: bool) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHED {
            cache.retain(|_, (_, at)| at.elapsed() < self.ttl);
            if cache.len() >= CACHED {
                cache.clear();
            }
        }
        cache.insert(question, (allowed, Instant::now()));
    }
}

fn outcome(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "denied" }
}

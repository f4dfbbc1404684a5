//! Self-managed certificates: a CA shared by every replica through a Secret, a serving
//! certificate per replica issued from it, and the webhook's caBundle kept equal to the CA.
//!
//! Each check ([`SelfManaged::reconcile`]) reads the Secret and the webhook configuration,
//! asks [`super::rotation`] what to do, and does it:
//! - no CA: the replica makes one and writes it (create, or update with the Secret's
//!   resourceVersion as precondition); a replica that loses the race reads the winner's;
//! - a CA with less than a third of its life left is rotated the same way, the old one kept
//!   as `ca-previous.crt` until it expires;
//! - a CA whose key cannot sign (`ca.key` missing, not PEM, of a type restatus cannot use, or
//!   not the key of `ca.crt`) is replaced the same way, reported (an error log, a
//!   `CAKeyUnusable` Event on the Secret, `restatus_certificate_ca_key_unusable_total`), and
//!   its certificate kept in the bundle without a key until it expires;
//! - the caBundle of every webhook in `--webhook-configuration` is read (what the API server
//!   trusts) and set to the bundle with server-side apply (field manager `--field-manager`);
//! - the serving certificate is issued off the async runtime, by a CA in the caBundle read,
//!   and swapped into the listener.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::{
    ByteString,
    api::{
        admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration},
        core::v1::Secret,
    },
};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams, PostParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::json;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::{
    CaKeyError, CertError, CertMetrics, GenerateError, Pair, ServingCert, Validity,
    rotation::{self, Ca, CaState, CaStep, Leaf, LeafStep, Signer},
};
use crate::error::{api_status_code, error_chain};

/// Keys of the CA Secret.
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const CA_PREVIOUS: &str = "ca-previous.crt";
const CA_PREVIOUS_KEY: &str = "ca-previous.key";
const ROTATED_AT: &str = "rotated-at";

/// Writes to the Secret that lose a race are retried this often within one check.
const WRITE_ATTEMPTS: usize = 3;

#[derive(Debug, Clone)]
pub struct SelfManagedSettings {
    /// The namespace restatus runs in: its CA Secret and rotation Events live there.
    pub namespace: String,
    /// The Secret that holds the shared CA.
    pub ca_secret: String,
    /// restatus's own MutatingWebhookConfiguration, whose caBundle it keeps.
    pub webhook_configuration: String,
    /// DNS names and IP addresses of the serving certificate.
    pub hosts: Vec<String>,
    pub ca_validity: Duration,
    pub cert_validity: Duration,
    /// How often the Secret, the caBundle and the expiries are checked; also how long a
    /// replica waits after a CA rotation before it serves a certificate of the new CA.
    pub check_interval: Duration,
    pub field_manager: String,
    /// This replica's name in Events.
    pub instance: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("could not {action} the Secret {namespace}/{name}")]
    Secret {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("the Secret {namespace}/{name} kept changing while restatus wrote its CA")]
    Contended { namespace: String, name: String },
    #[error("could not {action} the MutatingWebhookConfiguration {name}")]
    Webhook {
        action: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("could not make a certificate")]
    Generate(#[from] GenerateError),
    #[error("the issued serving certificate is not usable")]
    Serving(#[from] CertError),
    #[error("certificate generation stopped")]
    Join(#[from] tokio::task::JoinError),
    #[error("the Secret {namespace}/{name} holds no CA that can sign")]
    NoCa { namespace: String, name: String },
    #[error("the key {key} of the Secret {namespace}/{name} cannot sign for its certificate")]
    UnusableKey {
        key: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: CaKeyError,
    },
}

/// The self-managed certificate manager of one replica.
pub struct SelfManaged {
    ca: CaStore,
    serving: Arc<ServingCert>,
    issued: Mutex<Issued>,
}

/// This replica's serving certificate, and the caBundle last read from the webhook
/// configuration (or written to it): what the API server trusts. Kept while the webhook
/// configuration cannot be read.
struct Issued {
    leaf: Leaf,
    trusted: Option<String>,
}

/// What a publish found and did.
struct Published {
    /// The caBundle the API server trusts now: the one written, else the one read (the
    /// certificates every webhook of the configuration holds); `None` when the configuration
    /// could not be read.
    trusted: Option<String>,
    result: Result<(), ManagerError>,
}

/// The CA Secret and the webhook configuration, as the API server has them.
struct CaStore {
    secrets: Api<Secret>,
    webhooks: Api<MutatingWebhookConfiguration>,
    recorder: Recorder,
    settings: SelfManagedSettings,
    metrics: CertMetrics,
}

/// The CA as read from the Secret, with what a write needs.
struct Read {
    /// `None` when the Secret does not exist.
    secret: Option<Secret>,
    state: CaState,
    /// The current CA with its key, when its key can sign.
    current: Option<Pair>,
    /// The previous CA with its key, while it is carried and its key can sign.
    previous: Option<Pair>,
    /// Why the current CA's key cannot sign, when its certificate is readable and it cannot.
    unusable: Option<CaKeyError>,
}

fn data_str(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn data_bytes<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    Some(secret.data.as_ref()?.get(key)?.0.as_slice())
}

/// One CA of the Secret: its certificate (`None` when missing or unreadable, which is as
/// good as no CA), and its key if that can sign for it, or why not.
fn read_ca(secret: &Secret, cert: &str, key: &str) -> Option<(Ca, Result<Pair, CaKeyError>)> {
    let cert_pem = data_str(secret, cert)?;
    let validity = Validity::of_pem(cert_pem.as_bytes()).ok()?;
    let pair = match data_bytes(secret, key) {
        None => Err(CaKeyError::Missing),
        Some(key_pem) => super::ca_signing_key(&cert_pem, key_pem).map(|_| Pair {
            cert_pem: cert_pem.clone(),
            // The key parsed from these bytes; anything around its PEM block that is not
            // UTF-8 is replaced here, and skipped again when the key is parsed to sign.
            key_pem: String::from_utf8_lossy(key_pem).into_owned(),
        }),
    };
    let ca = Ca {
        pem: cert_pem,
        validity,
        can_sign: pair.is_ok(),
    };
    Some((ca, pair))
}

fn read_state(secret: Option<Secret>) -> Read {
    let Some(s) = &secret else {
        return Read {
            secret,
            state: CaState::default(),
            current: None,
            previous: None,
            unusable: None,
        };
    };
    let (current, current_pair) = read_ca(s, CA_CERT, CA_KEY).unzip();
    let (previous, previous_pair) = read_ca(s, CA_PREVIOUS, CA_PREVIOUS_KEY).unzip();
    let (current_pair, unusable) = match current_pair {
        Some(Ok(pair)) => (Some(pair), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let state = CaState {
        current,
        previous,
        rotated_at: data_str(s, ROTATED_AT).and_then(|t| t.parse().ok()),
    };
    Read {
        secret,
        state,
        current: current_pair,
        previous: previous_pair.and_then(Result::ok),
        unusable,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, GenerateError> + Send + 'static,
) -> Result<T, ManagerError> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

impl SelfManaged {
    /// Makes sure a CA exists and this replica has a serving certificate from it, so the
    /// listener can start. Fails when the Secret cannot be read or written.
    pub async fn start(
        client: Client,
        settings: SelfManagedSettings,
        metrics: CertMetrics,
    ) -> Result<Arc<Self>, ManagerError> {
        let reporter = Reporter {
            controller: "restatus".into(),
            instance: Some(settings.instance.clone()),
        };
        let ca = CaStore {
            secrets: Api::namespaced(client.clone(), &settings.namespace),
            webhooks: Api::all(client.clone()),
            recorder: Recorder::new(client, reporter),
            settings,
            metrics,
        };
        let now = Timestamp::now();
        let read = ca.ensure(now).await?;
        let published = ca.publish(&read, now).await;
        if let Err(error) = &published.result {
            // Helm creates the webhook configuration after the Deployment: it may not exist
            // yet. The next check publishes the bundle.
            tracing::warn!(error = %error_chain(error), "could not set the webhook's caBundle yet; retrying at the next check");
        }
        let trusted = published.trusted;
        let step = rotation::leaf_step(
            None,
            &read.state,
            trusted.as_deref(),
            ca.settings.check_interval,
            now,
        );
        let LeafStep::Issue(signer) = step else {
            return Err(ca.no_ca());
        };
        let (leaf, pair) = ca.issue(&read, signer).await?;
        let serving = ServingCert::new(
            "the issued serving certificate",
            pair.cert_pem.into_bytes(),
            pair.key_pem.into_bytes(),
            ca.metrics.clone(),
        )?;
        tracing::info!(not_after = %leaf.validity.not_after, signer = ?signer, "serving certificate issued");
        Ok(Arc::new(Self {
            ca,
            serving,
            issued: Mutex::new(Issued { leaf, trusted }),
        }))
    }

    /// The certificate the listener serves.
    pub fn serving(&self) -> Arc<ServingCert> {
        self.serving.clone()
    }

    /// Checks every `--cert-check-interval` until `shutdown`. A failed check is logged and
    /// retried; the served certificate stays in service.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.ca.settings.check_interval) => {},
            }
            let now = Timestamp::now();
            if let Err(error) = self.reconcile(now).await {
                let due = self.serving.due(now);
                tracing::warn!(error = %error_chain(&error), serving_due = due, "certificate check failed; retrying at the next check");
                if due {
                    let note = format!("{}: {}", self.ca.settings.instance, error_chain(&error));
                    self.ca
                        .event(EventType::Warning, "CertificateRenewalFailed", note)
                        .await;
                }
            }
        }
    }

    /// One check: the CA, the caBundle, this replica's serving certificate. The serving
    /// certificate is renewed even when the caBundle cannot be published (the webhook
    /// configuration deleted, or not writable): against the bundle last published. The
    /// publish error is returned after that.
    pub async fn reconcile(&self, now: Timestamp) -> Result<(), ManagerError> {
        let read = self.ca.ensure(now).await?;
        let mut issued = self.issued.lock().await;
        let published = self.ca.publish(&read, now).await;
        if let Some(trusted) = published.trusted {
            issued.trusted = Some(trusted);
        }
        let publish_error = published.result.err();
        let step = rotation::leaf_step(
            Some(&issued.leaf),
            &read.state,
            issued.trusted.as_deref(),
            self.ca.settings.check_interval,
            now,
        );
        let signer = match step {
            LeafStep::Keep => return publish_error.map_or(Ok(()), Err),
            LeafStep::NoSigner => return Err(self.ca.no_ca()),
            LeafStep::Issue(signer) => signer,
        };
        let (new_leaf, pair) = self.ca.issue(&read, signer).await?;
        self.serving.replace(
            "the issued serving certificate",
            pair.cert_pem.into_bytes(),
            pair.key_pem.into_bytes(),
        )?;
        let switched = rotation::pem_bodies(&new_leaf.signed_by)
            != rotation::pem_bodies(&issued.leaf.signed_by);
        let not_after = new_leaf.validity.not_after;
        issued.leaf = new_leaf;
        drop(issued);
        tracing::info!(%not_after, switched_ca = switched, "serving certificate renewed");
        let from = if switched { " from the new CA" } else { "" };
        let note = format!(
            "{}: serving certificate renewed{from}, valid until {not_after}",
            self.ca.settings.instance
        );
        self.ca
            .event(EventType::Normal, "ServingCertificateRenewed", note)
            .await;
        publish_error.map_or(Ok(()), Err)
    }
}

impl CaStore {
    fn secret_err(&self, action: &'static str) -> impl FnOnce(kube::Error) -> ManagerError {
        let (namespace, name) = (
            self.settings.namespace.clone(),
            self.settings.ca_secret.clone(),
        );
        move |source| ManagerError::Secret {
            action,
            namespace,
            name,
            source,
        }
    }

    fn no_ca(&self) -> ManagerError {
        ManagerError::NoCa {
            namespace: self.settings.namespace.clone(),
            name: self.settings.ca_secret.clone(),
        }
    }

    /// Issues a serving certificate signed by `signer`, off the async runtime.
    async fn issue(&self, read: &Read, signer: Signer) -> Result<(Leaf, Pair), ManagerError> {
        let ca = match signer {
            Signer::Current => read.current.clone(),
            Signer::Previous => read.previous.clone(),
        };
        let Some(ca) = ca else {
            return Err(self.no_ca());
        };
        let hosts = self.settings.hosts.clone();
        let validity = self.settings.cert_validity;
        let signed_by = ca.cert_pem.clone();
        let pair = blocking(move || super::issue_serving(&ca, &hosts, validity)).await?;
        let validity =
            Validity::of_pem(pair.cert_pem.as_bytes()).map_err(|source| CertError::Validity {
                what: "the issued serving certificate".into(),
                source,
            })?;
        Ok((
            Leaf {
                validity,
                signed_by,
            },
            pair,
        ))
    }

    /// The Secret's data after `step`.
    async fn next_data(
        &self,
        read: &Read,
        step: CaStep,
        now: Timestamp,
    ) -> Result<BTreeMap<String, ByteString>, ManagerError> {
        let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
        let mut data = BTreeMap::new();
        match step {
            CaStep::Keep => {}
            CaStep::Create | CaStep::Rotate | CaStep::Replace => {
                let validity = self.settings.ca_validity;
                let ca = blocking(move || super::generate_ca(validity)).await?;
                data.insert(CA_CERT.to_owned(), bytes(&ca.cert_pem));
                data.insert(CA_KEY.to_owned(), bytes(&ca.key_pem));
                match (step, &read.current, &read.state.current) {
                    (CaStep::Rotate, Some(old), _) => {
                        data.insert(CA_PREVIOUS.to_owned(), bytes(&old.cert_pem));
                        data.insert(CA_PREVIOUS_KEY.to_owned(), bytes(&old.key_pem));
                        data.insert(ROTATED_AT.to_owned(), bytes(&now.to_string()));
                    }
                    // The old certificate stays trusted for the serving certificates it
                    // signed; its key is not carried.
                    (CaStep::Replace, _, Some(old)) => {
                        data.insert(CA_PREVIOUS.to_owned(), bytes(&old.pem));
                        data.insert(ROTATED_AT.to_owned(), bytes(&now.to_string()));
                    }
                    _ => {}
                }
            }
            CaStep::DropPrevious => {
                data = read
                    .secret
                    .as_ref()
                    .and_then(|s| s.data.clone())
                    .unwrap_or_default();
                data.remove(CA_PREVIOUS);
                data.remove(CA_PREVIOUS_KEY);
            }
        }
        Ok(data)
    }

    /// Reads the CA Secret and creates, rotates or trims the CA as needed. A write that loses
    /// a race with another replica is retried from a fresh read.
    async fn ensure(&self, now: Timestamp) -> Result<Read, ManagerError> {
        let name = &self.settings.ca_secret;
        for _ in 0..WRITE_ATTEMPTS {
            let secret = self
                .secrets
                .get_opt(name)
                .await
                .map_err(self.secret_err("read"))?;
            let mut read = read_state(secret);
            let step = rotation::ca_step(&read.state, now);
            if let (CaStep::Replace, Some(problem)) = (step, read.unusable.take()) {
                self.report_unusable_key(problem).await;
            }
            if step == CaStep::Keep {
                if let Some(ca) = &read.state.current {
                    self.metrics.expires("ca", ca.validity.not_after);
                }
                return Ok(read);
            }
            let data = Some(self.next_data(&read, step, now).await?);
            let written = match &read.secret {
                None => {
                    let mut secret = Secret {
                        data,
                        type_: Some("Opaque".into()),
                        ..Secret::default()
                    };
                    secret.metadata.name = Some(name.clone());
                    secret.metadata.namespace = Some(self.settings.namespace.clone());
                    self.secrets.create(&PostParams::default(), &secret).await
                }
                // The resourceVersion of what was read is the update's precondition.
                Some(existing) => {
                    let secret = Secret {
                        data,
                        ..existing.clone()
                    };
                    self.secrets
                        .replace(name, &PostParams::default(), &secret)
                        .await
                }
            };
            match written {
                Ok(_) => {
                    tracing::info!(step = ?step, secret = %name, "CA written");
                    if matches!(step, CaStep::Rotate | CaStep::Replace) {
                        self.metrics.rotated("ca");
                        let note = "a new CA signs serving certificates; the previous one stays in the caBundle until it expires".to_owned();
                        self.event(EventType::Normal, "CARotated", note).await;
                    }
                }
                // Another replica wrote first (a conflict, or AlreadyExists): read its CA.
                Err(e) if api_status_code(&e) == Some(409) => {
                    tracing::debug!(secret = %name, "another replica wrote the CA first");
                }
                Err(e) => return Err(self.secret_err("write")(e)),
            }
        }
        Err(ManagerError::Contended {
            namespace: self.settings.namespace.clone(),
            name: name.clone(),
        })
    }

    /// Reports a CA key that cannot sign: an error log and an Event naming the Secret and the
    /// key, and a metric. The CA is replaced by the caller.
    async fn report_unusable_key(&self, problem: CaKeyError) {
        self.metrics.unusable_ca_key(problem.label());
        let error = ManagerError::UnusableKey {
            key: CA_KEY,
            namespace: self.settings.namespace.clone(),
            name: self.settings.ca_secret.clone(),
            source: problem,
        };
        let error = error_chain(&error);
        tracing::error!(%error, "the self-managed CA cannot sign; replacing it with a new CA");
        let note = format!(
            "{error}; a new CA replaces it, and the old certificate stays in the caBundle until it expires"
        );
        self.event(EventType::Warning, "CAKeyUnusable", note).await;
    }

    /// Reads the caBundle of the webhook configuration (what the API server trusts) and sets
    /// it to the CA bundle, unless every webhook already has it.
    async fn publish(&self, read: &Read, now: Timestamp) -> Published {
        let name = &self.settings.webhook_configuration;
        let webhook_err = |action| {
            let name = name.clone();
            move |source| ManagerError::Webhook {
                action,
                name,
                source,
            }
        };
        let bundle = rotation::bundle(&read.state, now);
        let config = match self.webhooks.get(name).await {
            Ok(config) => config,
            Err(e) => {
                return Published {
                    trusted: None,
                    result: Err(webhook_err("read")(e)),
                };
            }
        };
        let hooks = config.webhooks.unwrap_or_default();
        let has = |h: &MutatingWebhook| {
            h.client_config
                .ca_bundle
                .as_ref()
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default()
        };
        let bundles: Vec<String> = hooks.iter().map(has).collect();
        let trusted = rotation::common_bundle(bundles.iter().map(String::as_str));
        if !hooks.is_empty() && bundles.iter().all(|b| *b == bundle) {
            return Published {
                trusted: Some(trusted),
                result: Ok(()),
            };
        }
        let apply = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": hooks.iter().map(|h| json!({
                "name": h.name,
                "clientConfig": {"caBundle": ByteString(bundle.clone().into_bytes())}
            })).collect::<Vec<_>>()
        });
        let params = PatchParams::apply(&self.settings.field_manager).force();
        if let Err(e) = self
            .webhooks
            .patch(name, &params, &Patch::Apply(&apply))
            .await
        {
            // Not written: the API server trusts what the configuration holds.
            return Published {
                trusted: Some(trusted),
                result: Err(webhook_err("patch")(e)),
            };
        }
        let cas = rotation::pem_bodies(&bundle).len();
        tracing::info!(webhook_configuration = %name, cas, "caBundle updated");
        if bundles.first().is_some_and(|b| !b.is_empty()) {
            let note = format!("the caBundle of {name} now carries {cas} CA certificate(s)");
            self.event(EventType::Normal, "CABundleUpdated", note).await;
        }
        Published {
            trusted: Some(bundle),
            result: Ok(()),
        }
    }

    /// An Event about the CA Secret, the object every replica shares.
    async fn event(&self, type_: EventType, reason: &str, note: String) {
        let mut secret = Secret::default();
        secret.metadata.name = Some(self.settings.ca_secret.clone());
        secret.metadata.namespace = Some(self.settings.namespace.clone());
        let reference = secret.object_ref(&());
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "ManageCertificates".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %error_chain(&e), "could not publish the {reason} event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::generate_ca;

    fn secret(data: &[(&str, &[u8])]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn a_readable_ca_whose_key_cannot_sign_is_read_as_such_and_replaced() {
        let ca = generate_ca(Duration::from_secs(3600)).unwrap();
        let other = generate_ca(Duration::from_secs(3600)).unwrap();
        let cert = ca.cert_pem.as_bytes();
        type Data<'a> = Vec<(&'a str, &'a [u8])>;
        let cases: [(&str, Data, Option<&str>); 5] = [
            (
                "usable",
                vec![(CA_CERT, cert), (CA_KEY, ca.key_pem.as_bytes())],
                None,
            ),
            ("no key", vec![(CA_CERT, cert)], Some("missing")),
            (
                "not UTF-8",
                vec![(CA_CERT, cert), (CA_KEY, &[0xff, 0xfe])],
                Some("not_pem"),
            ),
            (
                "not PEM",
                vec![(CA_CERT, cert), (CA_KEY, b"hunter2")],
                Some("not_pem"),
            ),
            (
                "another key",
                vec![(CA_CERT, cert), (CA_KEY, other.key_pem.as_bytes())],
                Some("mismatch"),
            ),
        ];
        for (what, data, problem) in cases {
            let read = read_state(Some(secret(&data)));
            let current = read.state.current.as_ref().expect(what);
            assert_eq!(current.can_sign, problem.is_none(), "{what}");
            assert_eq!(read.current.is_some(), problem.is_none(), "{what}");
            assert_eq!(
                read.unusable.as_ref().map(CaKeyError::label),
                problem,
                "{what}"
            );
            let step = rotation::ca_step(&read.state, Timestamp::now());
            let want = if problem.is_some() {
                CaStep::Replace
            } else {
                CaStep::Keep
            };
            assert_eq!(step, want, "{what}");
        }
        // No readable certificate is no CA: made afresh.
        for data in [
            vec![],
            vec![
                (CA_CERT, b"garbage" as &[u8]),
                (CA_KEY, ca.key_pem.as_bytes()),
            ],
        ] {
            let read = read_state(Some(secret(&data)));
            assert!(read.state.current.is_none());
            assert_eq!(
                rotation::ca_step(&read.state, Timestamp::now()),
                CaStep::Create
            );
        }
    }

    #[test]
    fn a_replaced_cas_certificate_is_carried_without_a_key_and_never_signs() {
        let old = generate_ca(Duration::from_secs(3600)).unwrap();
        let new = generate_ca(Duration::from_secs(3600)).unwrap();
        let read = read_state(Some(secret(&[
            (CA_CERT, new.cert_pem.as_bytes()),
            (CA_KEY, new.key_pem.as_bytes()),
            (CA_PREVIOUS, old.cert_pem.as_bytes()),
        ])));
        let previous = read.state.previous.as_ref().unwrap();
        assert!(!previous.can_sign);
        assert!(read.previous.is_none());
        assert!(
            read.unusable.is_none(),
            "only the current CA's key is reported"
        );
        let bundle = rotation::bundle(&read.state, Timestamp::now());
        assert_eq!(rotation::pem_bodies(&bundle).len(), 2, "both stay trusted");
    }

    #[test]
    fn the_read_state_never_prints_a_key() {
        let ca = generate_ca(Duration::from_secs(3600)).unwrap();
        let read = read_state(Some(secret(&[
            (CA_CERT, ca.cert_pem.as_bytes()),
            (CA_KEY, ca.key_pem.as_bytes()),
        ])));
        super::super::assert_no_key(&format!("{:?}", read.state), &ca.key_pem);
        super::super::assert_no_key(&format!("{:?}", read.current), &ca.key_pem);
    }
}

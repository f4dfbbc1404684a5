//! Self-managed certificates: a CA shared by every replica through a Secret, a serving
//! certificate per replica issued from it, and the webhook's caBundle kept equal to the CA.
//!
//! Each check ([`SelfManaged::reconcile`]) reads the Secret and the webhook configuration,
//! asks [`super::rotation`] what to do, and does it:
//! - no CA: the replica makes one and writes it (create, or update with the Secret's
//!   resourceVersion as precondition); a replica that loses the race reads the winner's;
//! - a CA with less than a third of its life left is rotated the same way, the old one kept
//!   as `ca-previous.crt` until it expires;
//! - the caBundle of every webhook in `--webhook-configuration` is set to the bundle with
//!   server-side apply (field manager `--field-manager`);
//! - the serving certificate is issued off the async runtime and swapped into the listener.

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
    CertError, CertMetrics, GenerateError, Pair, ServingCert, Validity,
    rotation::{self, CaState, CaStep, Leaf, LeafStep, Signer},
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
    #[error("the Secret {namespace}/{name} holds no usable {which} CA")]
    NoCa {
        which: &'static str,
        namespace: String,
        name: String,
    },
}

/// The self-managed certificate manager of one replica.
pub struct SelfManaged {
    ca: CaStore,
    serving: Arc<ServingCert>,
    issued: Mutex<Issued>,
}

/// This replica's serving certificate, and the caBundle last published, which is what the
/// API server trusts while the webhook configuration cannot be written.
struct Issued {
    leaf: Leaf,
    published: Option<String>,
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
    /// The current CA with its key, when usable.
    current: Option<Pair>,
    /// The previous CA with its key, while it is carried.
    previous: Option<Pair>,
}

fn data_str(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn read_state(secret: Option<Secret>) -> Read {
    let Some(s) = &secret else {
        return Read {
            secret,
            state: CaState::default(),
            current: None,
            previous: None,
        };
    };
    // A pair whose certificate does not parse is as good as none.
    let pair = |cert: &str, key: &str| match (data_str(s, cert), data_str(s, key)) {
        (Some(cert_pem), Some(key_pem)) => Validity::of_pem(cert_pem.as_bytes())
            .ok()
            .map(|v| (Pair { cert_pem, key_pem }, v)),
        _ => None,
    };
    let current = pair(CA_CERT, CA_KEY);
    let previous = pair(CA_PREVIOUS, CA_PREVIOUS_KEY);
    let state = CaState {
        current: current.as_ref().map(|(p, v)| (p.cert_pem.clone(), *v)),
        previous: previous.as_ref().map(|(p, v)| (p.cert_pem.clone(), *v)),
        rotated_at: data_str(s, ROTATED_AT).and_then(|t| t.parse().ok()),
    };
    Read {
        secret,
        state,
        current: current.map(|(p, _)| p),
        previous: previous.map(|(p, _)| p),
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
        let published = match ca.publish(&read, now).await {
            Ok(bundle) => Some(bundle),
            Err(error) => {
                // Helm creates the webhook configuration after the Deployment: it may not
                // exist yet. The next check publishes the bundle.
                tracing::warn!(error = %error_chain(&error), "could not set the webhook's caBundle yet; retrying at the next check");
                None
            }
        };
        let signer = rotation::signer(
            &read.state,
            published.as_deref(),
            ca.settings.check_interval,
            now,
        );
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
            issued: Mutex::new(Issued { leaf, published }),
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
        let publish_error = match self.ca.publish(&read, now).await {
            Ok(bundle) => {
                issued.published = Some(bundle);
                None
            }
            Err(error) => Some(error),
        };
        let step = rotation::leaf_step(
            Some(&issued.leaf),
            &read.state,
            issued.published.as_deref(),
            self.ca.settings.check_interval,
            now,
        );
        let LeafStep::Issue(signer) = step else {
            return publish_error.map_or(Ok(()), Err);
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

    /// Issues a serving certificate signed by `signer`, off the async runtime.
    async fn issue(&self, read: &Read, signer: Signer) -> Result<(Leaf, Pair), ManagerError> {
        let (ca, which) = match signer {
            Signer::Current => (read.current.clone(), "current"),
            Signer::Previous => (read.previous.clone(), "previous"),
        };
        let Some(ca) = ca else {
            return Err(ManagerError::NoCa {
                which,
                namespace: self.settings.namespace.clone(),
                name: self.settings.ca_secret.clone(),
            });
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
            CaStep::Create | CaStep::Rotate => {
                let validity = self.settings.ca_validity;
                let ca = blocking(move || super::generate_ca(validity)).await?;
                data.insert(CA_CERT.to_owned(), bytes(&ca.cert_pem));
                data.insert(CA_KEY.to_owned(), bytes(&ca.key_pem));
                if let (CaStep::Rotate, Some(old)) = (step, &read.current) {
                    data.insert(CA_PREVIOUS.to_owned(), bytes(&old.cert_pem));
                    data.insert(CA_PREVIOUS_KEY.to_owned(), bytes(&old.key_pem));
                    data.insert(ROTATED_AT.to_owned(), bytes(&now.to_string()));
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
            let read = read_state(secret);
            let step = rotation::ca_step(&read.state, now);
            if step == CaStep::Keep {
                if let Some((_, v)) = &read.state.current {
                    self.metrics.expires("ca", v.not_after);
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
                    if step == CaStep::Rotate {
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

    /// Sets the caBundle of every webhook in the configuration to the CA bundle, unless it
    /// already is. Returns the bundle the API server now has.
    async fn publish(&self, read: &Read, now: Timestamp) -> Result<String, ManagerError> {
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
        let config = self.webhooks.get(name).await.map_err(webhook_err("read"))?;
        let hooks = config.webhooks.unwrap_or_default();
        let has = |h: &MutatingWebhook| {
            h.client_config
                .ca_bundle
                .as_ref()
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default()
        };
        if !hooks.is_empty() && hooks.iter().all(|h| has(h) == bundle) {
            return Ok(bundle);
        }
        let before = hooks.first().map(has).unwrap_or_default();
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
        self.webhooks
            .patch(name, &params, &Patch::Apply(&apply))
            .await
            .map_err(webhook_err("patch"))?;
        let cas = rotation::pem_bodies(&bundle).len();
        tracing::info!(webhook_configuration = %name, cas, "caBundle updated");
        if !before.is_empty() {
            let note = format!("the caBundle of {name} now carries {cas} CA certificate(s)");
            self.event(EventType::Normal, "CABundleUpdated", note).await;
        }
        Ok(bundle)
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

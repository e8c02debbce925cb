//! The `kubernetes` provider: sets `spec.replicas` through the scale
//! subresource of any resource that has one, as `kubectl scale`, the HPA
//! and KEDA's `scaleTargetRef` do: Deployments, StatefulSets, ReplicaSets,
//! Argo Rollouts, custom resources. It sends `PATCH
//! /apis/{group}/{version}/namespaces/{ns}/{plural}/{name}/scale` with a
//! JSON merge patch `{"spec":{"replicas":N}}`. The answer is an
//! `autoscaling/v1` Scale, and its `spec.replicas` is reported as the
//! observed replicas.
//!
//! The client is kube-rs. Its configuration covers:
//! - the pod's service account;
//! - a kubeconfig, with exec credential plugins (`aws eks get-token`,
//!   `gke-gcloud-auth-plugin`, `kubelogin`), client certificates with any
//!   key type, tokens and token files, `proxy-url` and `tls-server-name`.

use std::path::PathBuf;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::config::{Config, KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use serde::Deserialize;

use super::{Provider, ProviderError, ProviderFuture, ScaleCommand};

/// `kubernetes = { namespace, kind, name }`, and for kinds outside
/// `apps/v1`, `api_version`: the resource whose scale subresource is set.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    pub namespace: String,
    /// `Deployment`, `StatefulSet`, `ReplicaSet`, or any kind with a scale
    /// subresource (with `api_version`).
    #[serde(default = "default_kind")]
    pub kind: String,
    /// `group/version` of the kind (`argoproj.io/v1alpha1`); default
    /// `apps/v1` for Deployment, StatefulSet and ReplicaSet.
    #[serde(default)]
    pub api_version: Option<String>,
    /// The resource's plural name, when Kubernetes' rule (lower case, plus
    /// `s`, `es` or `ies`) does not give it.
    #[serde(default)]
    pub plural: Option<String>,
    pub name: String,
    /// A kubeconfig file; without it: `$KUBECONFIG`, else `~/.kube/config`,
    /// else the pod's service account.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[serde(default)]
    pub context: Option<String>,
}

/// The kinds whose `api_version` may be left out.
const APPS_V1: [&str; 3] = ["Deployment", "StatefulSet", "ReplicaSet"];

impl KubernetesConfig {
    /// Checks the target's `kubernetes` table; `key` makes a key of a field.
    pub fn check(&self, key: &dyn Fn(&str) -> String, out: &mut Vec<crate::settings::Problem>) {
        use crate::settings::problem;
        for (field, value) in [("namespace", &self.namespace), ("name", &self.name)] {
            if let Err(e) = check_name(field, value) {
                out.push(problem(key(&format!("kubernetes.{field}")), e.to_string()));
            }
        }
        if let Err(e) = self.resource() {
            out.push(problem(key("kubernetes.kind"), e.to_string()));
        }
        if let Some(p) = &self.kubeconfig {
            if !p.exists() {
                out.push(
                    problem(
                        key("kubernetes.kubeconfig"),
                        format!("{} does not exist here", p.display()),
                    )
                    .warning(),
                );
            }
        }
    }

    /// The group, version and kind of the target.
    pub fn gvk(&self) -> Result<GroupVersionKind, KubernetesError> {
        let kind = self.kind.as_str();
        if !kind.starts_with(|c: char| c.is_ascii_uppercase())
            || !kind.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(KubernetesError::Kind(kind.to_owned()));
        }
        let api_version = match (&self.api_version, APPS_V1.contains(&kind)) {
            (Some(v), _) => v.clone(),
            (None, true) => "apps/v1".to_owned(),
            (None, false) => return Err(KubernetesError::ApiVersion(kind.to_owned())),
        };
        let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
        if version.is_empty() || version.contains('/') {
            return Err(KubernetesError::BadApiVersion(api_version.clone()));
        }
        Ok(GroupVersionKind::gvk(group, version, kind))
    }

    /// The API resource: its group, version and plural.
    pub fn resource(&self) -> Result<ApiResource, KubernetesError> {
        let gvk = self.gvk()?;
        Ok(match &self.plural {
            Some(p) => ApiResource::from_gvk_with_plural(&gvk, p),
            None => ApiResource::from_gvk(&gvk),
        })
    }
}

fn default_kind() -> String {
    "Deployment".into()
}

/// Why a kubernetes provider cannot be built or reach its cluster.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("{what} {value:?} is not a Kubernetes name (lowercase letters, digits, '-', '.')")]
    Name { what: &'static str, value: String },
    #[error("kind {0:?} is not a Kubernetes kind (a capitalized name such as \"Deployment\")")]
    Kind(String),
    #[error(
        "kind {0:?} is not one of Deployment, StatefulSet, ReplicaSet: give its `api_version` \
         (for example \"argoproj.io/v1alpha1\")"
    )]
    ApiVersion(String),
    #[error("api_version {0:?} is not `group/version` or `version`")]
    BadApiVersion(String),
    #[error("kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no usable credentials (looked for $KUBECONFIG, ~/.kube/config and a pod's service \
         account): {0}"
    )]
    Infer(kube::config::InferConfigError),
    #[error("the Kubernetes client: {0}")]
    Client(kube::Error),
}

/// A DNS-1123 name as Kubernetes requires for namespaces and workloads.
pub fn check_name(what: &'static str, s: &str) -> Result<(), KubernetesError> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(KubernetesError::Name {
            what,
            value: s.to_owned(),
        })
    }
}

/// The client configuration of a target: its kubeconfig (and context), or
/// kube-rs' inference (`$KUBECONFIG`, `~/.kube/config`, the service
/// account), with `timeout` for each call.
async fn client_config(
    cfg: &KubernetesConfig,
    timeout: Duration,
) -> Result<Config, KubernetesError> {
    let options = KubeConfigOptions {
        context: cfg.context.clone(),
        ..KubeConfigOptions::default()
    };
    let mut config = match &cfg.kubeconfig {
        Some(path) => {
            let failed = |source| KubernetesError::Kubeconfig {
                path: path.clone(),
                source,
            };
            let kc = Kubeconfig::read_from(path).map_err(failed)?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(failed)?
        }
        None if cfg.context.is_some() => {
            Config::from_kubeconfig(&options).await.map_err(|source| {
                KubernetesError::Kubeconfig {
                    path: PathBuf::from("$KUBECONFIG or ~/.kube/config"),
                    source,
                }
            })?
        }
        None => Config::infer().await.map_err(KubernetesError::Infer)?,
    };
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    Ok(config)
}

pub struct KubernetesProvider {
    api: Api<DynamicObject>,
    name: String,
    /// `deployments/checkout in namespace shop`, for messages.
    object: String,
    server: String,
}

impl KubernetesProvider {
    /// Loads the credentials and builds the client of `cfg`.
    pub async fn connect(
        cfg: &KubernetesConfig,
        timeout: Duration,
    ) -> Result<Self, KubernetesError> {
        check_name("namespace", &cfg.namespace)?;
        check_name("name", &cfg.name)?;
        let resource = cfg.resource()?;
        let config = client_config(cfg, timeout).await?;
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).map_err(KubernetesError::Client)?;
        Ok(Self {
            api: Api::namespaced_with(client, &cfg.namespace, &resource),
            name: cfg.name.clone(),
            object: format!(
                "{}/{} in namespace {}",
                resource.plural, cfg.name, cfg.namespace
            ),
            server,
        })
    }

    async fn call(&self, replicas: u32) -> Result<Option<u32>, ProviderError> {
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        match self
            .api
            .patch_scale(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(scale) => {
                let spec = scale.spec.and_then(|s| s.replicas);
                let status = scale.status.map(|s| s.replicas);
                tracing::debug!(object = %self.object, ?spec, ?status, "scaled");
                Ok(spec.map(|n| n.max(0) as u32))
            }
            Err(kube::Error::Api(st)) => {
                let code = st.code;
                let hint = match code {
                    401 => "; the credentials were not accepted",
                    403 => "; the worker's account needs `patch` on the scale subresource (see docs/operations.md RBAC)",
                    404 => "; check namespace, kind, api_version and name",
                    _ => "",
                };
                Err(ProviderError {
                    message: format!(
                        "kubernetes {}: {code}: {} ({}){hint}",
                        self.object, st.message, st.reason
                    ),
                    retryable: code >= 500 || code == 409 || code == 429,
                })
            }
            Err(e) => Err(ProviderError {
                message: format!("kubernetes {} ({}): {e}", self.object, self.server),
                retryable: true,
            }),
        }
    }
}

impl Provider for KubernetesProvider {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn scale<'a>(&'a self, c: &'a ScaleCommand) -> ProviderFuture<'a> {
        Box::pin(self.call(c.desired_replicas))
    }
}

/// A kubernetes provider whose credentials are looked up at its first
/// command and, while none are found, again at each: the worker runs (its
/// other targets work) and answers this target's commands `failed` with
/// what it looked for, until the kubeconfig or service account appears.
pub struct Deferred {
    cfg: KubernetesConfig,
    timeout: Duration,
    ready: tokio::sync::OnceCell<KubernetesProvider>,
}

impl Deferred {
    /// Checks what can be checked without the cluster.
    pub fn new(cfg: &KubernetesConfig, timeout: Duration) -> Result<Self, KubernetesError> {
        check_name("namespace", &cfg.namespace)?;
        check_name("name", &cfg.name)?;
        cfg.resource()?;
        Ok(Self {
            cfg: cfg.clone(),
            timeout,
            ready: tokio::sync::OnceCell::new(),
        })
    }
}

impl Provider for Deferred {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn scale<'a>(&'a self, c: &'a ScaleCommand) -> ProviderFuture<'a> {
        Box::pin(async move {
            let p = self
                .ready
                .get_or_try_init(|| async {
                    let p = KubernetesProvider::connect(&self.cfg, self.timeout).await?;
                    tracing::info!(cluster = %p.server, object = %p.object, "kubernetes provider ready");
                    Ok::<_, KubernetesError>(p)
                })
                .await
                .map_err(|e| ProviderError {
                    message: format!("kubernetes: {e}"),
                    retryable: false,
                })?;
            p.call(c.desired_replicas).await
        })
    }
}

#[cfg(test)]
mod tests;

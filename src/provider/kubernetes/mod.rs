//! The `kubernetes` provider: sets `spec.replicas` of a Deployment or
//! StatefulSet through its scale subresource, as `kubectl scale` and the
//! HPA do: `PATCH /apis/apps/v1/namespaces/{ns}/{deployments|statefulsets}/{name}/scale`
//! with a JSON merge patch `{"spec":{"replicas":N}}`. The answer is an
//! `autoscaling/v1` Scale; its `spec.replicas` is reported as the observed
//! replicas (what the HPA calls the current replicas).
//!
//! Plain HTTP done with reqwest rather than a full client: one call, one
//! verb. Credentials come from the pod's service account (token re-read on
//! every call, as kubelet rotates it) or from a kubeconfig (token,
//! tokenFile, client certificate with a PKCS#8 key, basic auth); exec
//! credential plugins are not supported and say so.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Provider, ProviderError, ProviderFuture, ScaleCommand};

mod kubeconfig;
use kubeconfig::Auth;
pub use kubeconfig::{Cluster, KubeconfigError, SERVICE_ACCOUNT_DIR};

/// `kubernetes = { namespace, kind, name }`: the scale subresource of a
/// Deployment or StatefulSet.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    pub namespace: String,
    /// `Deployment` or `StatefulSet`.
    #[serde(default = "default_kind")]
    pub kind: String,
    pub name: String,
    /// A kubeconfig file; without it: in-cluster service account when
    /// running in a pod, else `$KUBECONFIG`, else `~/.kube/config`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[serde(default)]
    pub context: Option<String>,
}

impl KubernetesConfig {
    /// Checks the target's `kubernetes` table; `key` makes a key of a field.
    pub fn check(&self, key: &dyn Fn(&str) -> String, out: &mut Vec<crate::settings::Problem>) {
        use crate::settings::problem;
        if self.namespace.is_empty() || self.name.is_empty() {
            out.push(problem(
                key("kubernetes"),
                "`namespace` and `name` must not be empty",
            ));
        }
        if !["Deployment", "StatefulSet"].contains(&self.kind.as_str()) {
            out.push(problem(
                key("kubernetes.kind"),
                format!("{:?}: give \"Deployment\" or \"StatefulSet\"", self.kind),
            ));
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
}

fn default_kind() -> String {
    "Deployment".into()
}

/// Why a kubernetes provider cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("{what} {value:?} is not a Kubernetes name (lowercase letters, digits, '-', '.')")]
    Name { what: &'static str, value: String },
    #[error("kind {0:?}: give \"Deployment\" or \"StatefulSet\"")]
    Kind(String),
    #[error(transparent)]
    Cluster(#[from] KubeconfigError),
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

pub struct KubernetesProvider {
    client: reqwest::Client,
    cluster: Cluster,
    /// `deployments/checkout in namespace shop`, for messages.
    object: String,
    url: String,
}

#[derive(Deserialize)]
struct Scale {
    spec: ScaleSpec,
    #[serde(default)]
    status: Option<ScaleStatus>,
}
#[derive(Deserialize)]
struct ScaleSpec {
    #[serde(default)]
    replicas: Option<u32>,
}
#[derive(Deserialize)]
struct ScaleStatus {
    #[serde(default)]
    replicas: Option<u32>,
}
#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    message: String,
    #[serde(default)]
    reason: String,
}

impl KubernetesProvider {
    pub fn new(
        cfg: &KubernetesConfig,
        cluster: Cluster,
        timeout: Duration,
    ) -> Result<Self, KubernetesError> {
        check_name("namespace", &cfg.namespace)?;
        check_name("name", &cfg.name)?;
        let resource = match cfg.kind.as_str() {
            "Deployment" => "deployments",
            "StatefulSet" => "statefulsets",
            k => return Err(KubernetesError::Kind(k.to_owned())),
        };
        let url = format!(
            "{}/apis/apps/v1/namespaces/{}/{resource}/{}/scale",
            cluster.server.trim_end_matches('/'),
            cfg.namespace,
            cfg.name
        );
        Ok(Self {
            client: cluster.client(timeout)?,
            object: format!("{resource}/{} in namespace {}", cfg.name, cfg.namespace),
            cluster,
            url,
        })
    }

    async fn call(&self, replicas: u32) -> Result<Option<u32>, ProviderError> {
        let fail = |message: String, retryable: bool| ProviderError { message, retryable };
        let body = serde_json::json!({ "spec": { "replicas": replicas } });
        let mut req = self
            .client
            .patch(self.url.as_str())
            .header("content-type", "application/merge-patch+json")
            .header("accept", "application/json")
            .body(body.to_string());
        req = match &self.cluster.auth {
            Auth::None => req,
            Auth::Token(t) => req.bearer_auth(t),
            Auth::TokenFile(p) => {
                let t = std::fs::read_to_string(p)
                    .map_err(|e| fail(format!("token file {}: {e}", p.display()), true))?;
                req.bearer_auth(t.trim())
            }
            Auth::Basic(u, p) => req.basic_auth(u, Some(p)),
        };
        let resp = req.send().await.map_err(|e| {
            fail(
                format!("kubernetes {} ({}): {e}", self.object, self.cluster.server),
                true,
            )
        })?;
        let code = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default();
        if !code.is_success() {
            let st: Option<Status> = serde_json::from_slice(&bytes).ok();
            let detail = st
                .map(|s| format!("{} ({})", s.message, s.reason))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(300).collect());
            let hint = match code.as_u16() {
                401 => "; the credentials were not accepted",
                403 => "; the worker's account needs `patch` on the scale subresource (see docs/operations.md RBAC)",
                404 => "; check namespace, kind and name",
                _ => "",
            };
            let retryable = code.is_server_error() || code.as_u16() == 409 || code.as_u16() == 429;
            return Err(fail(
                format!("kubernetes {}: {code}: {detail}{hint}", self.object),
                retryable,
            ));
        }
        let scale: Scale = serde_json::from_slice(&bytes).map_err(|e| {
            fail(
                format!("kubernetes {}: the answer is not a Scale: {e}", self.object),
                false,
            )
        })?;
        tracing::debug!(object = %self.object, spec = ?scale.spec.replicas,
            status = ?scale.status.as_ref().and_then(|s| s.replicas), "scaled");
        Ok(scale.spec.replicas)
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

/// A kubernetes provider whose credentials are looked up when the worker
/// starts and, while none are found, again at each command: the worker
/// runs (its other targets work) and answers this target's commands
/// `failed` with what it looked for, until the kubeconfig or service
/// account appears.
pub struct Deferred {
    cfg: KubernetesConfig,
    timeout: Duration,
    ready: tokio::sync::OnceCell<KubernetesProvider>,
}

impl Deferred {
    pub fn new(cfg: &KubernetesConfig, timeout: Duration) -> Result<Self, KubernetesError> {
        check_name("namespace", &cfg.namespace)?;
        check_name("name", &cfg.name)?;
        let d = Self {
            cfg: cfg.clone(),
            timeout,
            ready: tokio::sync::OnceCell::new(),
        };
        match d.resolve() {
            Ok(p) => {
                tracing::info!(cluster = %p.cluster.server, origin = %p.cluster.origin, object = %p.object, "kubernetes provider ready");
                let _ = d.ready.set(p);
            }
            Err(e) => {
                tracing::error!(object = %format!("{}/{}", cfg.namespace, cfg.name), error = %e,
                "kubernetes provider: no usable credentials yet; its commands fail until they appear")
            }
        }
        Ok(d)
    }

    fn resolve(&self) -> Result<KubernetesProvider, KubernetesError> {
        let cluster =
            Cluster::discover(self.cfg.kubeconfig.as_deref(), self.cfg.context.as_deref())?;
        KubernetesProvider::new(&self.cfg, cluster, self.timeout)
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
                .get_or_try_init(|| async { self.resolve() })
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
mod tests {
    use super::*;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use std::sync::{Arc, Mutex};

    type Seen = Arc<Mutex<Vec<(Method, String, HeaderMap, String)>>>;

    /// A stand-in API server that checks exactly what the real one expects
    /// and answers as it does (Scale and Status shapes from the Kubernetes
    /// API reference). `apps` holds name -> replicas of known Deployments.
    async fn api_server(token: &'static str) -> (String, Seen) {
        let seen: Seen = Arc::default();
        let s = seen.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: String| {
                let s = s.clone();
                async move {
                    s.lock().unwrap().push((method.clone(), uri.path().to_owned(), headers.clone(), body.clone()));
                    let status = |code: u16, reason: &str, message: String| {
                        (
                            StatusCode::from_u16(code).unwrap(),
                            serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Failure", "message": message, "reason": reason, "code": code})
                            .to_string(),
                        )
                    };
                    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {token}")) {
                        return status(401, "Unauthorized", "Unauthorized".into());
                    }
                    let parts: Vec<&str> = uri.path().split('/').collect();
                    // ["", "apis", "apps", "v1", "namespaces", ns, resource, name, "scale"]
                    if parts.len() != 9 || parts[1..4] != ["apis", "apps", "v1"] || parts[4] != "namespaces" || parts[8] != "scale" {
                        return status(404, "NotFound", "the server could not find the requested resource".into());
                    }
                    let (ns, resource, name) = (parts[5], parts[6], parts[7]);
                    if method != Method::PATCH {
                        return status(405, "MethodNotAllowed", format!("{method} is not supported"));
                    }
                    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/merge-patch+json") {
                        return status(415, "UnsupportedMediaType", "the body of the request was in an unknown format".into());
                    }
                    if ns == "locked" {
                        return status(403, "Forbidden", format!("{resource}.apps \"{name}\" is forbidden: User \"system:serviceaccount:tidewatch:worker\" cannot patch resource \"{resource}/scale\" in API group \"apps\" in the namespace \"{ns}\""));
                    }
                    if name != "checkout" {
                        return status(404, "NotFound", format!("{resource}.apps \"{name}\" not found"));
                    }
                    let patch: serde_json::Value = match serde_json::from_str(&body) {
                        Ok(v) => v,
                        Err(e) => return status(400, "BadRequest", e.to_string()),
                    };
                    let Some(n) = patch["spec"]["replicas"].as_u64() else {
                        return status(422, "Invalid", "spec.replicas: Required value".into());
                    };
                    (StatusCode::OK, serde_json::json!({
                        "kind": "Scale", "apiVersion": "autoscaling/v1",
                        "metadata": {"name": name, "namespace": ns, "uid": "6a3f1c2e-6f2b-4c47-9d07-2f5d0d6c1f42",
                            "resourceVersion": "48213", "creationTimestamp": "2026-11-20T08:12:44Z"},
                        "spec": {"replicas": n},
                        "status": {"replicas": 3, "selector": "app=checkout"}
                    }).to_string())
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    fn target(ns: &str, kind: &str, name: &str) -> KubernetesConfig {
        KubernetesConfig {
            namespace: ns.into(),
            kind: kind.into(),
            name: name.into(),
            kubeconfig: None,
            context: None,
        }
    }

    #[tokio::test]
    async fn patches_the_scale_subresource_through_a_kubeconfig() {
        let (server, seen) = api_server("kc-token").await;
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("config");
        std::fs::write(
            &kc,
            format!(
                r#"
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: {server}
- name: other
  cluster:
    server: http://127.0.0.1:1
contexts:
- name: dev
  context:
    cluster: local
    user: worker
    namespace: shop
- name: prod
  context:
    cluster: other
    user: worker
current-context: dev
users:
- name: worker
  user:
    token: kc-token
"#
            ),
        )
        .unwrap();
        let cluster = Cluster::from_kubeconfig(&kc, None).unwrap();
        assert_eq!(cluster.server, server);
        let timeout = Duration::from_secs(5);
        let p = KubernetesProvider::new(
            &target("shop", "Deployment", "checkout"),
            cluster.clone(),
            timeout,
        )
        .unwrap();
        let c = crate::provider::tests::command("checkout", 7);
        assert_eq!(
            p.scale(&c).await.unwrap(),
            Some(7),
            "spec.replicas of the answer"
        );
        let (method, path, headers, body) = seen.lock().unwrap()[0].clone();
        assert_eq!(method, Method::PATCH);
        assert_eq!(
            path,
            "/apis/apps/v1/namespaces/shop/deployments/checkout/scale"
        );
        assert_eq!(headers["content-type"], "application/merge-patch+json");
        assert_eq!(headers["authorization"], "Bearer kc-token");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"spec": {"replicas": 7}}),
            "only the replicas, nothing from the event"
        );

        // StatefulSets use their own path.
        let sts = KubernetesProvider::new(
            &target("shop", "StatefulSet", "checkout"),
            cluster.clone(),
            timeout,
        )
        .unwrap();
        assert_eq!(sts.scale(&c).await.unwrap(), Some(7));
        assert_eq!(
            seen.lock().unwrap()[1].1,
            "/apis/apps/v1/namespaces/shop/statefulsets/checkout/scale"
        );

        // Failures: the API server's message, and whether a retry can help.
        let missing = KubernetesProvider::new(
            &target("shop", "Deployment", "nope"),
            cluster.clone(),
            timeout,
        )
        .unwrap();
        let e = missing.scale(&c).await.unwrap_err();
        assert!(
            !e.retryable && e.message.contains("deployments.apps \"nope\" not found"),
            "{e:?}"
        );
        let locked = KubernetesProvider::new(
            &target("locked", "Deployment", "checkout"),
            cluster.clone(),
            timeout,
        )
        .unwrap();
        let e = locked.scale(&c).await.unwrap_err();
        assert!(
            !e.retryable && e.message.contains("403") && e.message.contains("RBAC"),
            "{e:?}"
        );

        // Another context of the same file, and a wrong token.
        let prod = Cluster::from_kubeconfig(&kc, Some("prod")).unwrap();
        assert_eq!(prod.server, "http://127.0.0.1:1");
        let e = Cluster::from_kubeconfig(&kc, Some("staging"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no context \"staging\""), "{e}");
        let bad = std::fs::read_to_string(&kc)
            .unwrap()
            .replace("token: kc-token", "token: stale");
        std::fs::write(&kc, bad).unwrap();
        let p = KubernetesProvider::new(
            &target("shop", "Deployment", "checkout"),
            Cluster::from_kubeconfig(&kc, None).unwrap(),
            timeout,
        )
        .unwrap();
        let e = p.scale(&c).await.unwrap_err();
        assert!(!e.retryable && e.message.contains("401"), "{e:?}");
    }

    #[tokio::test]
    async fn in_cluster_reads_the_rotated_token_on_every_call() {
        let (server, seen) = api_server("sa-token-2").await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "sa-token-1").unwrap();
        let cluster = Cluster::in_cluster_from(dir.path(), &server).unwrap();
        let p = KubernetesProvider::new(
            &target("shop", "Deployment", "checkout"),
            cluster,
            Duration::from_secs(5),
        )
        .unwrap();
        let c = crate::provider::tests::command("checkout", 2);
        assert!(p.scale(&c).await.unwrap_err().message.contains("401"));
        std::fs::write(dir.path().join("token"), "sa-token-2\n").unwrap();
        assert_eq!(p.scale(&c).await.unwrap(), Some(2));
        assert_eq!(
            seen.lock().unwrap()[1].2["authorization"],
            "Bearer sa-token-2"
        );
        let e = Cluster::in_cluster_from(&dir.path().join("none"), &server)
            .unwrap_err()
            .to_string();
        assert!(e.contains("service account token"), "{e}");
    }

    #[tokio::test]
    async fn missing_credentials_fail_commands_until_they_appear() {
        let (server, _) = api_server("late-token").await;
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("config");
        let cfg = KubernetesConfig {
            kubeconfig: Some(kc.clone()),
            ..target("shop", "Deployment", "checkout")
        };
        let p = Deferred::new(&cfg, Duration::from_secs(5)).unwrap();
        let c = crate::provider::tests::command("checkout", 3);
        let e = p.scale(&c).await.unwrap_err();
        assert!(
            !e.retryable && e.message.contains(kc.to_str().unwrap()),
            "{e:?}"
        );
        std::fs::write(&kc, format!("clusters:\n- name: c\n  cluster:\n    server: {server}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user:\n    token: late-token\n")).unwrap();
        assert_eq!(p.scale(&c).await.unwrap(), Some(3));
    }

    #[test]
    fn unsupported_kubeconfigs_and_names_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("config");
        std::fs::write(&kc, "clusters:\n- name: c\n  cluster:\n    server: https://k\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user:\n    exec:\n      command: aws\n").unwrap();
        let e = Cluster::from_kubeconfig(&kc, None).unwrap_err().to_string();
        assert!(e.contains("exec"), "{e}");
        assert!(check_name("namespace", "shop").is_ok());
        assert!(check_name("name", "Shop").is_err());
        assert!(check_name("name", "a/../b").is_err());
        let e = match KubernetesProvider::new(
            &target("shop", "ReplicaSet", "web"),
            Cluster::in_cluster_from(dir.path(), "http://x").unwrap_or_else(|_| Cluster {
                server: "http://x".into(),
                ca_pem: None,
                insecure: false,
                identity: None,
                auth: Auth::None,
                origin: "t".into(),
            }),
            Duration::from_secs(1),
        ) {
            Err(e) => e,
            Ok(_) => panic!("a ReplicaSet was accepted"),
        }
        .to_string();
        assert!(e.contains("ReplicaSet"), "{e}");
    }
}

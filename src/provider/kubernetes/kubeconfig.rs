//! Where a Kubernetes provider finds its API server and credentials: the
//! pod's service account, or a kubeconfig file as kubectl reads it (token,
//! tokenFile, client certificate with a PKCS#8 key, basic auth). Exec
//! credential plugins are refused with a message that says so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why no API server or credentials could be found; each names the file,
/// the entry or the variable that is missing or wrong.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("KUBERNETES_SERVICE_HOST is not set: not running in a pod")]
    NotInPod,
    #[error("service account {what} {}: {source}", path.display())]
    ServiceAccount {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no kubeconfig: set `kubeconfig`, KUBECONFIG or HOME")]
    NoKubeconfig,
    #[error("kubeconfig {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kubeconfig {}: {source}", path.display())]
    Yaml {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("kubeconfig {}: no current-context; set `context`", path.display())]
    NoCurrentContext { path: PathBuf },
    #[error("kubeconfig {}: no {entry} {name:?}", path.display())]
    Missing {
        path: PathBuf,
        entry: &'static str,
        name: String,
    },
    #[error(
        "kubeconfig {}: user {user:?} uses an exec or auth-provider plugin, which \
         tidewatch does not run; give a token, tokenFile or client certificate",
        path.display()
    )]
    Plugin { path: PathBuf, user: String },
    #[error("kubeconfig {}: a client certificate needs both the certificate and the key", path.display())]
    HalfIdentity { path: PathBuf },
    #[error("{field}: not base64: {source}")]
    Base64 {
        field: &'static str,
        source: base64::DecodeError,
    },
    #[error("{field} {}: {source}", path.display())]
    File {
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: the CA certificate: {source}")]
    Ca {
        origin: String,
        source: reqwest::Error,
    },
    #[error(
        "{origin}: the client certificate and key (the key must be PKCS#8, \
         `BEGIN PRIVATE KEY`; convert with `openssl pkcs8 -topk8 -nocrypt`): {source}"
    )]
    Identity {
        origin: String,
        source: reqwest::Error,
    },
    #[error("{origin}: {source}")]
    Client {
        origin: String,
        source: reqwest::Error,
    },
}

/// Where a pod finds its service account.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Auth {
    None,
    Token(String),
    /// Read on every call (rotated by kubelet or an external tool).
    TokenFile(PathBuf),
    Basic(String, String),
}

/// How to reach and authenticate to an API server.
#[derive(Clone)]
pub struct Cluster {
    pub server: String,
    pub(super) ca_pem: Option<Vec<u8>>,
    pub(super) insecure: bool,
    pub(super) identity: Option<(Vec<u8>, Vec<u8>)>,
    pub(super) auth: Auth,
    /// Where these settings came from, for messages.
    pub origin: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("server", &self.server)
            .field("origin", &self.origin)
            .finish()
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct KubeConfig {
    #[serde(default)]
    clusters: Vec<Named<ClusterEntry>>,
    #[serde(default)]
    contexts: Vec<Named<ContextEntry>>,
    #[serde(default)]
    users: Vec<Named<UserEntry>>,
    #[serde(default)]
    current_context: Option<String>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "context", alias = "user")]
    item: T,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct ClusterEntry {
    server: String,
    #[serde(default)]
    certificate_authority: Option<PathBuf>,
    #[serde(default)]
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
}

#[derive(Deserialize, Default)]
struct ContextEntry {
    cluster: String,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct UserEntry {
    #[serde(default)]
    token: Option<String>,
    #[serde(default, rename = "tokenFile")]
    token_file: Option<PathBuf>,
    #[serde(default)]
    client_certificate: Option<PathBuf>,
    #[serde(default)]
    client_certificate_data: Option<String>,
    #[serde(default)]
    client_key: Option<PathBuf>,
    #[serde(default)]
    client_key_data: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    exec: Option<serde_yaml::Value>,
    #[serde(default, rename = "auth-provider")]
    auth_provider: Option<serde_yaml::Value>,
}

fn b64(field: &'static str, s: &str) -> Result<Vec<u8>, KubeconfigError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|source| KubeconfigError::Base64 { field, source })
}

/// A file named in a kubeconfig, relative to the kubeconfig's directory.
fn read_rel(base: &Path, p: &Path, field: &'static str) -> Result<Vec<u8>, KubeconfigError> {
    let full = if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    };
    std::fs::read(&full).map_err(|source| KubeconfigError::File {
        field,
        path: full,
        source,
    })
}

impl Cluster {
    /// The pod's service account: `KUBERNETES_SERVICE_HOST`/`_PORT` and
    /// the token and CA under [`SERVICE_ACCOUNT_DIR`].
    pub fn in_cluster() -> Result<Self, KubeconfigError> {
        let host =
            std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| KubeconfigError::NotInPod)?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Self::in_cluster_from(
            Path::new(SERVICE_ACCOUNT_DIR),
            &format!("https://{host}:{port}"),
        )
    }

    /// A service account directory (`token`, `ca.crt`) and a server URL.
    pub fn in_cluster_from(dir: &Path, server: &str) -> Result<Self, KubeconfigError> {
        let token = dir.join("token");
        if let Err(source) = std::fs::metadata(&token) {
            return Err(KubeconfigError::ServiceAccount {
                what: "token",
                path: token,
                source,
            });
        }
        let ca = dir.join("ca.crt");
        let ca_pem = match std::fs::read(&ca) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(KubeconfigError::ServiceAccount {
                    what: "CA",
                    path: ca,
                    source,
                })
            }
        };
        Ok(Self {
            server: server.to_owned(),
            ca_pem,
            insecure: false,
            identity: None,
            auth: Auth::TokenFile(token),
            origin: format!("service account {}", dir.display()),
        })
    }

    /// A kubeconfig file, with `context` or its current context.
    pub fn from_kubeconfig(path: &Path, context: Option<&str>) -> Result<Self, KubeconfigError> {
        let shown = path.display();
        let at = || path.to_owned();
        let missing = |entry: &'static str, name: &str| KubeconfigError::Missing {
            path: at(),
            entry,
            name: name.to_owned(),
        };
        let text = std::fs::read_to_string(path)
            .map_err(|source| KubeconfigError::Read { path: at(), source })?;
        let kc: KubeConfig = serde_yaml::from_str(&text)
            .map_err(|source| KubeconfigError::Yaml { path: at(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let ctx_name = context
            .map(str::to_owned)
            .or(kc.current_context.clone())
            .ok_or_else(|| KubeconfigError::NoCurrentContext { path: at() })?;
        let ctx = kc
            .contexts
            .iter()
            .find(|c| c.name == ctx_name)
            .ok_or_else(|| missing("context", &ctx_name))?;
        let cl = kc
            .clusters
            .iter()
            .find(|c| c.name == ctx.item.cluster)
            .ok_or_else(|| missing("cluster", &ctx.item.cluster))?;
        let ca_pem = match (
            &cl.item.certificate_authority_data,
            &cl.item.certificate_authority,
        ) {
            (Some(d), _) => Some(b64("certificate-authority-data", d)?),
            (None, Some(p)) => Some(read_rel(base, p, "certificate-authority")?),
            _ => None,
        };
        let user = match &ctx.item.user {
            Some(u) => Some(
                kc.users
                    .iter()
                    .find(|x| &x.name == u)
                    .ok_or_else(|| missing("user", u))?,
            ),
            None => None,
        };
        let mut auth = Auth::None;
        let mut identity = None;
        if let Some(u) = user.map(|u| &u.item) {
            if u.exec.is_some() || u.auth_provider.is_some() {
                return Err(KubeconfigError::Plugin {
                    path: at(),
                    user: ctx.item.user.clone().unwrap_or_default(),
                });
            }
            auth = match (&u.token, &u.token_file, &u.username, &u.password) {
                (Some(t), _, _, _) => Auth::Token(t.clone()),
                (None, Some(f), _, _) => Auth::TokenFile(if f.is_absolute() {
                    f.clone()
                } else {
                    base.join(f)
                }),
                (None, None, Some(n), Some(p)) => Auth::Basic(n.clone(), p.clone()),
                _ => Auth::None,
            };
            let cert = match (&u.client_certificate_data, &u.client_certificate) {
                (Some(d), _) => Some(b64("client-certificate-data", d)?),
                (None, Some(p)) => Some(read_rel(base, p, "client-certificate")?),
                _ => None,
            };
            let key = match (&u.client_key_data, &u.client_key) {
                (Some(d), _) => Some(b64("client-key-data", d)?),
                (None, Some(p)) => Some(read_rel(base, p, "client-key")?),
                _ => None,
            };
            identity = match (cert, key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => return Err(KubeconfigError::HalfIdentity { path: at() }),
            };
        }
        Ok(Self {
            server: cl.item.server.trim_end_matches('/').to_owned(),
            ca_pem,
            insecure: cl.item.insecure_skip_tls_verify,
            identity,
            auth,
            origin: format!("kubeconfig {shown} context {ctx_name:?}"),
        })
    }

    /// As kubectl and client-go look: the given kubeconfig; else the
    /// service account in a pod; else `$KUBECONFIG` (its first file); else
    /// `~/.kube/config`.
    pub fn discover(
        kubeconfig: Option<&Path>,
        context: Option<&str>,
    ) -> Result<Self, KubeconfigError> {
        if let Some(p) = kubeconfig {
            return Self::from_kubeconfig(p, context);
        }
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() && context.is_none() {
            return Self::in_cluster();
        }
        let path = match std::env::var_os("KUBECONFIG") {
            Some(v) => std::env::split_paths(&v).next().unwrap_or_default(),
            None => std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".kube/config"))
                .ok_or(KubeconfigError::NoKubeconfig)?,
        };
        Self::from_kubeconfig(&path, context)
    }

    pub(super) fn client(&self, timeout: Duration) -> Result<reqwest::Client, KubeconfigError> {
        let origin = || self.origin.clone();
        let mut b = reqwest::Client::builder().timeout(timeout);
        if let Some(pem) = &self.ca_pem {
            let cert =
                reqwest::Certificate::from_pem(pem).map_err(|source| KubeconfigError::Ca {
                    origin: origin(),
                    source,
                })?;
            b = b.add_root_certificate(cert);
        }
        if let Some((cert, key)) = &self.identity {
            let id = reqwest::Identity::from_pkcs8_pem(cert, key).map_err(|source| {
                KubeconfigError::Identity {
                    origin: origin(),
                    source,
                }
            })?;
            b = b.identity(id);
        }
        if self.insecure {
            b = b.danger_accept_invalid_certs(true);
        }
        b.build().map_err(|source| KubeconfigError::Client {
            origin: origin(),
            source,
        })
    }
}

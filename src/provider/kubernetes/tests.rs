use super::*;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// What the stand-in saw: method, authority (set when the request came
/// through a proxy, in absolute form), path, headers, body.
type Seen = Arc<Mutex<Vec<(Method, Option<String>, String, HeaderMap, String)>>>;

/// A stand-in API server that checks exactly what the real one expects
/// and answers as it does (Scale and Status shapes from the Kubernetes
/// API reference). Only `checkout` exists; namespace `locked` is
/// forbidden. Any group and version: the scale subresource of any kind.
async fn api_server(token: &'static str) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: String| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push((
                    method.clone(),
                    uri.authority().map(|a| a.to_string()),
                    uri.path().to_owned(),
                    headers.clone(),
                    body.clone(),
                ));
                let status = |code: u16, reason: &str, message: String| {
                    (
                        StatusCode::from_u16(code).unwrap(),
                        serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": message, "reason": reason, "code": code})
                        .to_string(),
                    )
                };
                if headers.get("authorization").and_then(|v| v.to_str().ok())
                    != Some(&format!("Bearer {token}"))
                {
                    return status(401, "Unauthorized", "Unauthorized".into());
                }
                let parts: Vec<&str> = uri.path().split('/').collect();
                // ["", "apis", group, version, "namespaces", ns, resource, name, "scale"]
                if parts.len() != 9 || parts[1] != "apis" || parts[4] != "namespaces" || parts[8] != "scale" {
                    return status(404, "NotFound", "the server could not find the requested resource".into());
                }
                let (group, ns, resource, name) = (parts[2], parts[5], parts[6], parts[7]);
                if method != Method::PATCH {
                    return status(405, "MethodNotAllowed", format!("{method} is not supported"));
                }
                if headers.get("content-type").and_then(|v| v.to_str().ok())
                    != Some("application/merge-patch+json")
                {
                    return status(415, "UnsupportedMediaType", "the body of the request was in an unknown format".into());
                }
                if ns == "locked" {
                    return status(403, "Forbidden", format!("{resource}.{group} \"{name}\" is forbidden: User \"system:serviceaccount:tidewatch:worker\" cannot patch resource \"{resource}/scale\" in API group \"{group}\" in the namespace \"{ns}\""));
                }
                if name != "checkout" {
                    return status(404, "NotFound", format!("{resource}.{group} \"{name}\" not found"));
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

fn target(kubeconfig: &Path, ns: &str, kind: &str, name: &str) -> KubernetesConfig {
    KubernetesConfig {
        namespace: ns.into(),
        kind: kind.into(),
        api_version: None,
        plural: None,
        name: name.into(),
        kubeconfig: Some(kubeconfig.to_owned()),
        context: None,
    }
}

/// A kubeconfig of one cluster (`server`, optionally through `proxy`) and
/// one user given as YAML lines under `user:`.
fn kubeconfig(dir: &Path, server: &str, proxy: Option<&str>, user: &str) -> PathBuf {
    let path = dir.join("config");
    let proxy = proxy.map_or(String::new(), |p| format!("\n    proxy-url: {p}"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}{proxy}\n\
             - name: other\n  cluster:\n    server: http://127.0.0.1:1\n\
             contexts:\n- name: dev\n  context:\n    cluster: local\n    user: worker\n\
             - name: prod\n  context:\n    cluster: other\n    user: worker\n\
             current-context: dev\nusers:\n- name: worker\n  user:\n{user}\n"
        ),
    )
    .unwrap();
    path
}

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn patches_the_scale_subresource_through_a_kubeconfig() {
    let (server, seen) = api_server("kc-token").await;
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path(), &server, None, "    token: kc-token");
    let p = KubernetesProvider::connect(&target(&kc, "shop", "Deployment", "checkout"), TIMEOUT)
        .await
        .unwrap();
    let c = crate::provider::tests::command("checkout", 7);
    assert_eq!(
        p.scale(&c).await.unwrap(),
        Some(7),
        "spec.replicas of the answer"
    );
    let (method, _, path, headers, body) = seen.lock().unwrap()[0].clone();
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

    // StatefulSets and ReplicaSets: their own paths.
    for (kind, plural) in [
        ("StatefulSet", "statefulsets"),
        ("ReplicaSet", "replicasets"),
    ] {
        let p = KubernetesProvider::connect(&target(&kc, "shop", kind, "checkout"), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(p.scale(&c).await.unwrap(), Some(7));
        assert_eq!(
            seen.lock().unwrap().last().unwrap().2,
            format!("/apis/apps/v1/namespaces/shop/{plural}/checkout/scale")
        );
    }

    // Failures: the API server's message, and whether a retry can help.
    let missing = KubernetesProvider::connect(&target(&kc, "shop", "Deployment", "nope"), TIMEOUT)
        .await
        .unwrap();
    let e = missing.scale(&c).await.unwrap_err();
    assert!(
        !e.retryable && e.message.contains("deployments.apps \"nope\" not found"),
        "{e:?}"
    );
    let locked =
        KubernetesProvider::connect(&target(&kc, "locked", "Deployment", "checkout"), TIMEOUT)
            .await
            .unwrap();
    let e = locked.scale(&c).await.unwrap_err();
    assert!(
        !e.retryable && e.message.contains("403") && e.message.contains("RBAC"),
        "{e:?}"
    );

    // Another context of the same file: nothing listens there (retryable);
    // a context that does not exist is named.
    let prod = KubernetesConfig {
        context: Some("prod".into()),
        ..target(&kc, "shop", "Deployment", "checkout")
    };
    let e = KubernetesProvider::connect(&prod, TIMEOUT)
        .await
        .unwrap()
        .scale(&c)
        .await
        .unwrap_err();
    assert!(e.retryable && e.message.contains("127.0.0.1:1"), "{e:?}");
    let staging = KubernetesConfig {
        context: Some("staging".into()),
        ..target(&kc, "shop", "Deployment", "checkout")
    };
    let e = match KubernetesProvider::connect(&staging, TIMEOUT).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an unknown context was accepted"),
    };
    assert!(
        e.contains("staging") && e.contains(kc.to_str().unwrap()),
        "{e}"
    );

    // A wrong token.
    let kc = kubeconfig(dir.path(), &server, None, "    token: stale");
    let p = KubernetesProvider::connect(&target(&kc, "shop", "Deployment", "checkout"), TIMEOUT)
        .await
        .unwrap();
    let e = p.scale(&c).await.unwrap_err();
    assert!(!e.retryable && e.message.contains("401"), "{e:?}");
}

/// A custom resource with a scale subresource (an Argo Rollout), named by
/// `api_version` and `kind`, as KEDA's `scaleTargetRef`; and a plural that
/// Kubernetes' rule would not give.
#[tokio::test]
async fn scales_a_custom_resource() {
    let (server, seen) = api_server("t").await;
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path(), &server, None, "    token: t");
    let rollout = KubernetesConfig {
        api_version: Some("argoproj.io/v1alpha1".into()),
        ..target(&kc, "shop", "Rollout", "checkout")
    };
    let p = KubernetesProvider::connect(&rollout, TIMEOUT)
        .await
        .unwrap();
    let c = crate::provider::tests::command("checkout", 4);
    assert_eq!(p.scale(&c).await.unwrap(), Some(4));
    assert_eq!(
        seen.lock().unwrap()[0].2,
        "/apis/argoproj.io/v1alpha1/namespaces/shop/rollouts/checkout/scale"
    );
    let odd = KubernetesConfig {
        api_version: Some("example.com/v1".into()),
        plural: Some("workerpools".into()),
        ..target(&kc, "shop", "Pool", "checkout")
    };
    let p = KubernetesProvider::connect(&odd, TIMEOUT).await.unwrap();
    assert_eq!(p.scale(&c).await.unwrap(), Some(4));
    assert_eq!(
        seen.lock().unwrap()[1].2,
        "/apis/example.com/v1/namespaces/shop/workerpools/checkout/scale"
    );
    // A kind outside apps/v1 without its api_version is refused by name.
    let e = KubernetesProvider::connect(&target(&kc, "shop", "Rollout", "checkout"), TIMEOUT)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("Rollout") && e.contains("api_version"), "{e}");
}

/// An exec credential plugin, as EKS, GKE and AKS kubeconfigs use: a
/// program that prints an ExecCredential (here a script; the real ones
/// are `aws eks get-token`, `gke-gcloud-auth-plugin`, `kubelogin`).
#[tokio::test]
async fn exec_credential_plugins_give_the_token() {
    let (server, seen) = api_server("from-plugin").await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("get-token");
    std::fs::write(
        &plugin,
        "#!/bin/sh\necho \"$1\" > \"$(dirname \"$0\")/args\"\n\
         printf '{\"apiVersion\":\"client.authentication.k8s.io/v1beta1\",\"kind\":\"ExecCredential\",\"status\":{\"token\":\"from-plugin\"}}'\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let user = format!(
        "    exec:\n      apiVersion: client.authentication.k8s.io/v1beta1\n      command: {}\n      args: [\"--cluster\"]\n      interactiveMode: Never",
        plugin.display()
    );
    let kc = kubeconfig(dir.path(), &server, None, &user);
    let p = KubernetesProvider::connect(&target(&kc, "shop", "Deployment", "checkout"), TIMEOUT)
        .await
        .unwrap();
    let c = crate::provider::tests::command("checkout", 5);
    assert_eq!(p.scale(&c).await.unwrap(), Some(5));
    assert_eq!(
        seen.lock().unwrap()[0].3["authorization"],
        "Bearer from-plugin"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("args"))
            .unwrap()
            .trim(),
        "--cluster"
    );
}

/// A CONNECT proxy, as kube-rs tunnels through `proxy-url`: it records
/// the host asked for and tunnels every connection to `upstream`.
async fn connect_proxy(upstream: String) -> (String, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let asked: Arc<Mutex<Vec<String>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let a = asked.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (a, upstream) = (a.clone(), upstream.clone());
            tokio::spawn(async move {
                let mut client = BufReader::new(client);
                let mut line = String::new();
                client.read_line(&mut line).await.unwrap();
                // CONNECT host:port HTTP/1.1, then headers to the blank line.
                a.lock()
                    .unwrap()
                    .push(line.split_whitespace().nth(1).unwrap_or("").to_owned());
                loop {
                    let mut h = String::new();
                    if client.read_line(&mut h).await.unwrap() <= 2 {
                        break;
                    }
                }
                let mut client = client.into_inner();
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let mut server =
                    tokio::net::TcpStream::connect(upstream.trim_start_matches("http://"))
                        .await
                        .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (format!("http://{addr}"), asked)
}

/// `proxy-url` of a cluster: the connection goes through the proxy, to a
/// server that cannot be reached otherwise.
#[tokio::test]
async fn proxy_url_is_used() {
    let (server, seen) = api_server("t").await;
    let (proxy, asked) = connect_proxy(server).await;
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(
        dir.path(),
        "http://kubernetes.tidewatch.invalid:6443",
        Some(&proxy),
        "    token: t",
    );
    let p = KubernetesProvider::connect(&target(&kc, "shop", "Deployment", "checkout"), TIMEOUT)
        .await
        .unwrap();
    let c = crate::provider::tests::command("checkout", 6);
    assert_eq!(p.scale(&c).await.unwrap(), Some(6));
    assert_eq!(
        asked.lock().unwrap()[0],
        "kubernetes.tidewatch.invalid:6443"
    );
    assert_eq!(
        seen.lock().unwrap()[0].2,
        "/apis/apps/v1/namespaces/shop/deployments/checkout/scale"
    );
}

/// A token file (`tokenFile`), as an external tool rotates it. (kube-rs
/// takes the file's bytes as they are: a trailing newline makes the
/// header invalid, so the file is written as kubelet writes tokens.)
#[tokio::test]
async fn token_files_are_read() {
    let (server, seen) = api_server("from-file").await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "from-file").unwrap();
    let kc = kubeconfig(
        dir.path(),
        &server,
        None,
        &format!("    tokenFile: {}", token.display()),
    );
    let p = KubernetesProvider::connect(&target(&kc, "shop", "Deployment", "checkout"), TIMEOUT)
        .await
        .unwrap();
    let c = crate::provider::tests::command("checkout", 2);
    assert_eq!(p.scale(&c).await.unwrap(), Some(2));
    assert_eq!(
        seen.lock().unwrap()[0].3["authorization"],
        "Bearer from-file"
    );
}

/// Runs `openssl` in `dir`; fails the test with its message.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate for `key` signed by the test CA, with `san` as its name.
fn signed(dir: &Path, key: &str, cn: &str, san: Option<&str>) -> String {
    let (csr, crt) = (format!("{key}.csr"), format!("{key}.crt"));
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    let mut args = vec![
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        &crt,
        "-days",
        "1",
    ];
    let ext = format!("{key}.ext");
    if let Some(san) = san {
        std::fs::write(dir.join(&ext), format!("subjectAltName=DNS:{san}\n")).unwrap();
        args.extend(["-extfile", &ext]);
    }
    openssl(dir, &args);
    crt
}

/// A stand-in API server over mutual TLS, as a real one is: its
/// certificate names `kubernetes.internal` (not 127.0.0.1, so only
/// `tls-server-name` makes it verify), and it requires a client
/// certificate from the test CA. It answers one Scale per connection and
/// records the client certificate's common name. Blocking, on a thread.
fn mtls_api_server(dir: &Path) -> (u16, Arc<Mutex<Vec<String>>>) {
    use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod, SslVerifyMode};
    use std::io::{Read, Write};
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    b.set_private_key_file(dir.join("server.key"), SslFiletype::PEM)
        .unwrap();
    b.set_certificate_chain_file(dir.join("server.key.crt"))
        .unwrap();
    b.set_ca_file(dir.join("ca.crt")).unwrap();
    b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    let acceptor = b.build();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let clients: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = clients.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let Ok(mut tls) = acceptor.accept(stream) else {
                continue;
            };
            let cn = tls
                .ssl()
                .peer_certificate()
                .and_then(|c| {
                    c.subject_name()
                        .entries()
                        .next()
                        .and_then(|e| e.data().to_string().ok())
                })
                .unwrap_or_default();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            let body = loop {
                let Ok(n) = tls.read(&mut buf) else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + len {
                        break Some(text[end + 4..end + 4 + len].to_owned());
                    }
                }
            };
            let Some(body) = body else { continue };
            seen.lock().unwrap().push(cn);
            let n = serde_json::from_str::<serde_json::Value>(&body).unwrap()["spec"]["replicas"]
                .as_u64()
                .unwrap();
            let answer = serde_json::json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {"name": "checkout", "namespace": "shop"},
                "spec": {"replicas": n}, "status": {"replicas": 1}})
            .to_string();
            let _ = write!(
                tls,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
            let _ = tls.shutdown();
        }
    });
    (port, clients)
}

/// Client certificates with a PKCS#1 RSA key and with an EC key (the old
/// client took PKCS#8 only and refused both), against a mutual-TLS
/// stand-in whose certificate only `tls-server-name` makes valid.
#[tokio::test]
async fn client_keys_of_any_type_and_tls_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
        ],
    );
    openssl(d, &["genrsa", "-out", "server.key", "2048"]);
    signed(
        d,
        "server.key",
        "kubernetes.internal",
        Some("kubernetes.internal"),
    );
    openssl(d, &["genrsa", "-traditional", "-out", "rsa.key", "2048"]);
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ec.key",
        ],
    );
    let (port, clients) = mtls_api_server(d);
    let c = crate::provider::tests::command("checkout", 9);
    for (key, header, cn) in [
        ("rsa.key", "BEGIN RSA PRIVATE KEY", "worker-rsa"),
        ("ec.key", "BEGIN EC PRIVATE KEY", "worker-ec"),
    ] {
        let pem = std::fs::read_to_string(d.join(key)).unwrap();
        assert!(pem.contains(header), "{key}: {pem}");
        let crt = signed(d, key, cn, None);
        let cluster = format!(
            "https://127.0.0.1:{port}\n    certificate-authority: {}\n    tls-server-name: kubernetes.internal",
            d.join("ca.crt").display()
        );
        let user = format!(
            "    client-certificate: {}\n    client-key: {}",
            d.join(&crt).display(),
            d.join(key).display()
        );
        let kc = kubeconfig(d, &cluster, None, &user);
        let p =
            KubernetesProvider::connect(&target(&kc, "shop", "Deployment", "checkout"), TIMEOUT)
                .await
                .unwrap();
        assert_eq!(p.scale(&c).await.unwrap(), Some(9), "{key}");
        assert_eq!(clients.lock().unwrap().last().map(String::as_str), Some(cn));
    }
    // Without tls-server-name the server's name does not match 127.0.0.1.
    let crt = signed(d, "ec.key", "worker-ec", None);
    let cluster = format!(
        "https://127.0.0.1:{port}\n    certificate-authority: {}",
        d.join("ca.crt").display()
    );
    let user = format!(
        "    client-certificate: {}\n    client-key: {}",
        d.join(&crt).display(),
        d.join("ec.key").display()
    );
    let kc = kubeconfig(d, &cluster, None, &user);
    let p = KubernetesProvider::connect(&target(&kc, "shop", "Deployment", "checkout"), TIMEOUT)
        .await
        .unwrap();
    assert!(p.scale(&c).await.unwrap_err().retryable);
}

#[tokio::test]
async fn missing_credentials_fail_commands_until_they_appear() {
    let (server, _) = api_server("late-token").await;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("config");
    let cfg = target(&kc, "shop", "Deployment", "checkout");
    let p = Deferred::new(&cfg, TIMEOUT).unwrap();
    let c = crate::provider::tests::command("checkout", 3);
    let e = p.scale(&c).await.unwrap_err();
    assert!(
        !e.retryable && e.message.contains(kc.to_str().unwrap()),
        "{e:?}"
    );
    kubeconfig(dir.path(), &server, None, "    token: late-token");
    assert_eq!(p.scale(&c).await.unwrap(), Some(3));
}

#[test]
fn names_and_kinds_are_checked() {
    assert!(check_name("namespace", "shop").is_ok());
    assert!(check_name("name", "Shop").is_err());
    assert!(check_name("name", "a/../b").is_err());
    let cfg = |kind: &str, api: Option<&str>| KubernetesConfig {
        api_version: api.map(str::to_owned),
        ..target(Path::new("/k"), "shop", kind, "web")
    };
    assert!(cfg("Deployment", None).resource().is_ok());
    assert_eq!(
        cfg("ReplicaSet", None).resource().unwrap().plural,
        "replicasets"
    );
    assert!(cfg("deployment", None).resource().is_err());
    assert!(cfg("Rollout", Some("a/b/c")).resource().is_err());
    let mut out = Vec::new();
    cfg("Rollout", None).check(&|k| format!("targets[0].{k}"), &mut out);
    assert!(
        out.iter().any(|p| p.key == "targets[0].kubernetes.kind"),
        "{out:?}"
    );
}

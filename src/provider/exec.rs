//! The `exec` provider: runs a configured argv, never through a shell.
//! Placeholders are whole arguments only (`{replicas}`, `{target}`), so
//! event data reaches the command line only as the integer replica count
//! and the configured target name. Timeout, exit status and stderr go
//! into the error.

use serde::Deserialize;
use std::time::Duration;

use super::{Provider, ProviderError, ProviderFuture, ScaleCommand};

/// The placeholders a template may use, each as a whole argument.
pub const PLACEHOLDERS: [&str; 2] = ["{replicas}", "{target}"];

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// argv; `{replicas}` and `{target}` as whole arguments.
    pub command: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ExecProvider {
    argv: Vec<String>,
    timeout: Duration,
}

/// What is wrong with a configured command line; names the argument.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandLineError {
    #[error("the command is empty")]
    Empty,
    #[error("argument {index} {arg:?}: {placeholder} must be a whole argument (write it as its own element)")]
    NotWhole {
        index: usize,
        arg: String,
        placeholder: String,
    },
    #[error("argument {index} {arg:?}: {placeholder} is not a placeholder tidewatch knows; use {PLACEHOLDERS:?}, each as a whole argument")]
    Unknown {
        index: usize,
        arg: String,
        placeholder: String,
    },
    #[error(
        "argument {index} {arg:?}: the only placeholder is \"{{target}}\", as a whole argument"
    )]
    OnlyTarget { index: usize, arg: String },
}

/// Checks a template: not empty, and every `{...}` is a known placeholder
/// standing as a whole argument. The error names the offending argument.
pub fn check_template(argv: &[String]) -> Result<(), CommandLineError> {
    if argv.is_empty() {
        return Err(CommandLineError::Empty);
    }
    for (i, a) in argv.iter().enumerate() {
        if PLACEHOLDERS.contains(&a.as_str()) {
            continue;
        }
        if let Some(p) = placeholder_in(a) {
            let (index, arg, placeholder) = (i, a.clone(), p.to_owned());
            if PLACEHOLDERS.contains(&p) {
                return Err(CommandLineError::NotWhole {
                    index,
                    arg,
                    placeholder,
                });
            }
            return Err(CommandLineError::Unknown {
                index,
                arg,
                placeholder,
            });
        }
    }
    Ok(())
}

/// The first `{name}` (letters, digits, `_`) in `a`: other braces, as in
/// JSON or shell text, are literal.
pub fn placeholder_in(a: &str) -> Option<&str> {
    let mut rest = a;
    while let Some(start) = rest.find('{') {
        let tail = &rest[start + 1..];
        if let Some(end) = tail.find('}') {
            let name = &tail[..end];
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Some(&rest[start..start + end + 2]);
            }
        }
        rest = tail;
    }
    None
}

impl ExecProvider {
    pub fn new(argv: Vec<String>, timeout: Duration) -> Result<Self, CommandLineError> {
        check_template(&argv)?;
        Ok(Self { argv, timeout })
    }

    /// The argv for one call.
    pub fn render(&self, c: &ScaleCommand) -> Vec<String> {
        self.argv
            .iter()
            .map(|a| match a.as_str() {
                "{replicas}" => c.desired_replicas.to_string(),
                "{target}" => c.target.clone(),
                _ => a.clone(),
            })
            .collect()
    }
}

impl Provider for ExecProvider {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn scale<'a>(&'a self, c: &'a ScaleCommand) -> ProviderFuture<'a> {
        Box::pin(async move {
            let argv = self.render(c);
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                // Its own process group, so a timeout ends its children too.
                .process_group(0)
                .kill_on_drop(true);
            #[cfg(target_os = "linux")]
            #[allow(unsafe_code)]
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                // A worker killed with -9 takes its in-flight command with it:
                // an older command must not finish after a newer one.
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let mut child = cmd.spawn().map_err(|e| ProviderError {
                message: format!("exec {:?}: cannot start: {e}", argv[0]),
                retryable: false,
            })?;
            let group = child.id();
            let stderr = tokio::spawn(read_bounded(child.stderr.take()));
            let status = match tokio::time::timeout(self.timeout, child.wait()).await {
                Ok(r) => r.map_err(|e| ProviderError {
                    message: format!("exec {:?}: {e}", argv[0]),
                    retryable: true,
                })?,
                Err(_) => {
                    kill_group(group);
                    let _ = child.wait().await;
                    return Err(ProviderError {
                        message: format!(
                            "exec {:?}: no exit within {:?}; killed with its process group",
                            argv[0], self.timeout
                        ),
                        retryable: true,
                    });
                }
            };
            if status.success() {
                Ok(None)
            } else {
                let stderr = stderr.await.unwrap_or_default();
                let stderr = String::from_utf8_lossy(&stderr);
                let stderr: String = stderr.trim().chars().take(2000).collect();
                Err(ProviderError {
                    message: format!("exec {:?}: {status}: {stderr}", argv[0]),
                    retryable: true,
                })
            }
        })
    }
}

/// What a command's stderr said, at most [`MAX_STDERR`] bytes; the rest
/// is read and dropped, so a chatty command neither blocks on a full pipe
/// nor fills the worker's memory.
async fn read_bounded(pipe: Option<tokio::process::ChildStderr>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = MAX_STDERR.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

/// Stderr kept for the error message.
pub const MAX_STDERR: usize = 64 << 10;

fn kill_group(group: Option<u32>) {
    if let Some(pid) = group {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on the process group the child leads.
        unsafe {
            libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn templates_take_whole_argument_placeholders_only() {
        assert!(check_template(&argv(&[
            "kubectl",
            "scale",
            "deployment/web",
            "--replicas",
            "{replicas}"
        ]))
        .is_ok());
        let e = check_template(&argv(&["kubectl", "--replicas={replicas}"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("argument 1") && e.contains("--replicas={replicas}"),
            "{e}"
        );
        let e = check_template(&argv(&["echo", "{namespace}"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("{namespace}") && e.contains("not a placeholder"),
            "{e}"
        );
        // Braces that are not placeholders (JSON, shell) are literal.
        assert!(check_template(&argv(&["curl", "-d", "{\"a\": 1}", "{replicas}"])).is_ok());
        assert!(check_template(&argv(&["sh", "-c", "f() { :; }; f"])).is_ok());
        assert!(check_template(&[]).is_err());
        let p = ExecProvider::new(
            argv(&["scale", "{target}", "{replicas}"]),
            Duration::from_secs(1),
        )
        .unwrap();
        let s = crate::provider::tests::command("web", 7);
        assert_eq!(p.render(&s), argv(&["scale", "web", "7"]));
    }

    #[tokio::test]
    async fn runs_real_commands_with_status_stderr_and_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let s = crate::provider::tests::command("web", 4);
        // The replica count arrives as one argument, with no shell between.
        let ok = ExecProvider::new(
            argv(&[
                "/bin/sh",
                "-c",
                "printf '%s %s' \"$1\" \"$2\" > \"$0\"",
                out.to_str().unwrap(),
                "{target}",
                "{replicas}",
            ]),
            Duration::from_secs(5),
        );
        // `-c` script text has no placeholder; arguments after it are positional.
        let ok = ok.unwrap();
        ok.scale(&s).await.unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "web 4");

        let fails = ExecProvider::new(
            argv(&["/bin/sh", "-c", "echo no such deployment >&2; exit 3"]),
            Duration::from_secs(5),
        )
        .unwrap();
        let e = fails.scale(&s).await.unwrap_err();
        assert!(
            e.message.contains("exit status: 3") && e.message.contains("no such deployment"),
            "{e:?}"
        );

        let hangs = ExecProvider::new(argv(&["sleep", "30"]), Duration::from_millis(200)).unwrap();
        let t = std::time::Instant::now();
        let e = hangs.scale(&s).await.unwrap_err();
        assert!(e.message.contains("killed") && e.retryable, "{e:?}");
        assert!(t.elapsed() < Duration::from_secs(5));

        let missing =
            ExecProvider::new(argv(&["/no/such/binary"]), Duration::from_secs(1)).unwrap();
        let e = missing.scale(&s).await.unwrap_err();
        assert!(
            !e.retryable && e.message.contains("/no/such/binary"),
            "{e:?}"
        );
    }

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|st| st.rsplit(") ").next().map(|r| !r.starts_with('Z')))
            .unwrap_or(false)
    }

    /// Issue 16, finding 6: a timeout killed `sh` and left its children
    /// running. The whole process group goes now.
    #[tokio::test]
    async fn a_timeout_ends_the_command_and_everything_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let script = format!(
            "for i in 1 2 3 4 5; do sleep 300 & echo $! >> {}; done; wait",
            pids.display()
        );
        let p = ExecProvider::new(
            argv(&["/bin/sh", "-c", &script]),
            Duration::from_millis(500),
        )
        .unwrap();
        let e = p
            .scale(&crate::provider::tests::command("web", 1))
            .await
            .unwrap_err();
        assert!(e.retryable && e.message.contains("killed"), "{e:?}");
        let started: Vec<u32> = std::fs::read_to_string(&pids)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        assert_eq!(started.len(), 5);
        for _ in 0..50 {
            if started.iter().all(|&p| !alive(p)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left: Vec<u32> = started.into_iter().filter(|&p| alive(p)).collect();
        assert!(left.is_empty(), "still running: {left:?}");
    }

    /// A command that writes without end to stderr: the worker keeps the
    /// first 64 KiB, and the failure still names its status.
    #[tokio::test]
    async fn a_flood_on_stderr_is_bounded() {
        let p = ExecProvider::new(
            argv(&["/bin/sh", "-c", "head -c 50000000 /dev/zero >&2; exit 4"]),
            Duration::from_secs(20),
        )
        .unwrap();
        let e = p
            .scale(&crate::provider::tests::command("web", 1))
            .await
            .unwrap_err();
        assert!(
            e.message.contains("exit status: 4"),
            "{}",
            &e.message[..200.min(e.message.len())]
        );
        assert!(e.message.len() < 10_000);
    }
}

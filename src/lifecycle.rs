//! Starting and stopping a long-running component (the scaler, the
//! worker, loadgen): why a start failed, the exit status that says so,
//! and the shutdown signal.

/// EX_USAGE (sysexits.h): a bad command line or configuration.
pub const EX_USAGE: u8 = 64;
/// EX_UNAVAILABLE: a service the component needs cannot be reached.
pub const EX_UNAVAILABLE: u8 = 69;

/// Why a component could not start or stopped with an error, sorted by
/// what the operator should do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The configuration or command line is wrong: fix it (exit 64).
    #[error("{0}")]
    Usage(String),
    /// A broker or platform cannot be reached: retry later (exit 69).
    #[error("{0}")]
    Unavailable(String),
    /// A fault while starting or running (exit 1).
    #[error("{0}")]
    Fault(String),
}

impl StartError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Usage(_) => EX_USAGE,
            StartError::Unavailable(_) => EX_UNAVAILABLE,
            StartError::Fault(_) => 1,
        }
    }

    /// A usage error from anything that displays.
    pub fn usage(e: impl std::fmt::Display) -> Self {
        StartError::Usage(e.to_string())
    }

    /// The same error with `prefix: ` before its message.
    pub fn context(self, prefix: &str) -> Self {
        match self {
            StartError::Usage(m) => StartError::Usage(format!("{prefix}: {m}")),
            StartError::Unavailable(m) => StartError::Unavailable(format!("{prefix}: {m}")),
            StartError::Fault(m) => StartError::Fault(format!("{prefix}: {m}")),
        }
    }

    /// A fault from anything that displays.
    pub fn fault(e: impl std::fmt::Display) -> Self {
        StartError::Fault(e.to_string())
    }
}

impl From<crate::broker::amqp::ConnectError> for StartError {
    /// Settings that cannot work are usage errors; a broker that refuses
    /// or lacks what is needed is a fault; one that does not answer is
    /// unavailable.
    fn from(e: crate::broker::amqp::ConnectError) -> Self {
        use crate::broker::amqp::ConnectError::*;
        match e {
            Settings(m) => StartError::Usage(m),
            Unreachable(m) => StartError::Unavailable(m),
            Refused(m) | Topology(m) => StartError::Fault(m),
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
}

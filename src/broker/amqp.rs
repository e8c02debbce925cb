//! RabbitMQ connection settings shared by the source, the probes and the
//! command transport: the URL by secret reference (it carries the
//! credentials), an optional CA file for AMQPS, one connect function on
//! tokio, errors that name the setting and never print the password, and
//! the wait between reconnection attempts.

use std::path::PathBuf;
use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::watch;

use crate::secret::SecretRef;
use crate::settings::{problem, Problem};

/// Where a connection's settings came from, for error messages.
#[derive(Debug, Clone, Default)]
pub struct AmqpSettings {
    /// The configuration key of the URL, e.g. `source.amqp.url`.
    pub key: String,
    pub url: SecretRef,
    /// PEM file of the CA (chain) that signed the broker's certificate, for
    /// `amqps://` URLs; without it the system's trust store is used.
    pub tls_ca_file: Option<PathBuf>,
}

/// Why a connection could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The settings themselves are wrong (unset secret, malformed URL,
    /// unreadable CA file): retrying cannot help.
    #[error("{0}")]
    Settings(String),
    /// The broker refused the credentials or the virtual host.
    #[error("{0}")]
    Refused(String),
    /// Nothing answered, or the connection broke during the handshake.
    #[error("{0}")]
    Unreachable(String),
    /// An exchange or queue is missing (and declaring is off), or exists
    /// with other properties, or may not be used by this user.
    #[error("{0}")]
    Topology(String),
}

impl ConnectError {
    /// Whether retrying can help without an operator: at start, only an
    /// unreachable broker is waited for; once running, every kind is
    /// retried (a restarting broker refuses logins for a moment).
    pub fn retryable(&self) -> bool {
        matches!(self, ConnectError::Unreachable(_))
    }
}

/// Declares a durable topic exchange, or (`declare` false) checks that it
/// exists. `key` names the setting in errors.
pub async fn exchange(
    ch: &Channel,
    name: &str,
    key: &str,
    declare: bool,
) -> Result<(), ConnectError> {
    let opts = ExchangeDeclareOptions {
        passive: !declare,
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    ch.exchange_declare(name, ExchangeKind::Topic, opts, FieldTable::default())
        .await
        .map_err(|e| topology_error("exchange", name, key, declare, &e))
}

/// Bindings declared at once on one channel.
pub const BIND_IN_FLIGHT: usize = 512;

/// Declares a durable queue (or checks that it exists) and binds it to
/// `exchange` with each binding key. Returns its message and consumer counts.
pub async fn queue(
    ch: &Channel,
    name: &str,
    key: &str,
    declare: bool,
    bind: Option<(&str, &[String])>,
) -> Result<(u32, u32), ConnectError> {
    let counts = queue_with(ch, name, key, declare, FieldTable::default()).await?;
    if let (true, Some((exchange, keys))) = (declare, bind) {
        bind_keys(ch, name, exchange, keys, key).await?;
    }
    Ok(counts)
}

/// Declares a durable queue with `args` (or checks that it exists).
/// Returns its message and consumer counts.
pub async fn queue_with(
    ch: &Channel,
    name: &str,
    key: &str,
    declare: bool,
    args: FieldTable,
) -> Result<(u32, u32), ConnectError> {
    let opts = QueueDeclareOptions {
        passive: !declare,
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let q = ch
        .queue_declare(name, opts, args)
        .await
        .map_err(|e| topology_error("queue", name, key, declare, &e))?;
    Ok((q.message_count(), q.consumer_count()))
}

/// Declares an exclusive, auto-deleted queue (`name`, or a server-named
/// one when empty) bound to `exchange` with `#`: every message, for this
/// connection alone. Returns its name.
pub async fn exclusive_catch_all(
    ch: &Channel,
    name: &str,
    exchange: &str,
) -> Result<String, lapin::Error> {
    let q = ch
        .queue_declare(
            name,
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let name = q.name().as_str().to_owned();
    ch.queue_bind(
        &name,
        exchange,
        "#",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(name)
}

/// Binds queue `name` to `exchange` with each of `keys`, pipelined: up to
/// BIND_IN_FLIGHT bindings wait for their reply at once on the channel,
/// instead of one round trip each (one binding per target is thousands of
/// them).
pub async fn bind_keys(
    ch: &Channel,
    name: &str,
    exchange: &str,
    keys: &[String],
    key: &str,
) -> Result<(), ConnectError> {
    for chunk in keys.chunks(BIND_IN_FLIGHT) {
        futures::future::try_join_all(chunk.iter().map(|k| {
            ch.queue_bind(
                name,
                exchange,
                k,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
        }))
        .await
        .map_err(|e| topology_error("binding of queue", name, key, true, &e))?;
    }
    Ok(())
}

/// Whether queue `name` exists, asked on a channel of its own (a passive
/// declare of a missing queue closes its channel).
pub async fn queue_exists(conn: &Connection, name: &str) -> Result<bool, lapin::Error> {
    let ch = conn.create_channel().await?;
    let opts = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match ch.queue_declare(name, opts, FieldTable::default()).await {
        Ok(_) => {
            let _ = ch.close(200, "checked").await;
            Ok(true)
        }
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The dead-letter exchange and, when declaring, a durable queue of the
/// same name bound with `#`, so that no dead letter is dropped for want
/// of a binding.
pub async fn deadletter_topology(
    ch: &Channel,
    exchange_name: &str,
    key: &str,
    declare: bool,
) -> Result<(), ConnectError> {
    exchange(ch, exchange_name, key, declare).await?;
    if declare {
        let keys = ["#".to_string()];
        queue(ch, exchange_name, key, true, Some((exchange_name, &keys))).await?;
    }
    Ok(())
}

/// Sets the prefetch and consumes `queue_name` with acks by the caller;
/// `key` names the queue's setting in errors, `lost` makes a channel
/// error into a connect error.
pub async fn consume(
    ch: &Channel,
    queue_name: &str,
    key: &str,
    prefetch: u16,
    tag: &str,
    lost: impl Fn(lapin::Error) -> ConnectError,
) -> Result<lapin::Consumer, ConnectError> {
    ch.basic_qos(prefetch, lapin::options::BasicQosOptions::default())
        .await
        .map_err(&lost)?;
    ch.basic_consume(
        queue_name,
        &format!("{tag}-{}", super::unique_suffix()),
        lapin::options::BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| ConnectError::Topology(format!("{key} {queue_name:?}: cannot consume: {e}")))
}

/// A channel in publisher-confirm mode.
pub async fn confirm_channel(
    conn: &Connection,
    lost: impl Fn(lapin::Error) -> ConnectError,
) -> Result<Channel, ConnectError> {
    let ch = conn.create_channel().await.map_err(&lost)?;
    ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .map_err(&lost)?;
    Ok(ch)
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 404)
}

fn topology_error(
    what: &str,
    name: &str,
    key: &str,
    declare: bool,
    e: &lapin::Error,
) -> ConnectError {
    let code = match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => p.get_id(),
        _ => 0,
    };
    let declare_key = format!("{}.declare", key.rsplit_once('.').map_or(key, |(p, _)| p));
    match code {
        404 if !declare => ConnectError::Topology(format!(
            "{key}: {what} {name:?} does not exist on the broker and {declare_key} is false; \
             create it, or set {declare_key} = true"
        )),
        404 => ConnectError::Topology(format!("{key}: {what} {name:?}: {e}")),
        406 => ConnectError::Topology(format!(
            "{key}: {what} {name:?} exists with other properties than tidewatch declares \
             (durable, topic exchange; slot queues single-active-consumer): {e}"
        )),
        403 => ConnectError::Topology(format!(
            "{key}: {what} {name:?}: this user may not use it: {e}"
        )),
        _ => ConnectError::Unreachable(format!("{key}: {what} {name:?}: {e}")),
    }
}

impl AmqpSettings {
    /// The URL, resolved from its secret reference.
    pub fn resolve_url(&self) -> Result<String, ConnectError> {
        match self.url.resolve(&self.key) {
            Ok(Some(u)) => Ok(u),
            Ok(None) => Err(ConnectError::Settings(format!(
                "{}: give `url`, `url_env` or `url_file`",
                self.key
            ))),
            Err(e) => Err(ConnectError::Settings(e.to_string())),
        }
    }

    /// The URL with its password replaced by `***`, for messages.
    pub fn shown_url(&self) -> String {
        self.resolve_url()
            .map(|u| redact(&u))
            .unwrap_or_else(|_| "(unresolved)".into())
    }

    /// Connects on the current tokio runtime. `name` shows in RabbitMQ's
    /// management UI as the connection name.
    pub async fn connect(&self, name: &str) -> Result<Connection, ConnectError> {
        let url = self.resolve_url()?;
        let shown = redact(&url);
        let tls = match &self.tls_ca_file {
            Some(path) => OwnedTLSConfig {
                identity: None,
                cert_chain: Some(std::fs::read_to_string(path).map_err(|e| {
                    ConnectError::Settings(format!(
                        "{}.tls_ca_file {}: {e}",
                        self.key.trim_end_matches(".url"),
                        path.display()
                    ))
                })?),
            },
            None => OwnedTLSConfig::default(),
        };
        let props = ConnectionProperties::default()
            .with_connection_name(format!("tidewatch {name}").into())
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio::current());
        let connect = Connection::connect_with_config(&url, props, tls);
        let conn = match tokio::time::timeout(Duration::from_secs(15), connect).await {
            Ok(r) => r,
            Err(_) => {
                return Err(ConnectError::Unreachable(format!(
                    "{} {shown}: no answer within 15s",
                    self.key
                )))
            }
        };
        conn.map_err(|e| classify(&self.key, &shown, &e))
    }
}

impl AmqpSettings {
    /// Checks that the URL is given, once, and readable here.
    pub fn check(&self, out: &mut Vec<Problem>) {
        if !self.url.is_set() {
            out.push(problem(&self.key, "give `url`, `url_env` or `url_file`"));
        }
        self.url.check(&self.key, out);
    }
}

/// Publishes with a publisher confirm (on a channel in confirm mode) and
/// `mandatory`. Ok(true): confirmed and routed to a queue; Ok(false):
/// nacked, or returned because no queue is bound for it; Err: the channel
/// or connection is gone.
pub async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    props: BasicProperties,
) -> Result<bool, lapin::Error> {
    publish_with_confirm(ch, exchange, routing_key, payload, props, true).await
}

/// As [`publish_confirmed`]; without `mandatory`, a message no queue is
/// bound for counts as delivered (RabbitMQ drops it), as for results that
/// no scaler listens to.
pub async fn publish_with_confirm(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    props: BasicProperties,
    mandatory: bool,
) -> Result<bool, lapin::Error> {
    let opts = BasicPublishOptions {
        mandatory,
        ..BasicPublishOptions::default()
    };
    let confirm = ch
        .basic_publish(exchange, routing_key, opts, payload, props)
        .await?
        .await?;
    Ok(confirm.is_ack() && confirm.take_message().is_none())
}

/// Properties of what tidewatch publishes: JSON, persistent.
pub fn persistent_json() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

/// Sorts a connect error into settings, refused and unreachable, with a
/// message that names the setting.
fn classify(key: &str, shown: &str, e: &lapin::Error) -> ConnectError {
    use lapin::ErrorKind;
    let text = e.to_string();
    match e.kind() {
        ErrorKind::ProtocolError(p) => {
            let code = p.get_id();
            if code == 403 || code == 530 || text.contains("ACCESS_REFUSED") {
                ConnectError::Refused(format!(
                    "{key} {shown}: the broker refused the credentials or the virtual host ({text})"
                ))
            } else {
                ConnectError::Unreachable(format!("{key} {shown}: {text}"))
            }
        }
        ErrorKind::IOError(_) if text.contains("certificate") => {
            // Retrying cannot make an untrusted certificate trusted.
            let ca_key = format!("{}.tls_ca_file", key.trim_end_matches(".url"));
            ConnectError::Settings(format!(
                "{key} {shown}: the broker's TLS certificate is not trusted; give the CA that \
                 signed it in {ca_key} ({text})"
            ))
        }
        ErrorKind::IOError(io) => {
            let hint = match io.kind() {
                std::io::ErrorKind::ConnectionRefused => " (is RabbitMQ running there?)",
                _ => "",
            };
            ConnectError::Unreachable(format!("{key} {shown}: {text}{hint}"))
        }
        ErrorKind::InvalidConnectionState(_) => {
            // RabbitMQ closes the socket on a failed login (AMQP 0-9-1
            // allows no error reply before the connection is open).
            ConnectError::Refused(format!(
                "{key} {shown}: the broker closed the connection during the handshake; \
                 check the user, password and virtual host ({text})"
            ))
        }
        _ if text.contains("invalid") || text.contains("URI") || text.contains("uri") => {
            ConnectError::Settings(format!("{key} {shown}: {text}"))
        }
        _ => ConnectError::Unreachable(format!("{key} {shown}: {text}")),
    }
}

/// `amqp://user:secret@host/vh` -> `amqp://user:***@host/vh`.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!(
                "{}{masked}{}",
                &url[..scheme_end + 3],
                &url[scheme_end + 3 + at..]
            )
        }
        None => url.to_owned(),
    }
}

/// Sleeps for the next backoff interval; false when `stop` turned true
/// meanwhile.
pub async fn wait_or_stop(
    backoff: &mut crate::retry::Backoff,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    sleep_or_stop(backoff.next_wait(), stop).await
}

/// Sleeps `wait`; false when `stop` turned true meanwhile.
pub async fn sleep_or_stop(wait: std::time::Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// How a component waits between connection attempts: `stop` for most
/// (false when it turned true), the command publisher's intake for the
/// publisher (it keeps taking commands in).
pub trait Pause {
    fn pause(
        &mut self,
        wait: std::time::Duration,
    ) -> impl std::future::Future<Output = bool> + Send;
}

impl Pause for watch::Receiver<bool> {
    fn pause(
        &mut self,
        wait: std::time::Duration,
    ) -> impl std::future::Future<Output = bool> + Send {
        sleep_or_stop(wait, self)
    }
}

/// The one connect-with-retry of every AMQP component: `open` until it
/// succeeds, logging each failure under the setting that names the broker,
/// pausing each backoff interval (`None` when the pause says stop). The
/// backoff is reset on success.
pub async fn connect_with_retry<S, E, F, Fut>(
    setting: &'static str,
    what: &str,
    backoff: &mut crate::retry::Backoff,
    mut open: F,
    pause: &mut impl Pause,
) -> Option<S>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<S, E>>,
{
    loop {
        match open().await {
            Ok(s) => {
                backoff.reset();
                return Some(s);
            }
            Err(e) => {
                let wait = backoff.next_wait();
                tracing::warn!(setting, "{what} cannot connect, retrying in {wait:?}: {e}");
                if !pause.pause(wait).await {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("amqp://guest:s3cret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact("amqps://u:p@ss@h/vh?heartbeat=5"),
            "amqps://u:***@h/vh?heartbeat=5"
        );
        assert_eq!(redact("amqp://user@h"), "amqp://user@h");
        assert_eq!(redact("amqp://h:5672"), "amqp://h:5672");
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn unset_url_names_the_setting() {
        let s = AmqpSettings {
            key: "source.amqp.url".into(),
            url: SecretRef {
                env: Some("TIDEWATCH_TEST_NO_SUCH_AMQP_VAR".into()),
                ..SecretRef::default()
            },
            tls_ca_file: None,
        };
        let e = s.resolve_url().unwrap_err();
        assert!(!e.retryable());
        let e = e.to_string();
        assert!(
            e.contains("source.amqp.url_env") && e.contains("TIDEWATCH_TEST_NO_SUCH_AMQP_VAR"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn unreachable_host_is_retryable_and_named() {
        // A port nothing listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = AmqpSettings {
            key: "commands.amqp.url".into(),
            url: SecretRef {
                literal: Some(format!("amqp://guest:topsecret@127.0.0.1:{port}/%2f")),
                ..SecretRef::default()
            },
            tls_ca_file: None,
        };
        let e = s.connect("test").await.unwrap_err();
        assert!(e.retryable(), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("commands.amqp.url"), "{text}");
        assert!(text.contains(&port.to_string()), "{text}");
        assert!(!text.contains("topsecret"), "{text}");
    }
}

//! Email delivery over SMTP with lettre (tokio, rustls): `tls = "starttls" | "tls" | "none"`,
//! AUTH with a password read at send time from `password_file` or `password_env`, several
//! recipients, `Date` and `Message-ID` headers, a plain-text body.
//!
//! Called by outbox deliveries and `alert-test`. Every SMTP error is retried (a wrong password
//! can be fixed without losing the alert); only an unusable address is permanent. The password
//! never appears in an error.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::DeliveryError;
use super::message::Alert;
use crate::config::{EmailChannel, SecretSource, TlsMode};

/// Bound on each SMTP command.
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);

/// Send `alert` to every recipient of `ch`.
pub async fn send(ch: &EmailChannel, alert: &Alert) -> Result<(), DeliveryError> {
    let message = build(ch, alert)?;
    let mut builder = match ch.tls {
        TlsMode::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&ch.server),
        TlsMode::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&ch.server),
        TlsMode::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
            &ch.server,
        )),
    }
    .map_err(|e| DeliveryError::retry(format!("SMTP TLS setup for {}: {}", ch.server, chain(&e))))?
    .port(ch.port)
    .timeout(Some(SMTP_TIMEOUT));
    if let Some(source) = &ch.password {
        let user = ch.username.clone().unwrap_or_else(|| ch.from.clone());
        builder = builder.credentials(Credentials::new(user, read_password(source)?));
    }
    let transport = builder.build();
    transport.send(message).await.map(|_| ()).map_err(|e| {
        DeliveryError::retry(format!(
            "SMTP {}:{} ({:?}): {}",
            ch.server,
            ch.port,
            ch.tls,
            chain(&e)
        ))
    })
}

fn build(ch: &EmailChannel, alert: &Alert) -> Result<Message, DeliveryError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        DeliveryError::permanent(format!("email channel {}: {what}: {e}", ch.name))
    };
    let from: Mailbox = ch
        .from
        .parse()
        .map_err(|e| bad(&format!("bad `from` {:?}", ch.from), &e))?;
    let mut b = Message::builder()
        .from(from)
        .subject(&alert.subject)
        .message_id(None)
        .header(ContentType::TEXT_PLAIN);
    for to in &ch.to {
        let mbox: Mailbox = to
            .parse()
            .map_err(|e| bad(&format!("bad `to` {to:?}"), &e))?;
        b = b.to(mbox);
    }
    b.body(alert.text())
        .map_err(|e| bad("cannot build the message", &e))
}

/// Largest `password_file` or `secret_file` read.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// The SMTP password, read now so that a fixed file applies to the next retry.
fn read_password(source: &SecretSource) -> Result<String, DeliveryError> {
    match source {
        SecretSource::File(path) => crate::state::read_bounded_string(path, MAX_SECRET_FILE)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| {
                DeliveryError::retry(format!("cannot read password_file {}: {e}", path.display()))
            }),
        SecretSource::Env(var) => std::env::var(var).map_err(|_| {
            DeliveryError::retry(format!(
                "password_env {var} is not set in orchd's environment"
            ))
        }),
    }
}

/// An error and its causes, `a: b: c`.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::message::{AlertEvent, Facts};

    #[test]
    fn message_has_date_message_id_recipients_and_plain_text() {
        let ch = EmailChannel {
            name: "oncall".into(),
            server: "127.0.0.1".into(),
            port: 25,
            tls: TlsMode::None,
            username: None,
            password: None,
            from: "orchd <orchd@example.com>".into(),
            to: vec!["a@example.com".into(), "b@example.com".into()],
        };
        let a = Alert::new(
            "h",
            "api",
            AlertEvent::Test,
            Facts::default(),
            "2026-01-01T00:00:00Z",
        );
        let m = build(&ch, &a).unwrap();
        let text = String::from_utf8_lossy(&m.formatted()).into_owned();
        assert!(text.contains("\r\nDate: "), "{text}");
        assert!(text.contains("\r\nMessage-ID: <"), "{text}");
        assert!(
            text.contains("To: a@example.com, b@example.com\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Content-Type: text/plain; charset=utf-8\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Subject: [h] api TEST: test alert from orchctl alert-test\r\n"),
            "{text}"
        );
        let bad = EmailChannel {
            to: vec!["not an address".into()],
            ..ch
        };
        let e = build(&bad, &a).unwrap_err();
        assert!(e.permanent);
        assert!(
            e.message
                .starts_with("email channel oncall: bad `to` \"not an address\""),
            "{}",
            e.message
        );
    }

    #[test]
    fn password_comes_from_env_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(read_password(&SecretSource::File(f)).unwrap(), "s3cret");
        let e = read_password(&SecretSource::Env("ORCH_TEST_NO_SUCH_VAR".into())).unwrap_err();
        assert_eq!(
            e.message,
            "password_env ORCH_TEST_NO_SUCH_VAR is not set in orchd's environment"
        );
    }
}

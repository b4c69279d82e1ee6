//! Webhook delivery with reqwest (rustls): the `json` schema (an [`Alert`] as is), Slack
//! (`text` + blocks) and Discord (`content` + embeds); with `secret_file`, an
//! `X-Orch-Signature: sha256=<hex HMAC-SHA256 of the body>` and an `X-Orch-Timestamp` header.
//!
//! 2xx is delivered; 4xx other than 429 is permanent (logged, dropped); 5xx, 429 and network
//! errors are retried by the outbox. The URL's path and query and the HMAC key never appear in
//! an error: errors name the URL through `Secret`'s redacting `Display`.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::DeliveryError;
use super::message::{Alert, Severity};
use crate::config::{WebhookChannel, WebhookFormat};

/// Whole-request bound.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Connection bound.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The client all webhooks share. Needs a rustls crypto provider installed (orchd's main does).
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("orchd/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// POST `alert` to `ch`.
pub async fn send(
    client: &reqwest::Client,
    ch: &WebhookChannel,
    alert: &Alert,
) -> Result<(), DeliveryError> {
    let body = serde_json::to_vec(&payload(ch.format, alert))
        .map_err(|e| DeliveryError::permanent(format!("cannot encode the payload: {e}")))?;
    let mut req = client
        .post(ch.url.expose())
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    if let Some(path) = &ch.secret_file {
        let key = crate::state::read_bounded(path, super::email::MAX_SECRET_FILE).map_err(|e| {
            DeliveryError::retry(format!("cannot read secret_file {}: {e}", path.display()))
        })?;
        let key = trim_newline(&key);
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        req = req
            .header("X-Orch-Signature", signature(key, &body))
            .header("X-Orch-Timestamp", ts.to_string());
    }
    let url = &ch.url;
    let resp = req.body(body).send().await.map_err(|e| {
        let e = e.without_url();
        DeliveryError::retry(format!("POST {url}: {}", super::email::chain(&e)))
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    // Only the start of an error body is quoted: read no more of it (an endpoint that sends
    // megabytes must not make orchd hold them).
    let mut resp = resp;
    let mut head = Vec::new();
    while head.len() < 4096 {
        match resp.chunk().await {
            Ok(Some(chunk)) => head.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let snippet: String = text.chars().take(200).collect();
    let message = format!("POST {url}: HTTP {status}: {}", snippet.trim());
    if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
        Err(DeliveryError::permanent(message))
    } else {
        Err(DeliveryError::retry(message))
    }
}

fn trim_newline(key: &[u8]) -> &[u8] {
    let mut k = key;
    while let [rest @ .., b'\n' | b'\r'] = k {
        k = rest;
    }
    k
}

/// `sha256=<hex HMAC-SHA256 of body with key>`.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length: new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The body for a format.
pub fn payload(format: WebhookFormat, a: &Alert) -> Value {
    match format {
        WebhookFormat::Json => serde_json::to_value(a).unwrap_or(Value::Null),
        WebhookFormat::Slack => slack(a),
        WebhookFormat::Discord => discord(a),
    }
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn facts_markdown(a: &Alert) -> String {
    a.fields()
        .iter()
        .map(|(k, v)| format!("*{k}:* {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last output lines as a code block, cut from the front to fit `max`.
fn output_block(a: &Alert, max: usize) -> Option<String> {
    if a.output.is_empty() {
        return None;
    }
    let mut lines: Vec<&str> = a.output.iter().map(String::as_str).collect();
    loop {
        let block = format!("```\n{}\n```", lines.join("\n"));
        if block.chars().count() <= max || lines.len() <= 1 {
            return Some(cut(&block, max));
        }
        lines.remove(0);
    }
}

/// Slack incoming webhook: `text` (the fallback and notification line) plus blocks.
fn slack(a: &Alert) -> Value {
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": cut(&a.summary, 150)}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&facts_markdown(a), 3000)}}),
    ];
    if let Some(out) = output_block(a, 2900) {
        let text = format!("*Last {} lines of output:*\n{out}", a.output.len());
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}));
    }
    let cmds = a
        .investigate
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join("  ");
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": cut(&format!("Investigate: {cmds}"), 3000)}]}));
    json!({ "text": cut(&a.subject, 3000), "blocks": blocks })
}

fn colour(s: Severity) -> u32 {
    match s {
        Severity::Critical => 0xd9_2d_20,
        Severity::Warning => 0xe8_a3_17,
        Severity::Ok => 0x2e_b8_86,
        Severity::Info => 0x3b_82_f6,
    }
}

/// Discord webhook: `content` plus one embed with the facts as fields.
fn discord(a: &Alert) -> Value {
    let fields: Vec<Value> = a
        .fields()
        .into_iter()
        .filter(|(k, _)| *k != "Host" && *k != "Service")
        .map(|(k, v)| json!({"name": k, "value": cut(&v, 1024), "inline": v.len() < 40}))
        .collect();
    let mut description = String::new();
    if let Some(out) = output_block(a, 3500) {
        description.push_str(&format!(
            "Last {} lines of output:\n{out}\n",
            a.output.len()
        ));
    }
    description.push_str(
        &a.investigate
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    json!({
        "content": cut(&a.subject, 2000),
        "embeds": [{
            "title": cut(&a.summary, 256),
            "description": cut(&description, 4096),
            "color": colour(a.severity),
            "timestamp": a.time,
            "footer": {"text": cut(&format!("orchd on {}", a.host), 2048)},
            "fields": fields.into_iter().take(25).collect::<Vec<_>>(),
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::message::{AlertEvent, Facts};

    fn alert() -> Alert {
        let facts = Facts {
            exit_code: Some(1),
            restarts: 2,
            backoff_ms: Some(400),
            output: vec!["boom".into()],
            ..Facts::default()
        };
        Alert::new(
            "h",
            "api",
            AlertEvent::Crashed,
            facts,
            "2026-01-01T00:00:00Z",
        )
    }

    #[test]
    fn hmac_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(trim_newline(b"key\r\n"), b"key");
    }

    #[test]
    fn shapes() {
        let a = alert();
        let j = payload(WebhookFormat::Json, &a);
        assert_eq!(j["schema"], 1);
        assert_eq!(j["event"], "crashed");
        assert_eq!(j["severity"], "critical");
        assert_eq!(j["output"][0], "boom");
        let s = payload(WebhookFormat::Slack, &a);
        assert_eq!(
            s["text"],
            "[h] api FAILED: exited 1, restarting (restart 2)"
        );
        let kinds: Vec<&str> = s["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, vec!["header", "section", "section", "context"]);
        let d = payload(WebhookFormat::Discord, &a);
        assert_eq!(
            d["content"],
            "[h] api FAILED: exited 1, restarting (restart 2)"
        );
        assert_eq!(d["embeds"][0]["color"], 0xd92d20);
        assert!(
            d["embeds"][0]["description"]
                .as_str()
                .unwrap()
                .contains("```\nboom\n```")
        );
    }
}

//! Notifications: what a pipeline tells people when something happens — a
//! run ends, a validation fails, dead letters pile up — as one JSON
//! document, POSTed to a webhook and/or handed to a shell hook on stdin.
//!
//! Delivery never decides the command's outcome: a webhook that refuses or
//! times out, or a hook that fails, is a warning on stderr (the URL shown
//! without its path or query, which often hold a token), and the command
//! exits as it would have. A webhook is tried three times (1 s, then 2 s
//! apart); a hook runs once, with 30 s to finish.

use std::time::Duration;

use serde::Serialize;

use crate::settings::NotifySettings;

/// How long one webhook request may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a shell hook may run.
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A migration run ended (completed, stopped by a plugin's `fatal`, or
    /// interrupted), or a change stream stopped.
    RunEnded,
    /// `ferry validate` found rows that differ.
    ValidationFailed,
    /// A run or stream dead-lettered more rows than `notify.dead_letters_above`.
    DeadLetters,
    /// `ferry cutover` moved the application to the new database.
    Cutover,
    /// `ferry cutback` moved it back to the old one.
    Cutback,
    /// `ferry rollback` took a run back.
    Rollback,
    /// A change stream paused on a schema change it cannot apply as it is
    /// (and again when it resumes: `summary` says which).
    StreamPaused,
    /// The switch hook of a cutover or cutback (`[cutover]`), not a
    /// notification: the application is told which database to use.
    Switch,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::RunEnded => "run_ended",
            Event::ValidationFailed => "validation_failed",
            Event::DeadLetters => "dead_letters",
            Event::Cutover => "cutover",
            Event::Cutback => "cutback",
            Event::Rollback => "rollback",
            Event::Switch => "switch",
            Event::StreamPaused => "stream_paused",
        }
    }
}

/// The document every notification carries.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    pub event: Event,
    pub pipeline: String,
    /// When ferry sent it (RFC 3339, UTC).
    pub at: String,
    /// One line for people.
    pub summary: String,
    /// The command's own report (`--json` shape).
    pub details: serde_json::Value,
}

/// Sends `event` to where the pipeline's `[notify]` says, if anywhere.
pub async fn send(
    settings: &NotifySettings,
    pipeline: &str,
    event: Event,
    summary: String,
    details: serde_json::Value,
) {
    if settings.webhook.is_none() && settings.command.is_none() {
        return;
    }
    let note = Notification {
        event,
        pipeline: pipeline.to_string(),
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        summary,
        details,
    };
    let body = match serde_json::to_vec(&note) {
        Ok(body) => body,
        Err(e) => return tracing::warn!("notification {}: cannot encode it: {e}", event.as_str()),
    };
    if let Some(url) = &settings.webhook {
        match webhook(url, &body).await {
            Ok(()) => tracing::info!("notification {} sent to {}", event.as_str(), shown(&settings.webhook)),
            Err(e) => tracing::warn!("notification {} to {}: {e}", event.as_str(), shown(&settings.webhook)),
        }
    }
    if let Some(command) = &settings.command
        && let Err(e) = hook(command, event, pipeline, &[], &body).await
    {
        tracing::warn!("notification {} through notify.command: {e}", event.as_str());
    }
}

/// POSTs `body` to `url` (three tries); the error says why it failed, with
/// the URL as logs may show it.
pub async fn webhook(url: &str, body: &[u8]) -> Result<(), String> {
    let (owned, body) = (url.to_string(), body.to_vec());
    match tokio::task::spawn_blocking(move || post(&owned, &body)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{}: {e}", shown(&Some(url.to_string())))),
        Err(e) => Err(e.to_string()),
    }
}

/// POSTs `body` to `url`, three tries.
fn post(url: &str, body: &[u8]) -> Result<(), String> {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(WEBHOOK_TIMEOUT)).http_status_as_error(false).build().into();
    let mut last = String::new();
    for attempt in 0..3u32 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_secs(u64::from(attempt)));
        }
        match agent.post(url).header("Content-Type", "application/json").send(body) {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => last = format!("the webhook answered {}", response.status()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("{last} (3 tries)"))
}

/// Runs `command` with `sh -c`, the document on stdin and the event in
/// `FERRY_EVENT`, `FERRY_PIPELINE` (and `env`); the error says why it failed.
pub async fn hook(
    command: &str,
    event: Event,
    pipeline: &str,
    env: &[(&str, &str)],
    body: &[u8],
) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("FERRY_EVENT", event.as_str())
        .env("FERRY_PIPELINE", pipeline)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start `sh -c`: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its input is not an error.
        let _ = stdin.write_all(body).await;
    }
    match tokio::time::timeout(HOOK_TIMEOUT, child.wait()).await {
        Err(_) => Err(format!("still running after {HOOK_TIMEOUT:?}; stopped")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("exited with {status}")),
    }
}

/// A webhook URL as logs may show it: scheme, host and port only.
fn shown(url: &Option<String>) -> String {
    url.as_deref()
        .and_then(|u| url::Url::parse(u).ok())
        .map(|u| {
            format!(
                "{}://{}{}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.port().map_or(String::new(), |p| format!(":{p}"))
            )
        })
        .unwrap_or_else(|| "the webhook".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_show_no_path_or_token() {
        let url = Some("https://hooks.example.com/services/T000/B000/secret-token?x=1".to_string());
        assert_eq!(shown(&url), "https://hooks.example.com");
        assert_eq!(shown(&Some("http://127.0.0.1:9000/ferry".into())), "http://127.0.0.1:9000");
    }
}

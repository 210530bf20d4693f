//! Where change events come from: a JSONL file or stdin, or a NATS
//! JetStream subject (the broker Debezium Server can publish to).
//!
//! Both deliver at least once. Items carry a token; `commit(token)` tells
//! the input that everything up to that item is applied (or was already),
//! and only then does JetStream get its acknowledgement.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, Lines};

use crate::error::{Error, ErrorKind};

/// The next thing an input has.
#[derive(Debug)]
pub enum Next {
    /// An event's text and its token.
    Item(String, u64),
    /// Nothing arrived for a while: a good moment to commit what is pending.
    Idle,
    /// The input is finished (end of file, or the idle limit was reached).
    End,
}

/// A source of change events (at-least-once).
#[async_trait]
pub trait EventInput: Send {
    async fn next(&mut self) -> anyhow::Result<Next>;
    /// Everything up to and including the item with `token` is durably
    /// applied in the target (or was skipped as already applied).
    async fn commit(&mut self, token: u64) -> anyhow::Result<()>;
}

/// How long a quiet line input waits before what it read is applied.
const LINE_IDLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Lines of a file or of stdin; commits are no-ops (the file is the log).
pub struct LineInput<R> {
    lines: Lines<R>,
    count: u64,
}

impl<R: AsyncBufRead + Unpin + Send> LineInput<R> {
    pub fn new(reader: R) -> Self {
        LineInput { lines: reader.lines(), count: 0 }
    }
}

#[async_trait]
impl<R: AsyncBufRead + Unpin + Send> EventInput for LineInput<R> {
    async fn next(&mut self) -> anyhow::Result<Next> {
        // A pipe that goes quiet (`--input -`) lets what was read apply;
        // `next_line` is cancel-safe, so the line is read on the next call.
        let Ok(line) = tokio::time::timeout(LINE_IDLE, self.lines.next_line()).await else {
            return Ok(Next::Idle);
        };
        Ok(match line? {
            Some(line) => {
                self.count += 1;
                Next::Item(line, self.count)
            }
            None => Next::End,
        })
    }

    async fn commit(&mut self, _token: u64) -> anyhow::Result<()> {
        Ok(())
    }
}

/// How to reach a JetStream subject.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// `nats://127.0.0.1:4222`, or `tls://…` to require TLS (credentials in
    /// the URL are not printed).
    pub url: String,
    /// CA certificates (PEM) to verify the server with, instead of the
    /// system's trust store; TLS is then required.
    pub ca: Option<PathBuf>,
    /// A client certificate and its key (PEM), for servers that verify clients.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub stream: String,
    /// Only messages on this subject (empty: the whole stream).
    pub subject: String,
    /// The durable consumer's name: the server remembers its progress.
    pub durable: String,
    /// Flush what is pending after this long without a message.
    pub idle_flush: Duration,
    /// Stop after this long without a message (`None`: run until signalled).
    pub idle_exit: Option<Duration>,
    /// Acknowledgements outstanding at most (must exceed the group size).
    pub max_ack_pending: i64,
}

/// A durable pull consumer with explicit "all up to here" acknowledgement.
pub struct JetStreamInput {
    messages: jetstream::consumer::pull::Stream,
    unacked: VecDeque<(u64, jetstream::Message)>,
    count: u64,
    idle_flush: Duration,
    idle_exit: Option<Duration>,
    idle_for: Duration,
}

impl JetStreamInput {
    pub async fn connect(options: &JetStreamOptions) -> anyhow::Result<JetStreamInput> {
        let shown = crate::db::redact(&options.url);
        let mut connect = async_nats::ConnectOptions::new();
        if let Some(ca) = &options.ca {
            crate::tls::check_pem_file("--nats-ca", ca).map_err(anyhow::Error::msg)?;
            connect = connect.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &options.client_cert {
            connect = connect.add_client_certificate(cert.clone(), key.clone());
        }
        let client = connect.connect(options.url.as_str()).await.map_err(|e| {
            let message = format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default());
            let host = crate::tls::url_host(&options.url);
            match crate::tls::explain(&message, &host, crate::tls::FixParam::Nats) {
                Some(cause) => {
                    Error::raise(ErrorKind::Connect, format!("cannot connect to NATS at {shown}: {cause} [{message}]"))
                }
                None => Error::raise(
                    ErrorKind::Connect,
                    format!("cannot connect to NATS at {shown}: {message}; is the server up?"),
                ),
            }
        })?;
        let js = jetstream::new(client);
        let stream = js.get_stream(&options.stream).await.with_context(|| {
            format!("JetStream stream {} not found at {shown}; create it (Debezium Server's NATS sink does) or check --stream", options.stream)
        })?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &options.durable,
                jetstream::consumer::pull::Config {
                    durable_name: Some(options.durable.clone()),
                    filter_subject: options.subject.clone(),
                    ack_policy: jetstream::consumer::AckPolicy::All,
                    ack_wait: Duration::from_secs(60),
                    max_ack_pending: options.max_ack_pending,
                    ..Default::default()
                },
            )
            .await
            .with_context(|| {
                format!("creating the durable consumer {} on stream {}", options.durable, options.stream)
            })?;
        let messages = consumer.messages().await.context("starting to pull messages")?;
        Ok(JetStreamInput {
            messages,
            unacked: VecDeque::new(),
            count: 0,
            idle_flush: options.idle_flush,
            idle_exit: options.idle_exit,
            idle_for: Duration::ZERO,
        })
    }
}

#[async_trait]
impl EventInput for JetStreamInput {
    async fn next(&mut self) -> anyhow::Result<Next> {
        match tokio::time::timeout(self.idle_flush, self.messages.next()).await {
            Err(_) => {
                self.idle_for += self.idle_flush;
                Ok(match self.idle_exit {
                    Some(limit) if self.idle_for >= limit => Next::End,
                    _ => Next::Idle,
                })
            }
            Ok(None) => Ok(Next::End),
            Ok(Some(message)) => {
                let message = message.map_err(|e| Error::transient(format!("receiving from JetStream: {e}")))?;
                self.idle_for = Duration::ZERO;
                self.count += 1;
                let text = String::from_utf8_lossy(&message.payload).into_owned();
                self.unacked.push_back((self.count, message));
                Ok(Next::Item(text, self.count))
            }
        }
    }

    async fn commit(&mut self, token: u64) -> anyhow::Result<()> {
        let mut last = None;
        while self.unacked.front().is_some_and(|(t, _)| *t <= token) {
            last = self.unacked.pop_front();
        }
        if let Some((_, message)) = last {
            // AckPolicy::All: this acknowledges every earlier message too.
            message.double_ack().await.map_err(|e| Error::transient(format!("acknowledging to JetStream: {e}")))?;
        }
        Ok(())
    }
}

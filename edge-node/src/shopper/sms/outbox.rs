//! `OutboxSender`: the development SMS sender. Instead of sending, it appends one JSON line
//! per message to a file, `{"to": "+9725…", "text": "…", "code": "1234"}`, so tests and the
//! demo read the codes a shopper would have received.
//!
//! Each line is written with a single `write` on a file opened with `O_APPEND`, then
//! flushed, so concurrent senders (or processes) never interleave lines; a reader sees whole
//! lines only. The file is opened per message, so it may be rotated or deleted at any time.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};

use super::{SmsError, SmsFuture, SmsMessage, SmsSender, check_text_len};

/// Lines longer than this are skipped by [`read_outbox`] (a message is far shorter).
pub const OUTBOX_LINE_BYTES_MAX: usize = 8 * 1024;

/// Appends each message as a JSON line to a file.
#[derive(Debug, Clone)]
pub struct OutboxSender {
    path: PathBuf,
}

/// One line of the outbox file: the wire form of the development sender.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutboxEntry {
    /// The recipient in E.164.
    pub to: String,
    /// The text.
    pub text: String,
    /// The code the text carries, or `null`.
    pub code: Option<String>,
}

impl OutboxSender {
    /// A sender appending to `path` (created on first send; its directory must exist).
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The outbox file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl SmsSender for OutboxSender {
    fn send<'a>(&'a self, message: &'a SmsMessage) -> SmsFuture<'a> {
        Box::pin(async move {
            check_text_len(&message.text)?;
            let line = outbox_line(&self.path, message)?;
            let path = self.path.clone();
            tokio::task::spawn_blocking(move || append_line(&path, &line))
                .await
                .map_err(|join_error| SmsError::Outbox {
                    path: self.path.clone(),
                    source: std::io::Error::other(join_error.to_string()),
                })?
        })
    }

    fn name(&self) -> &str {
        "outbox"
    }
}

/// The JSON line of `message`, newline included.
fn outbox_line(path: &Path, message: &SmsMessage) -> Result<Vec<u8>, SmsError> {
    let entry = OutboxEntry {
        to: message.to.as_e164().to_owned(),
        text: message.text.clone(),
        code: message.code.clone(),
    };
    let mut line = serde_json::to_vec(&entry).map_err(|error| SmsError::Outbox {
        path: path.to_owned(),
        source: std::io::Error::other(error),
    })?;
    line.push(b'\n');
    Ok(line)
}

/// Appends `line` with one write and flushes it.
fn append_line(path: &Path, line: &[u8]) -> Result<(), SmsError> {
    let outbox_error = |source| SmsError::Outbox {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(outbox_error)?;
    file.write_all(line).map_err(outbox_error)?;
    file.flush().map_err(outbox_error)
}

/// Reads every well-formed line of an outbox file, oldest first (for tests, the demo and the
/// technician); other lines are skipped. A missing file is an empty outbox.
pub fn read_outbox(path: &Path) -> std::io::Result<Vec<OutboxEntry>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut entries = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        if line.len() > OUTBOX_LINE_BYTES_MAX {
            continue;
        }
        if let Ok(entry) = serde_json::from_str::<OutboxEntry>(&line) {
            entries.push(entry);
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cartwise_schema::Phone;

    use super::*;

    fn message(national: &str, code: Option<&str>) -> SmsMessage {
        SmsMessage {
            to: Phone::parse(national).unwrap(),
            text: format!("קוד האימות שלך: {}", code.unwrap_or("-")),
            code: code.map(str::to_owned),
        }
    }

    #[tokio::test]
    async fn each_message_is_one_json_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sms-outbox.jsonl");
        let sender = OutboxSender::new(path.clone());
        assert_eq!(sender.name(), "outbox");
        sender
            .send(&message("0501234567", Some("0042")))
            .await
            .unwrap();
        sender.send(&message("052-7654321", None)).await.unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                r#"{"to":"+972501234567","text":"קוד האימות שלך: 0042","code":"0042"}"#,
                r#"{"to":"+972527654321","text":"קוד האימות שלך: -","code":null}"#,
            ]
        );
        let entries = read_outbox(&path).unwrap();
        assert_eq!(entries[0].code.as_deref(), Some("0042"));
        assert_eq!(entries[1].to, "+972527654321");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_sends_never_interleave_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sms-outbox.jsonl");
        let sender: Arc<dyn SmsSender> = Arc::new(OutboxSender::new(path.clone()));
        let mut tasks = Vec::new();
        for index in 0..40u32 {
            let sender = Arc::clone(&sender);
            tasks.push(tokio::spawn(async move {
                let code = format!("{:04}", index);
                sender.send(&message("0501234567", Some(&code))).await
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let entries = read_outbox(&path).unwrap();
        assert_eq!(entries.len(), 40);
        let raw_lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(raw_lines, 40);
    }

    #[tokio::test]
    async fn an_unwritable_outbox_is_a_typed_error_and_a_missing_one_reads_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("sms-outbox.jsonl");
        let error = OutboxSender::new(path.clone())
            .send(&message("0501234567", None))
            .await
            .unwrap_err();
        assert!(matches!(error, SmsError::Outbox { .. }), "{error:?}");
        assert!(!error.is_unavailable());
        assert_eq!(read_outbox(&path).unwrap(), Vec::new());
    }
}

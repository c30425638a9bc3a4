//! The bus task: owns the transport, runs one request at a time, retries, probes the baud.
//!
//! Every wait here has a deadline (`reply_timeout`, `quiet_gap`, `bus_collect_max`), so a
//! silent or babbling bus costs time but never hangs a caller.

use std::io;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{BusError, Exchange, Shared};
use crate::cu16::codec::{Decoder, Reply, Request};
use crate::cu16::transport::Transport;
use crate::cu16::{Baud, BoardAddress, PulseTime, Target};

/// Bytes read from the transport at a time.
const READ_CHUNK: usize = 256;

pub(super) struct Actor<T> {
    transport: T,
    decoder: Decoder,
    shared: Arc<Shared>,
    /// No frame may be sent before this instant (frame gap, setting guard).
    quiet_until: Instant,
    /// Whether any board answered since the line speed last changed.
    heard_at_current_baud: bool,
}

impl<T: Transport> Actor<T> {
    pub(super) fn new(transport: T, shared: Arc<Shared>) -> Self {
        Self {
            transport,
            decoder: Decoder::new(),
            shared,
            quiet_until: Instant::now(),
            heard_at_current_baud: false,
        }
    }

    /// Serves requests until every `Bus` handle is dropped.
    pub(super) async fn run(mut self, mut inbox: mpsc::Receiver<Exchange>) {
        while let Some(Exchange { request, reply }) = inbox.recv().await {
            let result = self.exchange(request).await;
            if let Err(error) = &result {
                tracing::warn!(%error, request = request.name(), "lock bus request failed");
            }
            // The caller may have given up; that is not the bus's problem.
            let _ = reply.send(result);
        }
    }

    async fn exchange(&mut self, request: Request) -> Result<Vec<Reply>, BusError> {
        let attempts = self.attempts_for(&request);
        for attempt in 1..=attempts {
            let replies = self.attempt(&request).await?;
            if !replies.is_empty() || matches!(request, Request::Unlock { .. }) {
                self.after_success(&request, &replies);
                return Ok(replies);
            }
            tracing::debug!(request = request.name(), attempt, "no answer");
        }
        if self.probe_allowed() && self.probe_baud().await?.is_some() {
            let replies = self.attempt(&request).await?;
            if !replies.is_empty() {
                self.after_success(&request, &replies);
                return Ok(replies);
            }
        }
        Err(self.silence_error(&request, attempts))
    }

    fn attempts_for(&self, request: &Request) -> u8 {
        match request {
            Request::Unlock { .. } | Request::UnlockAll { .. } => 1,
            _ => self.shared.config.read_retries.saturating_add(1),
        }
    }

    /// One send and the wait for its answer(s). Empty means silence.
    async fn attempt(&mut self, request: &Request) -> Result<Vec<Reply>, BusError> {
        tokio::time::sleep_until(self.quiet_until).await;
        self.transport
            .discard_input()
            .await
            .map_err(|e| self.io_error(e))?;
        self.decoder.clear();
        let frame = request.encode();
        tracing::trace!(request = request.name(), bytes = ?frame.as_bytes(), "send");
        self.transport
            .send(&frame)
            .await
            .map_err(|e| self.io_error(e))?;
        let config = &self.shared.config;
        self.quiet_until = Instant::now() + config.frame_gap;
        let replies = match request {
            Request::Unlock { .. } => Vec::new(),
            _ if request.is_bus_wide() => self.collect(request).await?,
            _ => self.wait_one(request).await?.into_iter().collect(),
        };
        if request.is_setting() {
            self.quiet_until = Instant::now() + self.shared.config.setting_guard;
        }
        if !replies.is_empty() {
            self.heard_at_current_baud = true;
        }
        Ok(replies)
    }

    /// Waits up to `reply_timeout` for the one reply that answers `request`.
    async fn wait_one(&mut self, request: &Request) -> Result<Option<Reply>, BusError> {
        let deadline = Instant::now() + self.shared.config.reply_timeout;
        loop {
            while let Some(reply) = self.decoder.next_reply() {
                if request.is_answered_by(&reply) {
                    return Ok(Some(reply));
                }
                tracing::debug!(?reply, request = request.name(), "ignoring unrelated reply");
            }
            if !self.read_until(deadline).await? {
                return Ok(None);
            }
        }
    }

    /// Collects every board's answer to a bus-wide request: the first may take
    /// `reply_timeout`, each next one `quiet_gap`; never longer than `bus_collect_max`, and
    /// done early once every expected board has answered.
    async fn collect(&mut self, request: &Request) -> Result<Vec<Reply>, BusError> {
        let config = &self.shared.config;
        let (quiet_gap, expected) = (config.quiet_gap, config.boards.clone());
        let cap = Instant::now() + config.bus_collect_max;
        let mut deadline = (Instant::now() + config.reply_timeout).min(cap);
        let mut replies: Vec<Reply> = Vec::new();
        loop {
            while let Some(reply) = self.decoder.next_reply() {
                let known = replies.iter().any(|r| r.board() == reply.board());
                if request.is_answered_by(&reply) && !known {
                    replies.push(reply);
                    deadline = (Instant::now() + quiet_gap).min(cap);
                }
            }
            let all_in = !expected.is_empty()
                && expected
                    .iter()
                    .all(|b| replies.iter().any(|r| r.board() == *b));
            if all_in || !self.read_until(deadline).await? {
                replies.sort_by_key(Reply::board);
                return Ok(replies);
            }
        }
    }

    /// Reads one chunk into the decoder; `false` once `deadline` passes.
    async fn read_until(&mut self, deadline: Instant) -> Result<bool, BusError> {
        let mut chunk = [0u8; READ_CHUNK];
        match tokio::time::timeout_at(deadline, self.transport.receive(&mut chunk)).await {
            Err(_elapsed) => Ok(false),
            Ok(Ok(0)) => {
                Err(self.io_error(io::Error::new(io::ErrorKind::UnexpectedEof, "line closed")))
            }
            Ok(Ok(n)) => {
                tracing::trace!(bytes = ?&chunk[..n], "received");
                self.decoder.feed(&chunk[..n]);
                Ok(true)
            }
            Ok(Err(e)) => Err(self.io_error(e)),
        }
    }

    fn after_success(&mut self, request: &Request, replies: &[Reply]) {
        self.remember_pulses(replies);
        if let Request::SetBaud {
            target: Target::AllBoards,
            baud,
        } = *request
            && let Err(error) = self.switch_baud(baud)
        {
            tracing::warn!(%error, "boards changed speed but the port could not follow");
        }
    }

    fn remember_pulses(&self, replies: &[Reply]) {
        let Ok(mut pulses) = self.shared.pulses.lock() else {
            return;
        };
        for reply in replies {
            if let Reply::Pulse {
                board, pulse_units, ..
            } = *reply
                && let Ok(pulse) = PulseTime::from_units(pulse_units)
            {
                pulses[usize::from(board.get())] = pulse;
            }
        }
    }

    fn probe_allowed(&self) -> bool {
        self.shared.config.probe_baud
            && self.transport.baud().is_some()
            && !self.heard_at_current_baud
    }

    /// Tries each line speed with a bus-wide status; stays on the first that gets an answer.
    async fn probe_baud(&mut self) -> Result<Option<Baud>, BusError> {
        let Some(original) = self.transport.baud() else {
            return Ok(None);
        };
        for baud in Baud::PROBE_ORDER.into_iter().filter(|b| *b != original) {
            self.switch_baud(baud).map_err(|e| self.io_error(e))?;
            if !self.attempt(&Request::StatusAll).await?.is_empty() {
                tracing::info!(%baud, "boards answer at this line speed");
                return Ok(Some(baud));
            }
        }
        self.switch_baud(original).map_err(|e| self.io_error(e))?;
        // Do not probe again until a board has answered: one probe per silent spell.
        self.heard_at_current_baud = true;
        Ok(None)
    }

    fn switch_baud(&mut self, baud: Baud) -> io::Result<()> {
        self.transport.set_baud(baud)?;
        self.heard_at_current_baud = false;
        if let Ok(mut line) = self.shared.line.lock() {
            *line = self.transport.describe();
        }
        Ok(())
    }

    fn line(&self) -> String {
        self.transport.describe()
    }

    fn io_error(&self, source: io::Error) -> BusError {
        BusError::Io {
            line: self.line(),
            source,
        }
    }

    fn silence_error(&self, request: &Request, attempts: u8) -> BusError {
        let line = self.line();
        let request_name = request.name();
        match target_board(request) {
            Some(board) if matches!(request, Request::UnlockAll { .. }) => {
                BusError::UnlockAllUnanswered { board, line }
            }
            Some(board) => BusError::NoReply {
                board,
                request: request_name,
                attempts,
                line,
            },
            None => BusError::NoBoards {
                request: request_name,
                attempts,
                line,
            },
        }
    }
}

/// The one board a request is for, or `None` for bus-wide requests.
fn target_board(request: &Request) -> Option<BoardAddress> {
    match *request {
        Request::Status { board }
        | Request::Unlock { board, .. }
        | Request::UnlockAll { board } => Some(board),
        Request::StatusAll => None,
        Request::QueryPulse { target }
        | Request::SetPulse { target, .. }
        | Request::SetUnlockDelay { target, .. }
        | Request::SetBaud { target, .. }
        | Request::Version { target } => match target {
            Target::Board(board) => Some(board),
            Target::AllBoards => None,
        },
    }
}

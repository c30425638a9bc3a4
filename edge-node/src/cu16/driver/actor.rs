//! The bus task: owns the transport, runs one request at a time, retries, probes the baud.
//!
//! Every wait here has a deadline (`reply_timeout`, `quiet_gap`, `bus_collect_max`), so a
//! silent or babbling bus costs time but never hangs a caller.
//!
//! Between requests it takes the next one from the urgent lane if any waits there, else from
//! the ordinary lane: an unlock never waits behind the poller's queued reads, only behind the
//! one request already on the wire. An unlock with its read first is one turn, so nothing
//! gets between the read and the pulse.
//!
//! Frame pacing follows the transport (`Pacing`): on a line the host drives (serial, PTY) every
//! frame is followed by `frame_gap` of idle; through a TCP bridge only a frame nobody answers
//! (an unlock) is followed by `bridge_frame_gap`, because a reply that reached us over TCP
//! means the bridge already saw the line fall quiet.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{BusConfig, BusError, Done, Exchange, Shared, Work, board_status};
use crate::cu16::codec::{Decoder, Reply, Request};
use crate::cu16::transport::{Pacing, Transport};
use crate::cu16::{Baud, BoardAddress, Lock, PulseTime, Target};

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

    /// Serves requests, urgent ones first, until every `Bus` handle is dropped.
    pub(super) async fn run(mut self, mut lanes: Lanes) {
        while let Some(Exchange { work, reply }) = lanes.next().await {
            let result = match work {
                Work::Request(request) => self.exchange(request).await.map(Done::Replies),
                Work::Unlock {
                    board,
                    lock,
                    read_first,
                } => self.unlock(board, lock, read_first).await,
            };
            if let Err(error) = &result {
                tracing::warn!(%error, work = work.name(), "lock bus request failed");
            }
            // The caller may have given up; that is not the bus's problem.
            let _ = reply.send(result);
        }
    }

    /// Reads the board first when asked (leaving an open hook alone), then writes the unlock.
    async fn unlock(
        &mut self,
        board: BoardAddress,
        lock: Lock,
        read_first: bool,
    ) -> Result<Done, BusError> {
        if read_first {
            let replies = self.exchange(Request::Status { board }).await?;
            let status = replies
                .iter()
                .find_map(|reply| board_status(&self.shared.config, reply))
                .ok_or_else(|| super::wrong_reply(board))?;
            if !status.is_latched(lock) {
                return Ok(Done::AlreadyOpen);
            }
        }
        self.exchange(Request::Unlock { board, lock }).await?;
        Ok(Done::UnlockWritten)
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
        self.quiet_until = Instant::now() + self.gap_after(request);
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

    /// Idle kept after writing `request` before the next frame may go out.
    fn gap_after(&self, request: &Request) -> Duration {
        gap_after(self.transport.pacing(), request, &self.shared.config)
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

/// Idle kept after writing `request` on a transport paced by `pacing`.
fn gap_after(pacing: Pacing, request: &Request, config: &BusConfig) -> Duration {
    match (pacing, request) {
        (Pacing::Serial, _) => config.frame_gap,
        // No reply will tell us the bridge has put it on the line: give it the time.
        (Pacing::Bridge, Request::Unlock { .. }) => config.bridge_frame_gap,
        // Answered (or timed out after `reply_timeout`): the line is already quiet.
        (Pacing::Bridge, _) => Duration::ZERO,
    }
}

/// The two queues the bus task serves, urgent first.
pub(super) struct Lanes {
    pub(super) urgent: mpsc::Receiver<Exchange>,
    pub(super) ordinary: mpsc::Receiver<Exchange>,
}

impl Lanes {
    /// The next piece of work: urgent if any waits, else ordinary; `None` once every handle
    /// is gone.
    async fn next(&mut self) -> Option<Exchange> {
        tokio::select! {
            biased;
            Some(exchange) = self.urgent.recv() => Some(exchange),
            Some(exchange) = self.ordinary.recv() => Some(exchange),
            else => None,
        }
    }
}

impl Work {
    fn name(&self) -> &'static str {
        match self {
            Work::Request(request) => request.name(),
            Work::Unlock { .. } => "unlock",
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn serial_lines_keep_the_gap_after_every_frame_bridges_only_after_an_unlock() {
        let config = BusConfig::default();
        let board = BoardAddress::new(0).unwrap();
        let unlock = Request::Unlock {
            board,
            lock: Lock::new(1).unwrap(),
        };
        let answered = [
            Request::Status { board },
            Request::StatusAll,
            Request::QueryPulse {
                target: Target::AllBoards,
            },
        ];
        assert_eq!(
            gap_after(Pacing::Serial, &unlock, &config),
            config.frame_gap
        );
        assert_eq!(
            gap_after(Pacing::Bridge, &unlock, &config),
            config.bridge_frame_gap
        );
        for request in answered {
            assert_eq!(
                gap_after(Pacing::Serial, &request, &config),
                config.frame_gap
            );
            assert_eq!(gap_after(Pacing::Bridge, &request, &config), Duration::ZERO);
        }
    }
}

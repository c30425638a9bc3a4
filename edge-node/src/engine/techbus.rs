//! The remote lock bus of a technician session: `scan`, `status` and `unlock` through the
//! engine's own bus handle (so a remote command waits its turn like any other request), each
//! recorded in the technician log. An unlock runs only when the technician confirmed it.

use cartwise_sync_core::message::{BusCommand, BusReply};
use serde_json::json;

use super::Engine;
use super::techlog::TechAction;
use crate::cu16::{BoardAddress, BoardStatus, Lock, UnlockOutcome};
use crate::store::StoreError;

fn boards_json(boards: &[BoardStatus]) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = boards
        .iter()
        .map(|status| {
            json!({
                "board": status.board.get(),
                "latched": status.latched.0,
                "present": status.present.0,
            })
        })
        .collect();
    json!({ "boards": rows })
}

impl Engine {
    /// Runs one remote bus command for `technician` and answers it; every command (refused
    /// ones too) is recorded in the technician log.
    pub async fn technician_bus(
        &self,
        id: u64,
        command: Result<BusCommand, String>,
        technician: Option<uuid::Uuid>,
    ) -> Result<BusReply, StoreError> {
        let (action, result) = match command {
            Err(reason) => (TechAction::BusStatus, Err(reason)),
            Ok(command) => {
                let action = match command {
                    BusCommand::Scan => TechAction::BusScan,
                    BusCommand::Status { .. } => TechAction::BusStatus,
                    BusCommand::Unlock { .. } => TechAction::BusUnlock,
                };
                (action, self.run_bus_command(command).await)
            }
        };
        let reply = match result {
            Ok((detail, body)) => {
                self.log_technician(technician, action, true, detail)
                    .await?;
                BusReply {
                    id,
                    ok: true,
                    body_json: body.to_string(),
                    message: String::new(),
                }
            }
            Err(reason) => {
                self.log_technician(technician, action, false, reason.clone())
                    .await?;
                BusReply {
                    id,
                    ok: false,
                    body_json: String::new(),
                    message: reason,
                }
            }
        };
        Ok(reply)
    }

    async fn run_bus_command(
        &self,
        command: BusCommand,
    ) -> Result<(String, serde_json::Value), String> {
        let bus = self.bus().ok_or_else(|| {
            "the lock bus of this Pi is not available (not opened or not answering); check its cable and `cartwise-edge` logs".to_owned()
        })?;
        let bus_error = |error: crate::cu16::BusError| format!("the lock bus failed: {error}");
        match command {
            BusCommand::Scan => {
                let boards = bus.status_all().await.map_err(bus_error)?;
                Ok((
                    format!("scan: {} boards answered", boards.len()),
                    boards_json(&boards),
                ))
            }
            BusCommand::Status { board } => {
                let address = BoardAddress::new(board).map_err(|e| e.to_string())?;
                let status = bus.status(address).await.map_err(bus_error)?;
                Ok((format!("status of board {board}"), boards_json(&[status])))
            }
            BusCommand::Unlock {
                board,
                lock,
                confirm,
            } => {
                if !confirm {
                    return Err(format!(
                        "unlock of board {board} lock {lock} not confirmed; repeat it with --yes to open the lock"
                    ));
                }
                let address = BoardAddress::new(board).map_err(|e| e.to_string())?;
                let lock_no = Lock::new(lock).map_err(|e| e.to_string())?;
                let outcome = bus.unlock(address, lock_no).await.map_err(bus_error)?;
                let outcome = match outcome {
                    UnlockOutcome::Opened => "opened",
                    UnlockOutcome::DidNotOpen => "did_not_open",
                    UnlockOutcome::AlreadyOpen => "already_open",
                };
                Ok((
                    format!("unlock of board {board} lock {lock}: {outcome}"),
                    json!({ "board": board, "lock": lock, "outcome": outcome }),
                ))
            }
        }
    }
}

//! `cartwise-hub technician issue|revoke|list`: the operator's side of technician credentials.

use std::path::PathBuf;
use std::time::Duration;

use uuid::Uuid;

use super::{issue, list, revoke};
use crate::db;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Technician credentials.
#[derive(Debug, clap::Subcommand)]
pub enum TechnicianCommand {
    /// Issue a credential for a technician user: one certificate per branch for the public key
    /// of a PKCS#10 request (the laptop's key). Prints the credential as JSON.
    Issue {
        /// The technician's login or id.
        #[arg(long)]
        technician: String,
        /// The certificate request (PEM file).
        #[arg(long)]
        csr: PathBuf,
        /// Validity in hours (1 to 168).
        #[arg(long)]
        hours: Option<u32>,
        /// Only this branch (repeat for several); default every branch in the technician's scope.
        #[arg(long = "branch")]
        branches: Vec<Uuid>,
        /// Postgres URL.
        #[arg(long, env = "DATABASE_URL", default_value = "")]
        database_url: String,
    },
    /// Revoke a technician: no new credentials; issued ones expire on their own.
    Revoke {
        /// The technician's login or id.
        technician: String,
        /// Postgres URL.
        #[arg(long, env = "DATABASE_URL", default_value = "")]
        database_url: String,
    },
    /// List technicians (tab-separated: id, login, state, certificates issued, latest expiry).
    List {
        /// Postgres URL.
        #[arg(long, env = "DATABASE_URL", default_value = "")]
        database_url: String,
    },
}

/// Runs one technician command.
pub async fn run(command: TechnicianCommand) -> anyhow::Result<()> {
    match command {
        TechnicianCommand::Issue {
            technician,
            csr,
            hours,
            branches,
            database_url,
        } => {
            let pool = db::connect(&database_url, CONNECT_TIMEOUT).await?;
            let csr_pem = std::fs::read_to_string(&csr).map_err(|error| {
                anyhow::anyhow!("cannot read the request {}: {error}", csr.display())
            })?;
            let branches = (!branches.is_empty()).then_some(branches);
            let issued = issue(
                &pool,
                &technician,
                &csr_pem,
                hours,
                branches.as_deref(),
                "cli",
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&issued)?);
        }
        TechnicianCommand::Revoke {
            technician,
            database_url,
        } => {
            let pool = db::connect(&database_url, CONNECT_TIMEOUT).await?;
            let revoked = revoke(&pool, &technician, "cli").await?;
            println!(
                "technician {} revoked: no new credentials; issued ones expire on their own (at most 168 h)",
                revoked.login
            );
        }
        TechnicianCommand::List { database_url } => {
            let pool = db::connect(&database_url, CONNECT_TIMEOUT).await?;
            for row in list(&pool).await? {
                let state = match (row.active, row.revoked) {
                    (_, true) => "revoked",
                    (false, false) => "disabled",
                    (true, false) => "active",
                };
                let expiry = row
                    .latest_not_after_ms
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map_or_else(
                        || "-".to_owned(),
                        |at| at.format("%Y-%m-%d %H:%M").to_string(),
                    );
                println!(
                    "{}\t{}\t{state}\t{}\t{expiry}",
                    row.user_id, row.login, row.credentials
                );
            }
        }
    }
    Ok(())
}

//! The technician's laptop tool (`cartwise-tech`): its credential and what it carries
//! (`carry`), the commands that talk to the hub (`hub_cli`), the commands that talk to Pis on
//! the branch LAN (`lan_cli`), and the progress and summary output both use (`ui`).

pub mod carry;
pub mod hub_cli;
pub mod lan_cli;
pub mod ui;

//! `cartwise-edge bus …` / `cartwise-tech bus …`: the technician's lock-bus diagnostics.
//!
//! `scan` (boards and line speed), `status` (a table of posts), `unlock` (asks first unless
//! `--yes`), `pulse get|set`, `watch` (live transitions until Ctrl-C). Failures end with a
//! message saying what to check and a non-zero exit.

use std::io::{BufRead, Write};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::Instant;

use crate::cu16::{BoardAddress, BoardStatus};
use crate::cu16::{
    Bus, BusConfig, BusUri, HookPolarity, Lock, PollEvent, PollerConfig, PulseTime, Target,
    UnlockOutcome, spawn_poller,
};

/// Test the RS485 lock bus: find boards, read posts, unlock, set the pulse, watch.
#[derive(Debug, clap::Args)]
pub struct BusArgs {
    /// The bus: serial:/dev/ttyUSB0[@19200], pty:PATH or tcp:HOST:PORT (no @baud = probe
    /// 19200, 115200, 9600).
    #[arg(long, env = "CARTWISE_BUS")]
    pub bus: BusUri,
    /// How long one board gets to answer, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Boards whose hook bit reads 0 when latched (NC micro-switches), e.g. 0,3.
    #[arg(long, value_delimiter = ',')]
    pub latched_low: Vec<u8>,
    #[command(subcommand)]
    pub action: BusAction,
}

/// What to do on the bus.
#[derive(Debug, clap::Subcommand)]
pub enum BusAction {
    /// List the boards that answer, and the line speed.
    Scan,
    /// Show every post: hook latched or open, cart present or not.
    Status {
        /// Only this board (default: every board).
        #[arg(long)]
        board: Option<u8>,
    },
    /// Pulse one lock and report whether it opened.
    Unlock {
        /// Board address, 0–9.
        #[arg(long)]
        board: u8,
        /// Lock, 1–16.
        #[arg(long)]
        lock: u8,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Read or set the unlock pulse.
    #[command(subcommand)]
    Pulse(PulseAction),
    /// Print hook and cart transitions as they happen, until Ctrl-C.
    Watch {
        /// Time between reads, in milliseconds.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
    },
}

/// `pulse get` / `pulse set MS`.
#[derive(Debug, clap::Subcommand)]
pub enum PulseAction {
    /// Read the pulse of one board.
    Get {
        /// Board address, 0–9.
        #[arg(long, default_value_t = 0)]
        board: u8,
    },
    /// Set the pulse (a multiple of 10 ms, 0–60000; solenoid locks want more than 800).
    Set {
        /// Milliseconds.
        ms: u32,
        /// Only this board (default: every board on the bus).
        #[arg(long)]
        board: Option<u8>,
    },
}

/// Runs one diagnostics command.
pub async fn run(args: BusArgs) -> anyhow::Result<()> {
    let mut config = BusConfig {
        reply_timeout: Duration::from_millis(args.timeout_ms),
        ..BusConfig::default()
    };
    for board in &args.latched_low {
        let board = BoardAddress::new(*board)?;
        config.polarity[usize::from(board.get())] = HookPolarity::LatchedLow;
    }
    let bus = Bus::open(&args.bus, config).await?;
    match args.action {
        BusAction::Scan => scan(&bus).await,
        BusAction::Status { board } => status(&bus, board).await,
        BusAction::Unlock { board, lock, yes } => unlock(&bus, board, lock, yes).await,
        BusAction::Pulse(PulseAction::Get { board }) => pulse_get(&bus, board).await,
        BusAction::Pulse(PulseAction::Set { ms, board }) => pulse_set(&bus, ms, board).await,
        BusAction::Watch { interval_ms } => watch(bus, Duration::from_millis(interval_ms)).await,
    }
}

async fn scan(bus: &Bus) -> anyhow::Result<()> {
    let boards = bus.status_all().await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "line: {}", bus.line())?;
    writeln!(out, "{:<6} {:>8} {:>6}", "BOARD", "LATCHED", "CARTS")?;
    for status in &boards {
        let latched = status.latched.0.count_ones();
        let carts = status.present.0.count_ones();
        writeln!(
            out,
            "{:<6} {:>5}/16 {:>6}",
            status.board.get(),
            latched,
            carts
        )?;
    }
    writeln!(out, "{} board(s) found", boards.len())?;
    Ok(())
}

async fn status(bus: &Bus, board: Option<u8>) -> anyhow::Result<()> {
    let boards = match board {
        Some(board) => vec![bus.status(BoardAddress::new(board)?).await?],
        None => bus.status_all().await?,
    };
    print!("{}", posts_table(&boards));
    Ok(())
}

/// One row per post: board, lock, hook, cart.
pub fn posts_table(boards: &[BoardStatus]) -> String {
    let mut table = format!("{:<6} {:<5} {:<8} {}\n", "BOARD", "LOCK", "HOOK", "CART");
    for status in boards {
        for lock in Lock::all() {
            let hook = if status.is_latched(lock) {
                "latched"
            } else {
                "open"
            };
            let cart = if status.has_cart(lock) {
                "present"
            } else {
                "-"
            };
            let board = status.board.get();
            table.push_str(&format!("{board:<6} {:<5} {hook:<8} {cart}\n", lock.get()));
        }
    }
    table
}

async fn unlock(bus: &Bus, board: u8, lock: u8, yes: bool) -> anyhow::Result<()> {
    let (board, lock) = (BoardAddress::new(board)?, Lock::new(lock)?);
    if !yes {
        confirm(&format!(
            "Unlock {board} {lock}? A cart may be released. Type yes: "
        ))?;
    }
    match bus.unlock(board, lock).await? {
        UnlockOutcome::Opened => println!("{board} {lock}: opened"),
        UnlockOutcome::AlreadyOpen => println!("{board} {lock}: already open; no pulse sent"),
        UnlockOutcome::DidNotOpen => bail!(
            "{board} {lock} did not open: the hook still reads latched after the pulse; the lock \
             may be jammed or a cart may be pushing on the latch"
        ),
    }
    Ok(())
}

/// Asks on stdin; anything but "y"/"yes" (or a closed stdin) refuses.
fn confirm(prompt: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    write!(out, "{prompt}")?;
    out.flush()?;
    let mut answer = String::new();
    let read = std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    if read == 0 {
        bail!("no answer on stdin; pass --yes to unlock without asking");
    }
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => bail!("not confirmed; nothing was sent"),
    }
}

async fn pulse_get(bus: &Bus, board: u8) -> anyhow::Result<()> {
    let board = BoardAddress::new(board)?;
    let pulse = bus.pulse(board).await?;
    println!("{board}: unlock pulse {} ms", pulse.duration().as_millis());
    Ok(())
}

async fn pulse_set(bus: &Bus, ms: u32, board: Option<u8>) -> anyhow::Result<()> {
    let pulse = PulseTime::from_millis(ms)?;
    let target = match board {
        Some(board) => Target::Board(BoardAddress::new(board)?),
        None => Target::AllBoards,
    };
    for (board, pulse) in bus.set_pulse(target, pulse).await? {
        println!(
            "{board}: unlock pulse now {} ms",
            pulse.duration().as_millis()
        );
    }
    Ok(())
}

async fn watch(bus: Bus, interval: Duration) -> anyhow::Result<()> {
    println!(
        "watching {} every {} ms; Ctrl-C to stop",
        bus.line(),
        interval.as_millis()
    );
    let started = Instant::now();
    let mut poller = spawn_poller(
        bus,
        PollerConfig {
            interval,
            ..PollerConfig::default()
        },
    );
    loop {
        let event = tokio::select! {
            event = poller.events.recv() => event,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(event) = event else {
            bail!("the poller stopped")
        };
        let at = started.elapsed().as_secs_f64();
        println!("{at:>9.3}s  {}", describe(&event));
    }
}

/// One line for one poller event.
pub fn describe(event: &PollEvent) -> String {
    match event {
        PollEvent::Baseline { status } => format!(
            "{}: {} latched, {} carts",
            status.board,
            status.latched.0.count_ones(),
            status.present.0.count_ones()
        ),
        PollEvent::Latched {
            board,
            lock,
            cart_present: true,
        } => {
            format!("{board} {lock}: latched on a cart (return)")
        }
        PollEvent::Latched {
            board,
            lock,
            cart_present: false,
        } => {
            format!("{board} {lock}: latched, no cart")
        }
        PollEvent::Opened { board, lock } => format!("{board} {lock}: opened"),
        PollEvent::CartArrived { board, lock } => format!("{board} {lock}: cart arrived"),
        PollEvent::CartRemoved { board, lock } => format!("{board} {lock}: cart removed"),
        PollEvent::BoardSilent { board } => format!("{board}: stopped answering"),
        PollEvent::BusFailed { message } => format!("bus read failed: {message}"),
    }
}

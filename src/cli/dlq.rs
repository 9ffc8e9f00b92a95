//! `refund-worker dlq`: list, show and replay dead letters.

use crate::broker::{dlq, Topology};
use crate::config::Config;
use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use std::process::ExitCode;

/// Subcommands of `dlq`.
#[derive(Debug, clap::Subcommand)]
pub(super) enum DlqCommand {
    /// List dead letters (they stay in the queue).
    List {
        /// Dead-letter queue (default: refund.commands.dlq).
        #[arg(long)]
        queue: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
        limit: u64,
        /// Print JSON (`queue`, `depth`, `items`, `truncated`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter in full, by id (from `list`) or position.
    Show {
        /// Id (the AMQP message id, or the `sha256:...` one `list` shows) or position (1-based).
        which: String,
        /// Dead-letter queue (default: refund.commands.dlq).
        #[arg(long)]
        queue: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Republish dead letters to where they came from; each is removed from the dead-letter
    /// queue only after the broker confirmed its copy.
    Replay {
        /// Dead-letter queue: refund.commands.dlq (default) or provider.webhooks.dlq.
        #[arg(long)]
        queue: Option<String>,
        /// Which dead letters: exactly one selector.
        #[command(flatten)]
        selector: Selector,
        /// Show what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --position: replay the message it picks (which is shown first) without
        /// stopping. Positions shift as messages come and go, so without --yes (or
        /// --dry-run) --position only shows what it picks.
        #[arg(long)]
        yes: bool,
    },
}

/// What `dlq replay` replays: exactly one of these (clap refuses none or several with a
/// usage error; they used to be ANDed silently).
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub(super) struct Selector {
    /// Only the message with this id (as `dlq list` shows it: the AMQP message id, or
    /// `sha256:...` for a message without one).
    #[arg(long)]
    id: Option<String>,
    /// Only the message at this position (1-based, as `dlq list` shows it).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    position: Option<u64>,
    /// Only messages whose reason contains this text.
    #[arg(long)]
    reason_contains: Option<String>,
    /// Every message in the queue.
    #[arg(long)]
    all: bool,
}

/// Runs `dlq ...`.
pub(super) async fn run(command: DlqCommand) -> anyhow::Result<ExitCode> {
    let config = Config::from_env()?;
    let topology = Topology::with_prefix(&config.amqp_name_prefix);
    // Only the worker's dead-letter queues: `dlq list --queue refunds.unrouted` used to list
    // status events as if they were dead letters. Checked before connecting.
    let queue = match &command {
        DlqCommand::List { queue, .. }
        | DlqCommand::Show { queue, .. }
        | DlqCommand::Replay { queue, .. } => queue.clone(),
    }
    .unwrap_or_else(|| topology.commands_dlq.clone());
    let Some((exchange, routing_key)) = topology.replay_target(&queue) else {
        eprintln!(
            "error: `{queue}` is not a dead-letter queue of this worker; --queue takes {} or {}",
            topology.commands_dlq, topology.webhooks_dlq
        );
        return Ok(ExitCode::from(2));
    };
    let connection = super::exit::broker(&config, "refund-worker-dlq").await?;
    // The connection is closed on every path, errors included: left open, lapin's I/O
    // loop outlives the runtime and logs "a Tokio 1.x context ... is being shutdown".
    let code = act(command, &connection, &queue, &exchange, &routing_key).await;
    let _ = connection.close(200, "bye".into()).await;
    match code {
        Err(e) => match e.downcast_ref::<dlq::DlqError>() {
            Some(dlq::DlqError::NoQueue(queue)) => {
                eprintln!(
                    "error: queue `{queue}` does not exist (has a worker run with this \
                     AMQP_URL and AMQP_NAME_PREFIX? it declares the queues)"
                );
                Ok(super::exit::not_found())
            }
            _ => Err(e),
        },
        ok => ok,
    }
}

/// One `dlq` command on an open connection (which the caller closes).
async fn act(
    command: DlqCommand,
    connection: &lapin::Connection,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> anyhow::Result<ExitCode> {
    let queue = queue.to_string();
    let code = match command {
        DlqCommand::List {
            queue: _,
            limit,
            json,
        } => {
            let depth = dlq::depth(connection, &queue).await?;
            let limit = usize::try_from(limit).context("--limit is too large")?;
            let items = dlq::list(connection, &queue, limit).await?;
            let truncated = items.len() < depth as usize;
            if json {
                let listing = serde_json::json!({
                    "queue": queue, "depth": depth, "items": items, "truncated": truncated,
                });
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else {
                println!("{queue}: {depth} dead letter(s)");
                if !items.is_empty() {
                    println!("{:>4}  {:<36}  {:>8}  REASON", "POS", "ID", "REPLAYED");
                }
                for d in &items {
                    println!(
                        "{:>4}  {:<36}  {:>8}  {}",
                        d.position,
                        d.id,
                        d.replayed,
                        d.reason.as_deref().unwrap_or("(no reason header)")
                    );
                }
                if truncated {
                    println!(
                        "(showing {} of {depth}; --limit shows more, up to 1000)",
                        items.len()
                    );
                }
            }
            ExitCode::SUCCESS
        }
        DlqCommand::Show {
            which,
            queue: _,
            json,
        } => {
            let items = dlq::list(connection, &queue, usize::MAX).await?;
            // An id first: a message id may look like a number.
            let found = match items.iter().position(|d| d.id == which) {
                Some(i) => items.into_iter().nth(i),
                None => items
                    .into_iter()
                    .find(|d| which.parse::<usize>().ok() == Some(d.position)),
            };
            match found {
                Some(d) if json => {
                    println!("{}", serde_json::to_string_pretty(&d)?);
                    ExitCode::SUCCESS
                }
                Some(d) => {
                    print!("{}", render(&d));
                    ExitCode::SUCCESS
                }
                None => {
                    eprintln!("no dead letter `{which}` in {queue}");
                    super::exit::not_found()
                }
            }
        }
        DlqCommand::Replay {
            queue: _,
            selector,
            dry_run,
            yes,
        } => {
            let position = selector
                .position
                .map(usize::try_from)
                .transpose()
                .context("--position is too large")?;
            let filter = dlq::ReplayFilter::exactly_one(
                selector.id,
                position,
                selector.reason_contains,
                selector.all,
                ["--id", "--position", "--reason-contains", "--all"],
            )
            .map_err(anyhow::Error::msg)?;
            let filter = match filter {
                dlq::ReplayFilter::Position(p) => {
                    // Positions shift when messages are replayed or added: show what this
                    // one picks, and act on its id, so what was shown is what is replayed.
                    let items = dlq::list(connection, &queue, p).await?;
                    let Some(picked) = items.into_iter().find(|d| d.position == p) else {
                        eprintln!("error: no dead letter at position {p} in {queue}");
                        return Ok(super::exit::not_found());
                    };
                    println!(
                        "position {p} is {}: {}",
                        picked.id,
                        picked.reason.as_deref().unwrap_or("(no reason header)")
                    );
                    if !dry_run && !yes {
                        eprintln!(
                            "not replayed: check it is the one, then add --yes, or use --id {}",
                            picked.id
                        );
                        return Ok(super::exit::usage());
                    }
                    dlq::ReplayFilter::Id(picked.id)
                }
                other => other,
            };
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} examined")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let report = dlq::replay(
                connection,
                &queue,
                &filter,
                (exchange, routing_key),
                dry_run,
                |done, total| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                },
            )
            .await?;
            bar.finish_and_clear();
            if dry_run {
                println!(
                    "dry run: {} of {} dead letters match and would be replayed",
                    report.matched, report.examined
                );
                for d in &report.messages {
                    println!(
                        "  {:>4}  {}  {}",
                        d.position,
                        d.id,
                        d.reason.as_deref().unwrap_or("-")
                    );
                }
            } else {
                println!(
                    "replayed {}, failed {} (of {} matching, {} examined)",
                    report.replayed, report.failed, report.matched, report.examined
                );
            }
            if report.failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    };
    Ok(code)
}

/// `dlq show` as text: one field a line, then the body.
fn render(d: &dlq::DeadLetter) -> String {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    format!(
        "id:          {}\nposition:    {}\nmessage id:  {}\nreason:      {}\noriginally:  exchange {}, routing key {}\nreplayed:    {}\nbody:\n{}\n",
        d.id,
        d.position,
        or_dash(&d.message_id),
        d.reason.as_deref().unwrap_or("(no reason header)"),
        or_dash(&d.original_exchange),
        or_dash(&d.original_routing_key),
        d.replayed,
        d.body
    )
}

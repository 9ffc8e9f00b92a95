//! `refund-worker submit`: publishes one command, from a JSON file or from flags.

use crate::broker::{topology::COMMAND_ROUTING_KEY, Publisher, Topology};
use crate::config::Config;
use crate::domain::RefundCommand;
use crate::http::validation;
use anyhow::Context as _;
use clap::builder::PossibleValuesParser;
use serde_json::{json, Value};
use std::path::PathBuf;

/// Flags of `submit`.
#[derive(Debug, clap::Args)]
pub(super) struct SubmitArgs {
    /// Read the command from this JSON file (`-` for standard input). The command's fields
    /// come from the file only: the flags that would build one are refused with it.
    #[arg(long, conflicts_with_all = [
        "reference", "provider", "transaction", "amount", "currency", "reason",
        "account_number", "bank_code", "payment_amount", "callback_url",
    ])]
    file: Option<PathBuf>,
    /// refundReference (default: a new UUID).
    #[arg(long)]
    reference: Option<String>,
    /// Provider.
    #[arg(long, default_value = "va_services",
          value_parser = PossibleValuesParser::new(validation::provider_names()))]
    provider: String,
    /// transactionReference of the original payment.
    #[arg(long)]
    transaction: Option<String>,
    /// Amount, exact decimal (e.g. 25.17).
    #[arg(long)]
    amount: Option<String>,
    /// Currency code. Defaults to NGN for va_services (which refunds only NGN); required
    /// for the other providers.
    #[arg(long)]
    currency: Option<String>,
    /// Reason (default: "Customer requested a refund").
    #[arg(long)]
    reason: Option<String>,
    /// Destination account number (va_services).
    #[arg(long)]
    account_number: Option<String>,
    /// Destination bank code (va_services).
    #[arg(long)]
    bank_code: Option<String>,
    /// Amount of the original payment (enables the over-refund guard).
    #[arg(long)]
    payment_amount: Option<String>,
    /// Merchant callback URL.
    #[arg(long)]
    callback_url: Option<String>,
    /// Publish even if the command does not validate (to exercise the failure path).
    #[arg(long)]
    no_validate: bool,
}

/// Runs `submit`.
pub(super) async fn run(args: SubmitArgs) -> anyhow::Result<std::process::ExitCode> {
    if args.file.is_none() && args.currency.is_none() && args.provider != "va_services" {
        eprintln!(
            "error: --currency is required with --provider {} (only va_services defaults to NGN)",
            args.provider
        );
        return Ok(super::exit::usage());
    }
    let config = Config::from_env()?;
    let body = match &args.file {
        Some(path) if path.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
            s
        }
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => from_flags(&args).to_string(),
    };
    if !args.no_validate {
        RefundCommand::parse(body.as_bytes())
            .context("the command does not validate (use --no-validate to send it anyway)")?;
    }
    let connection = super::exit::broker(&config, "refund-worker-submit").await?;
    let topology = Topology::with_prefix(&config.amqp_name_prefix);
    let published = async {
        let channel = connection.create_channel().await?;
        topology
            .declare(&channel)
            .await
            .context("declaring the exchanges and queues")?;
        let publisher = Publisher::open(&connection).await?;
        let id = uuid::Uuid::new_v4().to_string();
        publisher
            .publish_json(
                &topology.exchange,
                COMMAND_ROUTING_KEY,
                body.as_bytes(),
                &id,
            )
            .await
            .context("publishing the command")?;
        anyhow::Ok(())
    }
    .await;
    // Closed on every path: left open, lapin's I/O loop outlives the runtime.
    let _ = connection.close(200, "bye".into()).await;
    published?;
    println!("{body}");
    eprintln!(
        "published to exchange `{}` with routing key `{COMMAND_ROUTING_KEY}` (confirmed)",
        topology.exchange
    );
    Ok(std::process::ExitCode::SUCCESS)
}

fn from_flags(a: &SubmitArgs) -> Value {
    let mut v = json!({
        "refundReference": a.reference.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        "provider": a.provider,
        "transactionReference": a.transaction,
        "amount": a.amount,
        "currency": a.currency.as_deref().unwrap_or("NGN"),
        "reason": a.reason.as_deref().unwrap_or("Customer requested a refund"),
    });
    if a.account_number.is_some() || a.bank_code.is_some() {
        v["destination"] = json!({"accountNumber": a.account_number, "bankCode": a.bank_code});
    }
    if let Some(p) = &a.payment_amount {
        v["paymentAmount"] = json!(p);
    }
    if let Some(u) = &a.callback_url {
        v["callbackUrl"] = json!(u);
    }
    v
}

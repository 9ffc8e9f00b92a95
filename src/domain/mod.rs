//! The refund domain: money, commands, the refund state machine and status events, and
//! every business decision the pipeline takes.
//!
//! Everything here is pure (no I/O, no clock reads except where a timestamp is passed in),
//! so the rules that matter most for a payment system (exact money, forward-only
//! transitions, the retry decision) are unit-tested without a database or broker. The
//! store reads what a decision needs inside the caller's transaction, asks the function
//! here, and writes what it answers:
//!
//! - [`intake`]: a command is new, a repeat or a conflict; the [`guard`] accepts or refuses
//!   a new one against its payment.
//! - [`refund::decide`]: what a dispatcher step does with the provider's answer.
//! - [`webhook`]: which refund a provider webhook names and what it does to it.
//! - [`fanout`]: what a status change writes besides the refund (history, outbox, merchant
//!   webhook).
//! - [`review`]: when a refund needs an operator, and what an operator's resolution does.

pub(crate) mod command;
pub(crate) mod event;
pub(crate) mod fanout;
pub(crate) mod guard;
pub(crate) mod intake;
pub(crate) mod money;
pub(crate) mod refund;
pub(crate) mod review;
pub(crate) mod webhook;

pub use command::{CommandError, Destination, ProviderName, RefundCommand};
pub use event::RefundEvent;
pub use guard::{AmountSource, Fallback, PaymentState};
pub use money::{currency_decimals, format_amount, json_number, parse_amount, MoneyError};
pub use refund::{
    decide, transition, CallKind, Decision, FailureCode, FailureReason, Fee, Phase,
    ProviderOutcome, RefundStatus, Transition, Wait,
};
pub use review::{GuardSource, Resolution, Review};

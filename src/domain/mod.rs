//! The refund domain: money, commands, the refund state machine and status events.
//!
//! Everything here is pure (no I/O, no clock reads except where a timestamp is passed in),
//! so the rules that matter most for a payment system (exact money, forward-only
//! transitions, the retry decision) are unit-tested without a database or broker.

pub mod command;
pub mod event;
pub mod guard;
pub mod money;
pub mod refund;
pub mod review;

pub use command::{CommandError, Destination, ProviderName, RefundCommand};
pub use event::RefundEvent;
pub use guard::{AmountSource, Fallback, PaymentState};
pub use money::{currency_decimals, format_amount, json_number, parse_amount, MoneyError};
pub use refund::{
    decide, transition, CallKind, Decision, FailureCode, FailureReason, Fee, Phase,
    ProviderOutcome, RefundStatus, Transition, Wait,
};
pub use review::{GuardSource, Resolution, Review};

//! refund-worker: moves refunds through payment providers, driven by RabbitMQ commands.
//!
//! The pieces, in the order data flows through them:
//!
//! - [`broker`]: RabbitMQ topology, the command consumer, publishing with confirms.
//! - [`domain`]: pure rules: exact money, command validation, the refund state machine.
//! - [`store`]: PostgreSQL, the source of truth: refunds, history, attempts, the outbox.
//! - [`pipeline`]: the loops that move work: intake (command -> row), dispatch (row ->
//!   provider -> row), relay (outbox -> broker), each a step function plus a thin loop.
//! - [`providers`]: one adapter per payment provider behind the [`providers::Provider`] trait.
//! - [`retry`]: the one retry policy (exponential backoff, full jitter).
//! - [`webhooks`]: outbound merchant webhooks (signing, delivery, network policy).
//! - [`http`]: health, readiness, metrics and the admin API.
//! - [`metrics`]: Prometheus metrics.
//! - [`schema`]: JSON Schemas of the command and the event.
//! - [`sandbox`]: a local simulator of the providers' APIs, for the demo and the tests.
//! - [`cli`]: the `refund-worker` command line.
//! - [`bench`]: the benchmark (`refund-worker bench`).

pub mod bench;
pub mod broker;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod http_validation;
pub mod metrics;
pub mod pipeline;
pub mod providers;
pub mod retry;
pub mod sandbox;
pub mod schema;
pub mod store;
pub mod telemetry;
pub mod webhooks;

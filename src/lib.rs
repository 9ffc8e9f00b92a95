//! refund-worker: moves refunds through payment providers, driven by RabbitMQ commands.
//!
//! The layers, from the rules at the bottom to the wiring at the top; each layer imports
//! only the ones below it:
//!
//! ```text
//!  cli ─ run and the operator commands (one binary); sandbox, demo, bench with `tools`
//!   │
//!  app ─ the application wired once (`run`, the demo and the tests start it): migrate,
//!   │     bind HTTP, providers, broker check; HTTP, metrics and the worker; drain in order
//!  http ─ health, metrics, admin API (+ its validation, console), the provider webhook route
//!   │
//!  provider_webhooks ─ provider webhooks in: verified with the adapter, queued with a confirm
//!   │
//!  pipeline ─ intake, provider webhooks applied, dispatch, relay, review, retention:
//!   │          each a step function (tests drive it) inside a thin loop (production runs it);
//!   │          recover and reconcile, an operator's one-off runs; owns the transactions
//!   ├── providers ────────── one adapter per provider: signing, requests, classification
//!   ├── broker ───────────── RabbitMQ topology, consuming with an ack window, publishing with confirms
//!   ├── merchant_webhooks ── merchant webhooks out: signing, delivery, network policy
//!   └── store ────────────── PostgreSQL: reads and writes inside the caller's transaction
//!        │
//!  domain ─ pure rules and every decision: money, commands, the state machine, the retry
//!           decision, intake judging and the guard, the provider-webhook decision, a status
//!           change's fan-out, review and resolution; no I/O, unit-tested without a database
//! ```
//!
//! - [`domain`]: pure rules: exact money, command validation, the refund state machine
//!   ([`domain::transition`], [`domain::decide`]), intake judging and the over-refund guard
//!   ([`domain::intake`]), the provider-webhook decision ([`domain::webhook`]), what a status
//!   change writes ([`domain::fanout`]), operator review.
//! - [`store`]: PostgreSQL, the source of truth: refunds, history, attempts, the outbox, the
//!   provider webhook inbox, merchant webhook deliveries, review flags, retention. Its functions that change several rows
//!   take the caller's transaction (`&mut PgConnection`): the pipeline (or the admin API,
//!   through it) begins and commits, and decides between the reads and the writes.
//! - [`broker`]: RabbitMQ topology, the consumers' ack window, publishing with confirms.
//! - [`providers`]: one adapter per payment provider behind the [`providers::Provider`] trait.
//! - [`merchant_webhooks`]: merchant webhooks out: signing, delivery, network policy (their
//!   rows are [`store::merchant_webhooks`]).
//! - `provider_webhooks`: provider webhooks in: the ingress verifies and queues them (the
//!   inbox is [`store::provider_webhooks`], applying them [`pipeline::provider_webhooks`]).
//! - [`pipeline`]: the loops that move work: intake (command -> row), provider_webhooks
//!   (provider webhook -> row), dispatch (row -> provider -> row), relay (outbox -> broker), review
//!   (open too long -> operator), retention (old operational rows -> gone); and an operator's
//!   recover (after an outage: a window's pending refunds asked about, webhooks re-sent) and
//!   reconcile (a provider's view against ours).
//! - [`retry`]: the one retry policy (exponential backoff, full jitter, `Retry-After` ceiling).
//! - [`http`]: health, readiness, metrics, the admin API and the provider webhook route, and their
//!   OpenAPI document, generated from the handlers' types ([`http::openapi`]).
//! - [`console`]: the operations console, a static page over the admin API (`/console`).
//! - [`metrics`]: Prometheus metrics.
//! - [`schema`]: JSON Schemas of the command and the event, and of the admin API's
//!   enum-like fields.
//! - [`config`], [`error`], [`telemetry`]: settings, error classes, logging.
//! - [`app`]: the application wired once: [`app::App::build`] then [`app::App::start`], and
//!   [`app::RunningApp::stopped`] drains in order; `run`, the demo and the tests use it.
//! - [`cli`]: the `refund-worker` command line; with the cargo feature `tools` (default) also
//!   `sandbox`, `demo` and `bench`.
//!
//! Beside this crate, in the same workspace: `crates/sandbox` (`refund-sandbox`, a local
//! simulator of the providers' APIs written from their docs, importing nothing of this
//! crate) and `crates/bench` (`refund-bench`, the load tool).

pub mod app;
pub mod broker;
pub mod cli;
pub mod config;
pub mod console;
pub mod domain;
pub(crate) mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod merchant_webhooks;
pub(crate) mod metrics;
pub mod pipeline;
pub(crate) mod provider_webhooks;
pub mod providers;
pub mod retry;
pub mod schema;
pub mod store;
pub mod telemetry;

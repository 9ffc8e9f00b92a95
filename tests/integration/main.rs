//! Integration tests: real PostgreSQL and RabbitMQ, providers played by the sandbox.
//!
//! One test binary (faster to build and link than one per file). Every test gets its own
//! database and its own prefixed exchanges and queues, so tests run in parallel.

mod admin;
mod broker;
mod cli;
mod dispatch;
mod docs_providers;
mod helpers;
mod hostile;
mod http_server;
mod inbound;
mod intake;
mod migrations;
mod pipeline;
mod provider_binance_pay;
mod provider_bpn;
mod provider_bvnk;
mod provider_webhooks;
mod reconcile;
mod recovery;
mod resilience;
mod retention;
mod review;
mod secrets;
mod stats;
mod tls;
mod webhooks;

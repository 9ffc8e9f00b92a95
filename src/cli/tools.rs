//! The tools of the command line, behind the cargo feature `tools` (on by default; the
//! production image is built without it, so its binary holds no simulator and no test key):
//! the provider sandbox, the demo and the bench.

mod bench;
mod demo;
mod sandbox;

use crate::telemetry::LogTo;
use clap::Subcommand;
use std::process::ExitCode;

/// A tool's subcommand.
#[derive(Debug, Subcommand)]
pub(crate) enum Tool {
    /// Run the provider sandbox (a local simulator of the providers' APIs).
    Sandbox(sandbox::SandboxArgs),
    /// Measure throughput and latency: the raw broker/database bound and the worker end to end.
    Bench(refund_bench::BenchArgs),
    /// Start the sandbox and a worker in-process, push refunds through them, print their
    /// journeys and a summary, and exit (non-zero if any refund ended unexpectedly).
    Demo(demo::DemoArgs),
}

impl Tool {
    /// The default log filter and where logs go.
    pub(crate) fn logging(&self) -> (&'static str, LogTo) {
        match self {
            Tool::Sandbox(_) => (crate::telemetry::SERVICE_FILTER, LogTo::Stdout),
            // The demo prints its own narrative and the bench its report; worker logs would
            // drown them (RUST_LOG=info shows them).
            Tool::Demo(_) | Tool::Bench(_) => ("warn,lapin=off", LogTo::Stderr),
        }
    }

    /// Runs the tool.
    pub(crate) async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Tool::Sandbox(args) => sandbox::run(args).await.map(|()| ExitCode::SUCCESS),
            Tool::Demo(args) => demo::run(args).await,
            Tool::Bench(args) => refund_bench::run(args, bench::worker()?).await,
        }
    }
}

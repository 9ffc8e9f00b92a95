//! demo placeholder
/// Flags of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}
/// Runs the demo.
pub async fn run(_args: DemoArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("demo is being written")
}

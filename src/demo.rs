//! (to be written)

/// Arguments of `havip-agent demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

/// Runs the demo.
pub async fn run(_args: DemoArgs) -> u8 {
    2
}

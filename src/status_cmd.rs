//! (to be written)

/// Arguments of `havip-agent status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {}

/// Runs the status command.
pub async fn run(_path: &std::path::Path, _args: StatusArgs) -> u8 {
    2
}

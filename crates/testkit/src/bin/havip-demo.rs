//! `havip-demo`: watch a real Sentinel failover move a VIP against the fake Tencent Cloud (the README's first
//! command), or keep a sandbox running for a real `havip-agent run` (`--sandbox`). Part of the test kit, so
//! the shipped `havip-agent` carries none of it.

use std::process::ExitCode;

use clap::Parser;
use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use havip_agent::logging::LogFormat;
use havip_testkit::demo::DemoArgs;

/// Watch a real Sentinel failover move a VIP, against the built-in fake cloud.
#[derive(Debug, Parser)]
#[command(name = "havip-demo", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr: human-readable, or one JSON object per line.
    #[arg(long, value_name = "FORMAT", default_value = "human",
          value_parser = PossibleValuesParser::new(LogFormat::NAMES).try_map(|s| s.parse::<LogFormat>()))]
    log_format: LogFormat,
    #[command(flatten)]
    demo: DemoArgs,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // The demo prints its own timeline; logs are kept to warnings.
    havip_agent::logging::init_with_default(cli.log_format, "warn");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("havip-demo: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    ExitCode::from(rt.block_on(havip_testkit::demo::run(cli.demo)))
}

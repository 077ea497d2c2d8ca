//! `migrate-havip`: move a HAVIP to this host or away from it, once. See `havip_agent::migrate`.

use std::process::ExitCode;

use clap::Parser;
use havip_agent::migrate::{self, Args, EXIT_PERMANENT};

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // clap prints usage errors; --help and --version are successes.
            let code = if e.use_stderr() { EXIT_PERMANENT } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    havip_agent::logging::init(args.log_format);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("migrate-havip: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_PERMANENT);
        }
    };
    ExitCode::from(rt.block_on(migrate::run(args)))
}

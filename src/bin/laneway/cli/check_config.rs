//! `laneway check-config FILE`.

use std::path::PathBuf;
use std::process::ExitCode;

use laneway::config::FileConfig;

/// Arguments of `check-config`.
#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// The config file to check (TOML, as in laneway.example.toml).
    pub file: PathBuf,
}

pub fn check_config(args: CheckConfigArgs) -> ExitCode {
    match FileConfig::load(&args.file) {
        Ok(config) => {
            println!(
                "{}: ok ({} source{}, {} group{})",
                args.file.display(),
                config.sources.len(),
                if config.sources.len() == 1 { "" } else { "s" },
                config.groups.len(),
                if config.groups.len() == 1 { "" } else { "s" },
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

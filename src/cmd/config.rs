//! `pgward config check`, `config print` and `config schema`.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::ConfigCommand;
use crate::config::{self, Config};

pub fn run(command: ConfigCommand, path: Option<&Path>) -> ExitCode {
    match command {
        // Exit 2 with `file:line:column` per problem (see `super::load`).
        ConfigCommand::Check => match super::load(path) {
            Ok(config) => {
                println!("{}: ok", source_name(&config));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        ConfigCommand::Print => match super::load(path) {
            Ok(config) => {
                print!("{}", config::redacted_yaml(&config));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        ConfigCommand::Schema => {
            print!("{}", config::json_schema());
            ExitCode::SUCCESS
        }
    }
}

fn source_name(config: &Config) -> String {
    match &config.source {
        Some(path) => path.display().to_string(),
        None => "built-in defaults".into(),
    }
}

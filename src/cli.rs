//! Command-line arguments, nginx-style.

use std::path::PathBuf;

pub const USAGE: &str = "\
Usage: strait [-c PATH] [-t]

A layer-4 (TCP/UDP) stream proxy that reads Apache APISIX's config.yaml and
serves its Admin API for stream routes.

Options:
  -c, --config PATH   config file (default: conf/config.yaml)
  -t, --test          check the config file and exit (0 when valid)
  -h, --help          print this help
  -V, --version       print the version

Environment:
  RUST_LOG            log filter (default: info), e.g. RUST_LOG=debug
";

pub enum Command {
    Run { config: PathBuf },
    Test { config: PathBuf },
    Help,
    Version,
}

pub fn parse(args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut config = PathBuf::from("conf/config.yaml");
    let mut test = false;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-c" | "--config" => config = args.next().ok_or("option -c needs a path")?.into(),
            "-t" | "--test" => test = true,
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "-v" | "--version" => return Ok(Command::Version),
            other => match other.strip_prefix("--config=") {
                Some(path) => config = path.into(),
                None => return Err(format!("unknown option: {other}")),
            },
        }
    }
    Ok(if test { Command::Test { config } } else { Command::Run { config } })
}

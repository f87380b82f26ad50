//! The `viewkeeper` binary: parse the command line, run, map the result to an exit code.

use std::process::ExitCode;

use std::io::IsTerminal;

use clap::Parser;

fn main() -> ExitCode {
    let cli = viewkeeper::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIEWKEEPER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Long lines stay whole when piped, so messages can be searched and parsed.
    let wrap = std::io::stderr().is_terminal();
    let _ = miette::set_hook(Box::new(move |_| {
        Box::new(miette::MietteHandlerOpts::new().wrap_lines(wrap).build())
    }));
    match viewkeeper::run(cli) {
        Ok(status) => status.into(),
        Err(error) => {
            eprintln!("{:?}", miette::Report::new(error));
            ExitCode::FAILURE
        }
    }
}

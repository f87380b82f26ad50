//! The `viewkeeper` binary: parse the command line, run, map the result to an exit code.

use std::process::ExitCode;

use std::io::IsTerminal;

use clap::Parser;

// Faster than the system allocator on the many small allocations of reading a project.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match viewkeeper::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // Usage errors exit 1, not clap's 2: `plan --detailed-exitcode` keeps 2 for
            // "changes pending". --help and --version still exit 0.
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let color = viewkeeper::color::choose(cli.color);
    color.write_global();
    let stderr_colored = viewkeeper::color::stderr_colored();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIEWKEEPER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(stderr_colored)
        .init();
    // Long lines stay whole when piped, so messages can be searched and parsed.
    let wrap = std::io::stderr().is_terminal();
    // Related problems nest under their headline, with no bare `Error:` line before each.
    let _ = miette::set_hook(Box::new(move |_| {
        Box::new(
            miette::MietteHandlerOpts::new()
                .wrap_lines(wrap)
                .color(stderr_colored)
                .show_related_errors_as_nested()
                .build(),
        )
    }));
    match viewkeeper::run(cli) {
        Ok(status) => status.into(),
        Err(error) => {
            eprintln!("{:?}", miette::Report::new(error));
            ExitCode::FAILURE
        }
    }
}

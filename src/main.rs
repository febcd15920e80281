//! The `amimake` executable: parse arguments, set up logging (`AMIMAKE_LOG`),
//! run the command and map its error to the documented exit code.

use clap::Parser;

fn main() {
    let cli = amimake::cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("AMIMAKE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    let code = match amimake::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            match &e {
                amimake::error::Error::Invalid(_) => eprintln!("{e}"),
                amimake::error::Error::Interrupted => eprintln!("amimake: interrupted"),
                _ => eprintln!("error: {e}"),
            }
            e.exit_code()
        }
    };
    std::process::exit(code);
}

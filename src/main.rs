//! The `observe` binary: `observe serve` (the default) runs the server; `observe migrate`
//! applies pending migrations and exits.

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use observe::startup::Application;
use observe_core::config::Settings;
use observe_core::{db, telemetry, trace};

const USAGE: &str = "usage: observe [serve|migrate]

  serve     apply pending migrations, then serve HTTP on OBSERVE_BIND (default)
  migrate   apply pending migrations and exit

Configuration: config/default.toml, overridden by environment variables (see README.md).";

fn main() -> ExitCode {
    let command = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "serve".to_string());
    if matches!(command.as_str(), "-h" | "--help" | "help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if !matches!(command.as_str(), "serve" | "migrate") {
        eprintln!("unknown command {command:?}\n\n{USAGE}");
        return ExitCode::from(2);
    }

    // Configuration problems are for a person at a terminal: plain text on stderr, exit 2.
    let mut settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("observe: {e}");
            return ExitCode::from(2);
        }
    };
    let notes = match settings.validate() {
        Ok(notes) => notes,
        Err(e) => {
            eprintln!("observe: {e}");
            return ExitCode::from(2);
        }
    };
    // Traces are configured by the standard OTEL_* variables; a request for traces observe
    // cannot honour is a configuration error like any other.
    let traces = match trace::Exporter::from_env() {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("observe: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log, traces.as_ref(), None);
    if notes.generated_secret_key {
        tracing::warn!(
            "SECRET_KEY is not set: using an ephemeral key for this run (development mode). \
             Sessions will not survive a restart; set SECRET_KEY to 32+ random characters."
        );
        if settings.squad.enabled() {
            tracing::warn!(
                "billing is on with an ephemeral SECRET_KEY: saved cards are sealed with a key                  derived from it and cannot be charged for renewals after a restart"
            );
        }
    }
    tracing::info!(
        mode = %settings.server.mode,
        bind = %settings.server.bind,
        command,
        traces = trace::enabled(),
        "observe starting"
    );

    let result = actix_web::rt::System::new().block_on(async move {
        match command.as_str() {
            "migrate" => db::migrate(&settings.database)
                .await
                .map(|applied| tracing::info!(applied = applied.len(), "migrations done"))
                .map_err(anyhow::Error::from),
            _ => match Application::build(settings).await {
                Ok(app) => app
                    .run_until_stopped(true)
                    .await
                    .map_err(anyhow::Error::from),
                Err(e) => Err(e.into()),
            },
        }
    });
    // Outside the runtime: the exporter's shutdown blocks until buffered spans are sent.
    if let Some(traces) = traces {
        traces.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "observe stopped with an error");
            eprintln!("observe: {e:#}");
            ExitCode::FAILURE
        }
    }
}

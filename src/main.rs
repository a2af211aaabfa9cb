//! The `hookd` command: parse arguments, run the command, report errors.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hookd::cli;

/// The send path allocates per request and per Kafka record from many
/// threads (tokio's and librdkafka's); glibc malloc showed up as a fifth of
/// the worker's CPU profile (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// hookd: webhook dispatch for IoT device events (Particle-compatible).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume device events from Kafka and deliver the webhooks they trigger.
    Worker(cli::worker::WorkerArgs),
    /// The control plane: REST API over the config log and traffic history.
    Api(cli::api::ApiArgs),
    /// Client of the api: create, list, get, edit, separate, delete, test,
    /// history, log.
    Integrations(cli::integrations::IntegrationsArgs),
    /// Dry run: print the request an integration would send for an event.
    Render(cli::render::RenderArgs),
    /// Produce device events (JSON lines, or simulated devices) to Kafka.
    Publish(cli::publish::PublishArgs),
    /// Everything in one process on an embedded broker, with sample integrations.
    Demo(cli::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render(args) => cli::render::run(args).map(|answer| println!("{answer}")),
        command => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(run_async(command))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hookd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_async(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Worker(args) => cli::worker::run(args).await,
        Command::Api(args) => cli::api::run(args).await,
        Command::Integrations(args) => {
            println!("{}", cli::integrations::run(args).await?);
            Ok(())
        }
        Command::Publish(args) => {
            let sent = cli::publish::run(args).await?;
            eprintln!("published {sent} events");
            Ok(())
        }
        Command::Demo(args) => cli::demo::run(args).await,
        Command::Render(_) => unreachable!("render runs without a runtime"),
    }
}

//! `hookd api --config FILE`: the control plane's REST API, stopped by
//! SIGTERM or SIGINT.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::runtime::config::Settings;

#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// TOML settings laid over config/default.toml (then HOOKD_* env over both).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

pub async fn run(args: ApiArgs) -> anyhow::Result<()> {
    let settings = Settings::load(args.config.as_deref())?;
    crate::runtime::telemetry::init_tracing(&settings.log.filter);
    if settings.api.tokens.is_empty() {
        tracing::warn!("api.tokens is empty: every request will be refused with 401");
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(super::worker::cancel_on_signal(shutdown.clone()));
    let running = crate::control::api::server::start(&settings, shutdown).await?;
    running.task.await?;
    tracing::info!("api stopped");
    Ok(())
}

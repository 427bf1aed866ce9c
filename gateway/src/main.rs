//! `solrouter`: the one binary, with one subcommand per role.
#![forbid(unsafe_code)]

use clap::{Args, Parser, Subcommand};
use solrouter_gateway::config::{Config, ConfigLayer};
use solrouter_gateway::{dev, mock, telemetry};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "solrouter", version, about = "A pay-per-token, OpenAI-compatible LLM gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a gateway, a one-node ledger and the built-in mock provider in one process.
    Dev(GatewayArgs),
    /// Run only the built-in mock upstream (OpenAI wire format; models `echo`,
    /// `unavailable`), e.g. as the target of a load test.
    MockUpstream {
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
    },
}

/// Settings shared by every role that serves the gateway API. Precedence: flags, then
/// `SOLROUTER_*` environment variables, then the TOML file, then defaults.
#[derive(Args)]
struct GatewayArgs {
    /// Address to serve on, e.g. 127.0.0.1:8080 (port 0 picks a free one).
    #[arg(long)]
    listen: Option<String>,
    /// Where the ledger and dev-mode state live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A TOML configuration file (keys as in `SOLROUTER_*` variables, lower case,
    /// without the prefix).
    #[arg(long, env = "SOLROUTER_CONFIG")]
    config: Option<PathBuf>,
}

impl GatewayArgs {
    fn config(self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(path) => ConfigLayer::from_file(path)?,
            None => ConfigLayer::default(),
        };
        let environment = ConfigLayer::from_env(|name| std::env::var(name).ok())?;
        let flags =
            ConfigLayer { listen: self.listen, data_dir: self.data_dir, ..ConfigLayer::default() };
        Ok(Config::try_new(file.overridden_by(environment).overridden_by(flags))?)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_logs();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Dev(args) => {
            let config = args.config()?;
            runtime.block_on(dev::run(config))
        }
        Command::MockUpstream { listen } => runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            dev::say(&format!("listening: http://{}/v1", listener.local_addr()?));
            mock::serve(listener, dev::shutdown_signal()).await?;
            Ok(())
        }),
    }
}

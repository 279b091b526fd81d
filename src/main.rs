//! The `harmony` command: `run` a worker, or `check-config` a file without connecting.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::watch;

use harmony::config::Config;
use harmony::runtime::http::{self, Health};
use harmony::runtime::telemetry::Metrics;
use harmony::runtime::worker;

/// Stage 2 allocates and frees small objects among millions of live ones (the record state);
/// glibc's allocator spent a sixth of stage 2's time searching its bins there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "harmony",
    version,
    about = "Keeps business records consistent across systems"
)]
struct Cli {
    /// Log format; `auto` is human-readable on a terminal and JSON otherwise.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, env = "HARMONY_LOG_FORMAT", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a worker of the consumer group until SIGTERM or SIGINT.
    Run {
        #[arg(long, short, env = "HARMONY_CONFIG")]
        config: PathBuf,
        /// The state topic was lost (deleted, recreated) while stage 2's offsets remained:
        /// rebuild the record state by reading the internal topic again from its start. Stop
        /// every other worker of the group first.
        #[arg(long)]
        rebuild_state: bool,
    },
    /// Validate a configuration file without connecting to anything.
    CheckConfig { file: PathBuf },
    /// Settles a held (`manual`) conflict: the chosen value becomes a change of the record
    /// from the system `operator`, delivered to every target.
    Resolve {
        #[arg(long, short, env = "HARMONY_CONFIG")]
        config: PathBuf,
        /// The conflict's id, as on the conflicts topic (`c-…`).
        conflict: String,
        /// Take the value of this system's candidate.
        #[arg(long, required_unless_present = "value", conflicts_with = "value")]
        pick: Option<String>,
        /// A value of your own, as a JSON literal (`4.95`, `"Kettle"`), read as the
        /// candidates' type.
        #[arg(long)]
        value: Option<String>,
        /// How long to look for the conflict and wait for the broker.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Auto,
    Json,
    Text,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HARMONY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => {
                println!(
                    "{}: ok ({} systems, {} entities, {} targets, output {})",
                    file.display(),
                    config.systems.len(),
                    config.entities.len(),
                    config.targets.len(),
                    config.output.topic
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::from(2)
            }
        },
        Command::Resolve {
            config,
            conflict,
            pick,
            value,
            timeout_secs,
        } => {
            init_logging(cli.log_format);
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: {e}", config.display());
                    return ExitCode::from(2);
                }
            };
            let choice = match (pick, value) {
                (Some(system), _) => harmony::resolve::settlement::Choice::Pick(system),
                (None, Some(literal)) => harmony::resolve::settlement::Choice::Value(literal),
                (None, None) => return ExitCode::from(2),
            };
            let timeout = std::time::Duration::from_secs(timeout_secs);
            let settled = tokio::runtime::Runtime::new()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    rt.block_on(harmony::runtime::settle::settle(
                        &config, &conflict, &choice, timeout,
                    ))
                });
            match settled {
                Ok(s) => {
                    println!(
                        "settled {conflict}: {} {} = {} (published to {})",
                        s.record_key, s.field, s.value, s.topic
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!(
                        "resolve {conflict}: {}",
                        harmony::runtime::telemetry::error_text(e.as_ref())
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            config,
            rebuild_state,
        } => {
            init_logging(cli.log_format);
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "invalid configuration");
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the async runtime");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(config, rebuild_state)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Whether a restart alone can help, for whoever reads the log at 3 am.
                    let retriable = e
                        .downcast_ref::<worker::WorkerError>()
                        .is_some_and(worker::WorkerError::is_retriable);
                    tracing::error!(
                        error = harmony::runtime::telemetry::error_text(e.as_ref()),
                        retriable,
                        "harmony stopped"
                    );
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(config: Config, rebuild_state: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).context("registering metrics")?;
    let health = Health::with_gauge(metrics.ready_gauge());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let mut http_shutdown = shutdown_rx.clone();
    let server = http::serve(config.http.address, registry, health.clone(), async move {
        let _ = http_shutdown.wait_for(|stop| *stop).await;
    })
    .await
    .with_context(|| format!("binding http.address {}", config.http.address))?;

    // Past this after the first signal the drain has failed to finish (a broker that does not
    // answer, a start-up stuck in a metadata request): exiting loses nothing that is not read
    // again, since offsets are stored only for acknowledged outputs.
    let exit_deadline = config.processing.shutdown_timeout + FORCED_EXIT_MARGIN;
    tokio::spawn(async move {
        let mut signals = Signals::install();
        signals.next().await;
        tracing::info!("termination signal received; draining (a second signal exits at once)");
        let _ = shutdown_tx.send(true);
        tokio::select! {
            () = signals.next() => {
                tracing::warn!("second termination signal; exiting without draining");
            }
            () = tokio::time::sleep(exit_deadline) => {
                tracing::error!(seconds = exit_deadline.as_secs(),
                    "shutdown did not finish within processing.shutdown_timeout; exiting without draining");
            }
        }
        std::process::exit(FORCED_EXIT_CODE);
    });

    tracing::info!(version = env!("CARGO_PKG_VERSION"), "harmony starting");
    let result = worker::run(
        &config,
        &metrics,
        &health,
        shutdown_rx.clone(),
        rebuild_state,
    )
    .await;
    // The worker can also stop on its own (fatal delivery error); take the server down too.
    drop(shutdown_rx);
    server.abort();
    result.context("worker")?;
    tracing::info!("harmony stopped cleanly");
    Ok(())
}

/// Added to `processing.shutdown_timeout` before a shutdown that has not finished is cut short:
/// the drain itself is bounded by the timeout; this covers the commit and the clients' close.
const FORCED_EXIT_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);
/// The exit status of a shutdown cut short (128 + SIGTERM, as if the signal had killed it).
const FORCED_EXIT_CODE: i32 = 143;

/// SIGTERM and SIGINT, as one stream.
struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Signals(Some((term, int))),
            _ => {
                tracing::error!("cannot install signal handlers; stop harmony with SIGKILL");
                Signals(None)
            }
        }
    }

    async fn next(&mut self) {
        let Some((term, int)) = self.0.as_mut() else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

//! The `tidewatch` command: parses arguments, runs the subcommand, maps
//! failures to exit codes (64 for configuration and usage errors).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use tidewatch::config::{parse_duration, Config, ConfigError, Problem};
use tidewatch::policy::{run_examples, PolicyLimits, PolicySource};
use tidewatch::worker::config::WorkerConfig;

/// EX_USAGE: a bad command line or configuration.
const EX_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "tidewatch",
    version,
    about = "Event-driven autoscaler: queue and latency signals in, scale commands out"
)]
struct Cli {
    /// Log format: human or json.
    #[arg(long, global = true, default_value = "human", value_parser = ["human", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The scaler: signals in, scale commands out, until SIGTERM/SIGINT.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// A provider worker: scale commands in, provider calls, results out.
    Worker {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate configuration files.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Work with Lua policies.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// The engine on a simulated service, in one process, no setup.
    Demo {
        /// Virtual seconds per real second (above 0, at most 200).
        #[arg(long, default_value_t = 60.0)]
        speed: f64,
        /// Virtual time to run, then print the summary.
        #[arg(long, default_value = "30m", value_parser = parse_duration)]
        duration: Duration,
        /// Virtual seconds between status lines.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        every: Duration,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Check a scaler or worker configuration (and every policy it names);
    /// exit 64 when bad.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Load policies in the sandbox and run the examples they declare.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn config_check(file: &std::path::Path) -> ExitCode {
    let (loaded, kind) = if WorkerConfig::is_worker_file(file) {
        (
            WorkerConfig::load(file).map(|(c, w)| (c.targets.len(), w)),
            "worker",
        )
    } else {
        (
            Config::load(file).map(|(c, w)| (c.targets.len(), w)),
            "scaler",
        )
    };
    match loaded {
        Ok((targets, warnings)) => {
            for w in &warnings {
                eprintln!("{}: {w}", file.display());
            }
            println!("{}: ok ({kind}, {targets} targets)", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            for p in &e.problems {
                eprintln!("{}: {p}", file.display());
            }
            let errors = e.problems.iter().filter(|p| !p.warning).count();
            eprintln!("{}: {errors} problem(s)", file.display());
            ExitCode::from(EX_USAGE)
        }
    }
}

fn policy_check(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        let outcome = PolicySource::read(file).and_then(|src| {
            let v = src.version.clone();
            run_examples(&src, PolicyLimits::default()).map(|o| (v, o))
        });
        match outcome {
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                return ExitCode::from(EX_USAGE);
            }
            Ok((version, outcomes)) => {
                if outcomes.is_empty() {
                    println!("{version}: loads; declares no examples");
                }
                for o in &outcomes {
                    let want = o.expected.map_or("hold".to_string(), |n| n.to_string());
                    if o.passed() {
                        println!("{version}: ok   {} (-> {want})", o.name);
                    } else {
                        failed = true;
                        let got = match &o.got {
                            Ok(g) => g.map_or("hold".to_string(), |n| n.to_string()),
                            Err(e) => format!("error: {e}"),
                        };
                        println!("{version}: FAIL {}: expected {want}, got {got}", o.name);
                    }
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Loads a configuration with `load` (problems: exit 64), then serves it
/// with `serve` until SIGTERM/SIGINT: exit 0 when it drained in time.
fn serve<C, F>(
    file: &std::path::Path,
    load: impl FnOnce(&std::path::Path) -> Result<(C, Vec<Problem>), ConfigError>,
    serve: impl FnOnce(C) -> F,
) -> ExitCode
where
    F: std::future::Future<Output = Result<bool, tidewatch::run::RunError>>,
{
    let cfg = match load(file) {
        Ok((cfg, warnings)) => {
            for w in &warnings {
                tracing::warn!("{}: {w}", file.display());
            }
            cfg
        }
        Err(e) => {
            for p in &e.problems {
                eprintln!("{}: {p}", file.display());
            }
            return ExitCode::from(EX_USAGE);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(cfg)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(tidewatch::run::RunError::Config(e)) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::from(EX_USAGE)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(file: &std::path::Path) -> ExitCode {
    serve(file, Config::load, |cfg| async {
        tidewatch::run::run(
            cfg,
            tidewatch::run::RunOptions::default(),
            tidewatch::run::shutdown_signal(),
        )
        .await
        .map(|r| r.drained)
    })
}

fn worker(file: &std::path::Path) -> ExitCode {
    serve(file, WorkerConfig::load, |cfg| async {
        tidewatch::worker::run(
            cfg,
            tidewatch::worker::WorkerOptions::default(),
            tidewatch::run::shutdown_signal(),
        )
        .await
        .map(|r| r.drained)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's live view is on stdout; its components log warnings only
    // (RUST_LOG=info shows every decision and command).
    let default_level = match cli.command {
        Command::Demo { .. } => "warn,tidewatch::kafka=error",
        _ => "info",
    };
    tidewatch::telemetry::init_logging(cli.log_format == "json", default_level);
    match cli.command {
        Command::Run { config } => run(&config),
        Command::Worker { config } => worker(&config),
        Command::Config {
            action: ConfigAction::Check { file },
        } => config_check(&file),
        Command::Policy {
            action: PolicyAction::Check { files },
        } => policy_check(&files),
        Command::Demo {
            speed,
            duration,
            every,
        } => {
            if !(speed > 0.0 && speed <= 200.0) {
                eprintln!(
                    "--speed {speed}: give a number above 0 and at most 200 (virtual seconds \
                     per real second; the embedded Kafka, scaler and worker run in real time)"
                );
                return ExitCode::from(EX_USAGE);
            }
            let opts = tidewatch::demo::DemoOptions {
                speed,
                duration,
                print_every: every,
                ..Default::default()
            };
            match tidewatch::demo::run(&opts, &mut std::io::stdout()) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

//! The `tidewatch` command: parses arguments, runs the subcommand, maps
//! failures to exit codes (64 for configuration and usage errors).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use tidewatch::config::{parse_duration, Config, ConfigError, Problem};
use tidewatch::policy::{run_examples, PolicyLimits, PolicySource};
use tidewatch::worker::config::WorkerConfig;

use tidewatch::lifecycle::{StartError, EX_USAGE};

/// sysexits.h: the input data was incorrect.
const EX_DATAERR: u8 = 65;

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
    /// Work with signal messages.
    Signals {
        #[command(subcommand)]
        action: SignalsAction,
    },
    /// Steer a running scaler's targets (control messages published where
    /// it reads signals) and read their state (its status endpoint).
    Ctl {
        /// The scaler's configuration: its source and metrics address.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: CtlAction,
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
        /// Also write the demo's load and replicas as a plot (.png or .svg).
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Replay a load trace through policies against a capacity model, in
    /// virtual time, and score them side by side.
    Simulate(Box<SimulateArgs>),
    /// Publish the demo's queue-depth wave as signals where a scaler
    /// configuration reads them (Kafka or RabbitMQ), until SIGTERM/SIGINT.
    Loadgen {
        /// The scaler's configuration: its source and its targets.
        #[arg(long, short)]
        config: PathBuf,
        /// A target to publish for; repeat for several (default: all).
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Time between two signals of a target.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        every: Duration,
        /// Length of one "day" of the wave.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        day: Duration,
        /// Queue depth at the wave's trough.
        #[arg(long, default_value_t = 40.0)]
        base: f64,
        /// The wave's rise from trough to crest (doubled during the spike).
        #[arg(long, default_value_t = 400.0)]
        swing: f64,
        /// Stop after this many rounds (one signal per target).
        #[arg(long)]
        rounds: Option<u64>,
    },
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// CSV `ts,value` (unix seconds or ms; a load level per second).
    #[arg(long, required_unless_present_any = ["corpus", "generate"])]
    trace: Option<PathBuf>,
    /// Score every `*.csv` in this directory under the corpus protocol
    /// (capacity = peak / 30, start-up 2m, step 60s, warm-up 14d or 7d),
    /// with --sweep; per trace and medians over seasonal and bursty.
    #[arg(long, requires = "sweep")]
    corpus: Option<PathBuf>,
    /// With the corpus: also N generated traces of each kind (seeds
    /// --seed to --seed + N - 1).
    #[arg(long, default_value_t = 0, requires = "sweep")]
    generate: u32,
    /// The first seed of the generated traces.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// With --generate: also write each generated trace to DIR/NAME.csv, and
    /// its predictable part (no noise, no bursts, no gaps) to DIR/clean/NAME.csv.
    #[arg(long, value_name = "DIR", requires = "generate")]
    write_generated: Option<PathBuf>,
    /// Days of each generated trace.
    #[arg(long, default_value_t = 28)]
    days: u32,
    /// A Lua policy; repeat to compare several in one run.
    #[arg(long = "policy", required = true)]
    policies: Vec<PathBuf>,
    /// Load units one replica serves per second (the corpus sets it per trace).
    #[arg(long, required_unless_present_any = ["corpus", "generate"])]
    capacity: Option<f64>,
    /// Seconds until a new replica is ready.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    startup: Duration,
    /// Span replayed before scoring starts.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// Span scored after the warm-up (default: the rest of the trace).
    #[arg(long, value_parser = parse_duration)]
    span: Option<Duration>,
    #[arg(long, default_value_t = 1)]
    min: u32,
    #[arg(long, default_value_t = 1000)]
    max: u32,
    /// Simulation step: the engine ticks once per step.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    step: Duration,
    /// Queueing delay above this counts against the SLO.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    slo: Duration,
    /// The guard's scale-down stabilization, for every policy.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    stabilization: Duration,
    /// How often the built-in forecasters are refitted.
    #[arg(long, default_value = "6h", value_parser = parse_duration)]
    refit: Duration,
    /// The built-in forecasters' season, as a target's `forecast_season`:
    /// auto, holdout, none or a duration.
    #[arg(long, default_value = "auto")]
    season: String,
    /// A policy parameter for every policy, KEY=VALUE (VALUE as JSON, else a string).
    #[arg(long = "param")]
    params: Vec<String>,
    /// Frontier scoring: run every policy at each value of one parameter,
    /// KEY=V1,V2,... (values as JSON, else strings).
    #[arg(long)]
    sweep: Option<String>,
    /// With --sweep: the policy the others are compared with, at its
    /// default setting (default: the first --policy).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// With --sweep of numbers: up to N more runs of each policy, each at
    /// the value halfway between the two neighbouring values whose costs
    /// are closest around the baseline's, so that the reading at the
    /// baseline's cost is measured rather than interpolated over a wide gap.
    #[arg(long, default_value_t = 0, requires = "sweep")]
    refine: u32,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write a plot here (.png or .svg).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write every scored step here as CSV: ts, load, need, and each
    /// policy's ready replicas (not with --sweep).
    #[arg(long, conflicts_with = "sweep")]
    series: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn simulate(a: &SimulateArgs) -> ExitCode {
    let mut o = tidewatch::simulate::Options::new(
        a.trace.clone().unwrap_or_default(),
        a.policies.clone(),
        a.capacity.unwrap_or(1.0),
    );
    o.startup = a.startup;
    o.warmup = a.warmup;
    o.span = a.span;
    o.min = a.min;
    o.max = a.max;
    o.step = a.step;
    o.slo = a.slo;
    o.stabilization = a.stabilization;
    o.refit = a.refit;
    if let Err(e) = tidewatch::forecast::builtin::Season::parse(&a.season) {
        eprintln!("--season: {e}");
        return ExitCode::from(EX_USAGE);
    }
    o.season = a.season.clone();
    o.refine = a.refine;
    for kv in &a.params {
        let Some((k, v)) = kv.split_once('=') else {
            eprintln!("--param {kv:?}: give KEY=VALUE");
            return ExitCode::from(EX_USAGE);
        };
        let v = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.into()));
        o.params.insert(k.into(), v);
    }
    let out = tidewatch::simulate::Output {
        report: a.report.clone(),
        plot: a.plot.clone(),
        series: a.series.clone(),
        progress: !a.quiet,
    };
    let result = match &a.sweep {
        Some(sweep) => {
            let Some((key, values)) = sweep.split_once('=') else {
                eprintln!("--sweep {sweep:?}: give KEY=V1,V2,...");
                return ExitCode::from(EX_USAGE);
            };
            let values: Vec<serde_json::Value> = values
                .split(',')
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    serde_json::from_str(v.trim())
                        .unwrap_or_else(|_| serde_json::Value::String(v.trim().into()))
                })
                .collect();
            let baseline = a.baseline.clone().unwrap_or_else(|| a.policies[0].clone());
            let stdout = &mut std::io::stdout();
            if a.corpus.is_some() || a.generate > 0 {
                let c = tidewatch::simulate::corpus::Corpus {
                    dir: a.corpus.clone(),
                    generated: a.generate,
                    first_seed: a.seed,
                    days: a.days,
                    write_generated: a.write_generated.clone(),
                };
                tidewatch::simulate::main_corpus(&o, &out, &c, key, &values, &baseline, stdout)
            } else {
                tidewatch::simulate::main_sweep(&o, &out, key, &values, &baseline, stdout)
            }
        }
        None => tidewatch::simulate::main(&o, &out, &mut std::io::stdout()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(tidewatch::simulate::Failure::Usage(e)) => {
            eprintln!("simulate: {e}");
            ExitCode::from(EX_USAGE)
        }
        Err(tidewatch::simulate::Failure::Other(e)) => {
            eprintln!("simulate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Who, why and until when, for every control action.
#[derive(clap::Args, Debug, Clone)]
struct CtlMeta {
    /// When the control lifts itself: a duration from now ("30m") or an
    /// RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
    /// Why (shown in every command's reason while it is in force).
    #[arg(long)]
    reason: Option<String>,
    /// Who (default: $USER).
    #[arg(long)]
    by: Option<String>,
}

#[derive(Subcommand)]
enum CtlAction {
    /// No commands for the target.
    Pause {
        target: String,
        #[command(flatten)]
        meta: CtlMeta,
    },
    /// No scale-downs.
    PauseScaleIn {
        target: String,
        #[command(flatten)]
        meta: CtlMeta,
    },
    /// No scale-ups.
    PauseScaleOut {
        target: String,
        #[command(flatten)]
        meta: CtlMeta,
    },
    /// One command to REPLICAS, then nothing.
    Pin {
        target: String,
        replicas: u32,
        #[command(flatten)]
        meta: CtlMeta,
    },
    /// Commands carry dry_run = true (on) or false (off).
    DryRun {
        target: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        meta: CtlMeta,
    },
    /// Lift every control of the target.
    Resume {
        target: String,
        #[command(flatten)]
        meta: CtlMeta,
    },
    /// Each target's replicas, last decision, controls and staleness.
    Status {
        target: Option<String>,
        /// The scaler's address (default: from metrics.listen).
        #[arg(long)]
        url: Option<String>,
        /// The JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Check a scaler or worker configuration (and every policy it names);
    /// exit 64 when bad.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum SignalsAction {
    /// Decode sample messages with a configured input's format and print
    /// the signal each record becomes, or why it becomes none; exit 65
    /// when any record is refused or matches no configured target.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// The input: its index in [[source.inputs]], its topic or its
        /// routing-key pattern (default: tidewatch's own messages).
        #[arg(long)]
        input: Option<String>,
        /// One message per line (a log or a broker dump) instead of one per file.
        #[arg(long)]
        lines: bool,
        #[arg(required = true)]
        samples: Vec<PathBuf>,
    },
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
            Config::load_for_run(file).map(|(c, w)| (c.targets.len(), w)),
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
                        let got = o.got_text();
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
    F: std::future::Future<Output = Result<bool, StartError>>,
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
        Err(e @ StartError::Usage(_)) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::from(e.exit_code())
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(file: &std::path::Path) -> ExitCode {
    // before the configuration of every target is read
    tidewatch::priority::without_huge_pages();
    serve(file, Config::load_for_run, |cfg| async {
        tidewatch::scaler::run(
            cfg,
            tidewatch::scaler::RunOptions {
                config_path: Some(file.to_owned()),
                ..Default::default()
            },
            tidewatch::lifecycle::shutdown_signal(),
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
            tidewatch::lifecycle::shutdown_signal(),
        )
        .await
        .map(|r| r.drained)
    })
}

fn loadgen(file: &std::path::Path, o: tidewatch::app::loadgen::LoadgenOptions) -> ExitCode {
    serve(file, Config::load, |cfg| async move {
        let n = tidewatch::app::loadgen::run(
            &cfg,
            &o,
            &tidewatch::clock::SystemClock,
            tidewatch::lifecycle::shutdown_signal(),
        )
        .await
        .map_err(|e| e.context("loadgen"))?;
        tracing::info!("loadgen: {n} signals published");
        Ok(true)
    })
}

fn ctl(config: Option<PathBuf>, action: CtlAction) -> ExitCode {
    use tidewatch::app::ctl;
    use tidewatch::event::ControlAction as A;
    // `status --url` needs no configuration file
    if let (
        None,
        CtlAction::Status {
            target,
            url: Some(url),
            json,
        },
    ) = (&config, &action)
    {
        let rt = match tokio::runtime::Runtime::new() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        return match rt.block_on(ctl::status(url, target.as_deref())) {
            Ok(v) if *json => {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Ok(v) => {
                print!("{}", ctl::table(&v));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ctl: {e}");
                ExitCode::from(e.exit_code())
            }
        };
    }
    let Some(file) = config else {
        eprintln!("ctl: give the scaler's configuration with --config (or status --url)");
        return ExitCode::from(EX_USAGE);
    };
    let (action, target, replicas, meta) = match action {
        CtlAction::Status { target, url, json } => {
            return serve(&file, Config::load, |cfg| async move {
                let base = url.unwrap_or_else(|| ctl::status_url(&cfg));
                let v = ctl::status(&base, target.as_deref()).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                } else {
                    print!("{}", ctl::table(&v));
                }
                Ok(true)
            })
        }
        CtlAction::Pause { target, meta } => (A::Pause, target, None, meta),
        CtlAction::PauseScaleIn { target, meta } => (A::PauseScaleIn, target, None, meta),
        CtlAction::PauseScaleOut { target, meta } => (A::PauseScaleOut, target, None, meta),
        CtlAction::Pin {
            target,
            replicas,
            meta,
        } => (A::Pin, target, Some(replicas), meta),
        CtlAction::DryRun {
            target,
            state,
            meta,
        } => {
            let a = if state == "on" {
                A::DryRunOn
            } else {
                A::DryRunOff
            };
            (a, target, None, meta)
        }
        CtlAction::Resume { target, meta } => (A::Resume, target, None, meta),
    };
    let order = ctl::Order {
        action,
        target,
        replicas,
        until: meta.until,
        by: meta.by.or_else(|| std::env::var("USER").ok()),
        reason: meta.reason,
    };
    serve(&file, Config::load, |cfg| async move {
        let now = chrono::Utc::now().timestamp_millis();
        let (m, routed) = ctl::publish(&cfg, &order, now).await?;
        println!("{m}");
        if !routed {
            eprintln!("ctl: the broker routed the control to no queue: is the scaler running?");
        }
        Ok(routed)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's live view is on stdout; its components log warnings only
    // (RUST_LOG=info shows every decision and command).
    let default_level = match cli.command {
        Command::Demo { .. } => "warn,tidewatch::broker::kafka=error",
        // a simulation decides thousands of times a second: the table is the output
        Command::Simulate(_) => "warn",
        _ => "info",
    };
    tidewatch::telemetry::init_logging(cli.log_format == "json", default_level);
    match cli.command {
        Command::Run { config } => run(&config),
        Command::Worker { config } => worker(&config),
        Command::Config {
            action: ConfigAction::Check { file },
        } => config_check(&file),
        Command::Ctl { config, action } => ctl(config, action),
        Command::Policy {
            action: PolicyAction::Check { files },
        } => policy_check(&files),
        Command::Simulate(a) => simulate(&a),
        Command::Signals {
            action:
                SignalsAction::Check {
                    config,
                    input,
                    lines,
                    samples,
                },
        } => {
            let opts = tidewatch::app::signals::CheckOptions {
                config,
                input,
                samples,
                lines,
            };
            match tidewatch::app::signals::check(&opts, &mut std::io::stdout()) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(EX_DATAERR),
                Err(tidewatch::app::signals::Usage(e)) => {
                    eprintln!("signals check: {e}");
                    ExitCode::from(EX_USAGE)
                }
            }
        }
        Command::Loadgen {
            config,
            targets,
            every,
            day,
            base,
            swing,
            rounds,
        } => loadgen(
            &config,
            tidewatch::app::loadgen::LoadgenOptions {
                targets,
                every,
                day,
                base,
                swing,
                rounds,
            },
        ),
        Command::Demo {
            speed,
            duration,
            every,
            plot,
        } => {
            if !(speed > 0.0 && speed <= 200.0) {
                eprintln!(
                    "--speed {speed}: give a number above 0 and at most 200 (virtual seconds \
                     per real second; the embedded Kafka, scaler and worker run in real time)"
                );
                return ExitCode::from(EX_USAGE);
            }
            let opts = tidewatch::app::demo::DemoOptions {
                speed,
                duration,
                print_every: every,
                plot,
                ..Default::default()
            };
            match tidewatch::app::demo::run(&opts, &mut std::io::stdout()) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

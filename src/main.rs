use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use chrono::{TimeDelta, Utc};
use clap::{Parser, Subcommand};

use alarm_verifier::alarm::Alarm;
use alarm_verifier::clip;
use alarm_verifier::config::Config;
use alarm_verifier::demo;
use alarm_verifier::detect::Detector;
use alarm_verifier::service;
use alarm_verifier::verify::Verifier;

/// Video alarm verification: takes the clip around an alarm, runs a person/vehicle detector and
/// tells the monitoring centre whether the alarm is real.
#[derive(Parser)]
#[command(name = "alarm-verifier", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: ingest cameras, verify alarms from MQTT, publish verdicts.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a config file and report the first problem, naming the key.
    CheckConfig { file: PathBuf },
    /// Verify a recorded clip offline and print the verdict document as JSON.
    VerifyClip {
        file: PathBuf,
        /// Second of the file at which the alarm fired.
        #[arg(long)]
        alarm_at: f64,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Write the annotated evidence JPEG here.
        #[arg(long)]
        evidence: Option<PathBuf>,
    },
    /// A self-contained demo: a local RTSP camera with real footage, a broker, the service, one alarm.
    Demo,
    /// Time the detector per frame (preprocess, inference, postprocess) beside Python onnxruntime,
    /// and the verification of one clip.
    Bench {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The clip to take frames from and to verify.
        #[arg(long, default_value = "testdata/vtest.mp4")]
        clip: PathBuf,
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// Python with onnxruntime and numpy (scripts/pytools.sh makes one); "none" skips the comparison.
        #[arg(long, default_value = "third_party/pyenv/bin/python")]
        python: PathBuf,
    },
    /// Serve MP4 (H.264) files as RTSP cameras on 127.0.0.1, to try a config without a real camera.
    ServeRtsp {
        /// Cameras as NAME=FILE; each is served at rtsp://127.0.0.1:PORT/NAME.
        #[arg(required = true)]
        mounts: Vec<String>,
        #[arg(long, default_value_t = 8554)]
        port: u16,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> Result<()> {
    match command {
        Command::Run { config } => {
            let config = Config::load(&config)?;
            runtime()?.block_on(service::run(config, shutdown_signal()))?;
            Ok(())
        }
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            println!("{}: ok ({} cameras)", file.display(), config.cameras.len());
            Ok(())
        }
        Command::VerifyClip {
            file,
            alarm_at,
            config,
            evidence,
        } => verify_clip(&file, alarm_at, config.as_deref(), evidence.as_deref()),
        Command::ServeRtsp { mounts, port } => serve_rtsp(&mounts, port),
        Command::Bench { config, clip, runs, python } => {
            let config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::offline_default(),
            };
            let python = (python.as_os_str() != "none").then_some(python);
            if let Some(p) = python.as_ref().filter(|p| !p.exists()) {
                eprintln!("note: {} not found (run scripts/pytools.sh); skipping the onnxruntime comparison", p.display());
            }
            let python = python.filter(|p| p.exists());
            let options = alarm_verifier::bench::BenchOptions { clip, runs: runs.max(1), python };
            println!("{}", alarm_verifier::bench::run(&config, &options)?);
            Ok(())
        }
        Command::Demo => {
            let verdict = runtime()?.block_on(demo::run_demo())?;
            println!("demo: verdict received over MQTT:\n{verdict}");
            Ok(())
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn verify_clip(file: &Path, alarm_at: f64, config: Option<&Path>, evidence: Option<&Path>) -> Result<()> {
    anyhow::ensure!(alarm_at.is_finite() && alarm_at >= 0.0, "--alarm-at: expected seconds from the start of the file, 0 or more");
    let config = match config {
        Some(path) => Config::load(path)?,
        None => Config::offline_default(),
    };
    gstreamer::init().context("GStreamer cannot start")?;
    let detector = Arc::new(Detector::load(&config.detector)?);
    let verifier = Verifier::new(detector, &config);
    let now = Utc::now();
    let alarm = Alarm {
        alarm_id: format!("clip-{}", uuid::Uuid::new_v4().simple()),
        camera: file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "clip".into()),
        time: now,
        source: Some(file.display().to_string()),
        received: now,
        received_at: tokio::time::Instant::now(),
    };
    // The alarm is "now"; the file's first frame is alarm_at seconds before it.
    let base = now - TimeDelta::milliseconds((alarm_at * 1000.0) as i64);
    let window = verifier.window(&alarm);
    let mut finding = verifier
        .analyze(&alarm, |on_frame| clip::decode_file(file, base, window, on_frame))
        .with_context(|| format!("{}: alarm at {alarm_at} s", file.display()))?;
    finding.doc.latency_ms = alarm.received_at.elapsed().as_millis() as u64;
    if let (Some(path), Some(jpeg)) = (evidence, &finding.evidence) {
        std::fs::write(path, jpeg).with_context(|| format!("{}: cannot write the evidence image", path.display()))?;
    }
    println!("{}", serde_json::to_string_pretty(&finding.doc)?);
    Ok(())
}

fn serve_rtsp(mounts: &[String], port: u16) -> Result<()> {
    let pairs = mounts
        .iter()
        .map(|m| {
            m.split_once('=')
                .map(|(name, file)| (name, PathBuf::from(file)))
                .with_context(|| format!("mount {m:?}: expected NAME=FILE"))
        })
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<(&str, &Path)> = pairs.iter().map(|(n, f)| (*n, f.as_path())).collect();
    let server = demo::RtspCameraServer::start_on(&refs, port)?;
    for (name, file) in &refs {
        println!("{} -> {}", server.url(name), file.display());
    }
    runtime()?.block_on(shutdown_signal());
    Ok(())
}

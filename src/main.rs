//! The command line: a thin layer over the library that parses arguments, sets up logging and
//! turns errors into a message and an exit code. Each command calls into `service`, `analysis` or
//! `tools`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use alarm_verifier::analysis::clip::Decoders;
use alarm_verifier::analysis::detect::Detector;
use alarm_verifier::analysis::verify::Verifier;
use alarm_verifier::config::{Config, Secret};
use alarm_verifier::service;
use alarm_verifier::support::gst as gst_support;
use alarm_verifier::tools::{demo, probe, storm};

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
        /// Judge by this camera's policy from the config (zones, masks, overrides).
        #[arg(long)]
        camera: Option<String>,
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
    /// An alarm storm on a site of many cameras served from files (scripts/storm.sh runs it with and
    /// without detect streams): verdicts in time, correct verdicts, latency, core-seconds per alarm,
    /// and the service's CPU and memory. Exit code 0 whenever it ran, whatever the numbers.
    BenchStorm {
        /// Cameras; the first half (--people-fraction) show people, the others empty scenes.
        #[arg(long, default_value_t = 100)]
        cameras: usize,
        /// Alarms, each on a camera of its own, half on people cameras and half on empty ones.
        #[arg(long, default_value_t = 40)]
        alarms: usize,
        /// Seconds over which the alarms are sent.
        #[arg(long, default_value_t = 4.0)]
        within: f64,
        /// Cameras without a detect stream (no `detect_url`): the main stream is analysed.
        #[arg(long)]
        no_detect: bool,
        /// Share of the cameras, and of the alarms, that show people.
        #[arg(long, default_value_t = 0.5)]
        people_fraction: f64,
        /// TOML added to the site config, e.g. '[verdict]\nworkers = 2' (a literal \n is a new line).
        #[arg(long, default_value = "")]
        extra: String,
        /// Keep the run's folder (config, logs, store) and print its path.
        #[arg(long)]
        keep: bool,
    },
    /// Verify every clip of a labelled set (DIR/labels.tsv) and score the verdicts; exits non-zero
    /// when a real intrusion is missed.
    Eval {
        dir: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write the clips of alarms with operator feedback, and a labels.tsv, for `eval`.
    ExportEval {
        #[arg(long)]
        config: PathBuf,
        /// Only alarms received since this RFC 3339 time.
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        out_dir: PathBuf,
    },
    /// Build the labelled development set from the footage and photographs scripts/setup.sh fetched.
    MakeDevset {
        #[arg(long, default_value = "testdata")]
        footage: PathBuf,
        #[arg(long, default_value = "testdata/sources")]
        images: PathBuf,
        #[arg(long, default_value = "testdata/devset")]
        out: PathBuf,
    },
    /// Probe a camera before adding it: by its ONVIF address (profiles, stream URIs, clock, motion
    /// events) and/or an RTSP URL (TCP and UDP, frame rate, GOP, a snapshot); prints the
    /// `[[camera]]` block to paste.
    Probe {
        /// An RTSP URL to probe (credentials in it); with --onvif it replaces the found main stream.
        rtsp_url: Option<String>,
        /// The ONVIF device service, e.g. http://10.0.0.5/onvif/device_service.
        #[arg(long)]
        onvif: Option<String>,
        #[arg(long, default_value = "")]
        username: String,
        /// The environment variable holding the ONVIF password.
        #[arg(long)]
        password_env: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Save a snapshot JPEG of the main stream here.
        #[arg(long)]
        snapshot: Option<PathBuf>,
        /// Seconds to watch the stream for its frame rate and GOP.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
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

/// The intakes a config turns on, for check-config.
fn intakes(config: &Config) -> String {
    let mut on = vec!["mqtt".to_owned()];
    if let Ok(Some(address)) = config.http.address() {
        on.push(format!("http {address}"));
    }
    if let Ok(Some(address)) = config.smtp.address() {
        on.push(format!("smtp {address}"));
    }
    let onvif = config.cameras.iter().filter(|c| c.onvif.is_some()).count();
    if onvif > 0 {
        on.push(format!("onvif ({onvif} of the cameras)"));
    }
    if !config.dc09.listen.trim().is_empty() {
        on.push(format!(
            "dc09 {} ({} panels)",
            config.dc09.listen,
            config.dc09.panels.len()
        ));
    }
    on.join(", ")
}

/// Where verdicts go, for check-config.
fn outputs(config: &Config) -> String {
    let mut to = vec![format!("mqtt {}:{}", config.mqtt.host, config.mqtt.port)];
    if let Some(arc) = &config.dc09.arc {
        let backup = arc
            .backup
            .as_deref()
            .map(|b| format!(", backup {b}"))
            .unwrap_or_default();
        let format = match arc.format {
            alarm_verifier::config::ArcFormat::SiaDcs => "sia-dcs",
            alarm_verifier::config::ArcFormat::AdmCid => "adm-cid",
        };
        let protocol = format!("{:?}", arc.protocol).to_lowercase();
        to.push(format!(
            "dc09 ARC {}:{} ({protocol}, {format}{backup})",
            arc.host, arc.port
        ));
    }
    let mail = &config.email_out;
    if mail.enabled() {
        to.push(format!(
            "e-mail via {}:{} ({}) to {}",
            mail.host,
            mail.port(),
            format!("{:?}", mail.tls).to_lowercase(),
            mail.to.join(", ")
        ));
    }
    to.join(", ")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // bench-storm's output is its report; the service it runs logs to a file of its own.
    let default_filter = match cli.command {
        Command::BenchStorm { .. } => "warn",
        _ => "info",
    };
    init_logging(default_filter);
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by RUST_LOG (else `default_filter`), with a cap that RUST_LOG cannot
/// lift: mailin traces every line it reads, AUTH lines too (base64 credentials), so its trace
/// level stays off.
fn init_logging(default_filter: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let wanted = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let never_secrets = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::TRACE)
        .with_target("mailin", tracing::Level::DEBUG);
    tracing_subscriber::registry()
        .with(never_secrets)
        .with(wanted)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
}

fn execute(command: Command) -> Result<()> {
    match command {
        Command::Run { config } => {
            let config = Config::load(&config)?;
            let runtime = runtime()?;
            let result = runtime.block_on(service::run(config, shutdown_signal()));
            // Work still on a blocking thread (a decode, a stuck pipeline) must not hold up the exit.
            runtime.shutdown_timeout(Duration::from_millis(500));
            result?;
            Ok(())
        }
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            // The files and the decoder element can only be checked on the machine that runs it.
            config.check_files(&file.display().to_string())?;
            // The secrets of the doors that serve this box's network, as the service will read them.
            config.http.resolve_token()?;
            config.smtp.resolve_password()?;
            alarm_verifier::config::resolve_secret(
                &config.email_out.password,
                &config.email_out.password_env,
                "email_out.password_env",
                "the mail password",
            )?;
            let decoders = Decoders::choose(&config.clip.decoder).with_context(|| file.display().to_string())?;
            println!(
                "{}: ok ({} cameras; decoders {} and {}; alarms from {}; verdicts to {}; model {}; ONNX Runtime {}; store {})",
                file.display(),
                config.cameras.len(),
                decoders.h264,
                decoders.h265,
                intakes(&config),
                outputs(&config),
                config.detector.model.display(),
                config.detector.onnxruntime.display(),
                config.store.path.display()
            );
            Ok(())
        }
        Command::VerifyClip {
            file,
            alarm_at,
            config,
            camera,
            evidence,
        } => verify_clip(
            &file,
            alarm_at,
            config.as_deref(),
            camera.as_deref(),
            evidence.as_deref(),
        ),
        Command::ServeRtsp { mounts, port } => serve_rtsp(&mounts, port),
        Command::Probe {
            rtsp_url,
            onvif,
            username,
            password_env,
            json,
            snapshot,
            seconds,
        } => {
            anyhow::ensure!(
                rtsp_url.is_some() || onvif.is_some(),
                "probe: give an RTSP URL, or --onvif with the camera's device service URL"
            );
            let password = match &password_env {
                Some(var) => {
                    Some(Secret::new(std::env::var(var).with_context(|| {
                        format!("--password-env: the variable {var} is not set")
                    })?))
                }
                None => None,
            };
            let request = probe::ProbeRequest {
                onvif,
                rtsp: rtsp_url,
                username,
                password,
                password_env,
                snapshot,
                measure: Duration::try_from_secs_f64(seconds.clamp(1.0, 60.0)).unwrap_or(Duration::from_secs(5)),
            };
            let report = runtime()?.block_on(probe::probe(request))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(())
        }
        Command::ExportEval { config, since, out_dir } => {
            let config = Config::load(&config)?;
            let store = alarm_verifier::store::Store::open(&config.store.path)?;
            let exported = alarm_verifier::tools::export_eval::export(&store, since, &out_dir)?;
            println!(
                "{}: {} clips with operator feedback ({} alarms with feedback had no clip); run: alarm-verifier eval {}",
                out_dir.display(),
                exported.clips,
                exported.without_clip,
                out_dir.display()
            );
            Ok(())
        }
        Command::Eval { dir, config } => {
            let config = config_or_default(config.as_deref())?;
            let cases = alarm_verifier::tools::eval::read_labels(&dir)?;
            gst_support::init().context("GStreamer cannot start")?;
            let verifier = Arc::new(Verifier::new(
                Arc::new(Detector::load(&config.detector)?),
                &config,
                Decoders::software(),
            ));
            let report = alarm_verifier::tools::eval::run(&verifier, cases);
            println!("{}", report.render());
            anyhow::ensure!(
                report.recall() >= 1.0,
                "a real intrusion was missed: recall is below 100%"
            );
            anyhow::ensure!(
                report.lost_views_kept() >= 1.0,
                "a lost view (labelled unverifiable) was dismissed as a false alarm"
            );
            Ok(())
        }
        Command::MakeDevset { footage, images, out } => {
            let sources = alarm_verifier::tools::devset::Sources { footage, images };
            let n = alarm_verifier::tools::devset::build(&sources, &out)?;
            println!("{n} labelled clips in {}", out.display());
            Ok(())
        }
        Command::Bench {
            config,
            clip,
            runs,
            python,
        } => {
            let config = config_or_default(config.as_deref())?;
            let python = (python.as_os_str() != "none").then_some(python);
            if let Some(p) = python.as_ref().filter(|p| !p.exists()) {
                eprintln!(
                    "note: {} not found (run scripts/pytools.sh); skipping the onnxruntime comparison",
                    p.display()
                );
            }
            let python = python.filter(|p| p.exists());
            let options = alarm_verifier::tools::bench::BenchOptions {
                clip,
                runs: runs.max(1),
                python,
            };
            println!("{}", alarm_verifier::tools::bench::run(&config, &options)?);
            Ok(())
        }
        Command::BenchStorm {
            cameras,
            alarms,
            within,
            no_detect,
            people_fraction,
            extra,
            keep,
        } => {
            let options = storm::StormOptions {
                binary: std::env::current_exe().context("cannot find the alarm-verifier binary itself")?,
                cameras,
                alarms,
                within_s: within,
                detect: !no_detect,
                people_fraction,
                extra,
                keep,
            };
            let report = storm::run(&options, |line| println!("bench-storm: {line}"))?;
            println!("{}", report.render());
            Ok(())
        }
        Command::Demo => {
            let verdict = runtime()?.block_on(demo::run_demo())?;
            println!("demo: verdict received over MQTT:\n{verdict}");
            Ok(())
        }
    }
}

/// The config file given with `--config`, or the defaults (the installed or checkout's model, person and
/// vehicle).
fn config_or_default(path: Option<&Path>) -> Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::offline_default(),
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
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

fn verify_clip(
    file: &Path,
    alarm_at: f64,
    config: Option<&Path>,
    camera: Option<&str>,
    evidence: Option<&Path>,
) -> Result<()> {
    anyhow::ensure!(
        alarm_at.is_finite() && alarm_at >= 0.0,
        "--alarm-at: expected seconds from the start of the file, 0 or more"
    );
    let config = config_or_default(config)?;
    if let Some(id) = camera {
        anyhow::ensure!(config.camera(id).is_some(), "--camera: no camera {id:?} in the config");
    }
    gst_support::init().context("GStreamer cannot start")?;
    let verifier = Arc::new(Verifier::new(
        Arc::new(Detector::load(&config.detector)?),
        &config,
        Decoders::software(),
    ));
    let default_camera = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "clip".into());
    let finding = verifier
        .verify_file(file, alarm_at, camera.unwrap_or(&default_camera))
        .with_context(|| format!("{}: alarm at {alarm_at} s", file.display()))?;
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

//! `alarm-verifier bench-storm`: an alarm storm on a site of many cameras, measured from outside.
//!
//! Owns the whole run: a mosquitto broker ([`Broker`]), the cameras served from the storm footage
//! by a separate `serve-rtsp` process (main stream `camN`, detect stream `camN-detect`), the service
//! as a child process with a site config of its own, the storm itself (alarms on distinct cameras
//! within a few seconds, half on cameras that show people and half on empty scenes), and the
//! report: verdicts in time, correct verdicts, latency, core-seconds per alarm, CPU and memory of
//! the service (read from `/proc`, so the RTSP server's work is not counted in it).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use crate::analysis::verdict::{self, VerdictDocument, VerdictKind};
use crate::config::{Config, ConfigError};
use crate::mqtt::Topics;
use crate::tools::demo::{self, Broker, DemoError, Probe};

/// The storm footage `scripts/setup.sh` builds, relative to `testdata/`.
const PEOPLE_MAIN: &str = "storm/people-1080.mp4";
const PEOPLE_DETECT: &str = "storm/people-360.mp4";
const EMPTY_MAIN: &str = "storm/empty-1080.mp4";
const EMPTY_DETECT: &str = "storm/empty-360.mp4";
/// How long the storm footage plays (STORM_FRAMES in scripts/setup.sh at 15 fps); the RTSP server
/// plays each file once, from the service's first connect, so a run must end before.
const FOOTAGE_S: f64 = 120.0;
/// How long all cameras may take to come online.
const ONLINE_TIMEOUT: Duration = Duration::from_secs(60);
/// Waited beyond `clip.pre_s` once the cameras are online, so every ring holds the pre-alarm video.
const FILL_MARGIN: Duration = Duration::from_secs(2);
/// The service's CPU while it only ingests is measured over this long before the storm.
const IDLE_WINDOW: Duration = Duration::from_secs(5);
/// After the last verdict, the service's CPU is followed for at most this long, until it is back to
/// what ingest alone costs (analyses may run past their deadline).
const SETTLE_MAX: Duration = Duration::from_secs(15);
/// Verdicts are awaited this long after the last alarm is due.
const COLLECT_WINDOW: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StormError {
    #[error("{0}")]
    Options(String),
    #[error("footage {0} is missing; run scripts/setup.sh first")]
    Footage(PathBuf),
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error(transparent)]
    Site(#[from] DemoError),
    #[error("the site config with --extra is not valid: {0}")]
    Config(ConfigError),
    #[error("the RTSP server process ({log}): {reason}")]
    Server { reason: String, log: String },
    #[error("the service ({log}): {reason}")]
    Service { reason: String, log: String },
    #[error("/proc/{pid}: {reason}")]
    Proc { pid: u32, reason: String },
    #[error("the alarm publisher failed: {0}")]
    Publisher(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StormError {
    let what = what.into();
    move |error| StormError::Io { what, error }
}

/// What to run; the defaults are the benchmark of the README.
#[derive(Debug, Clone)]
pub struct StormOptions {
    /// The alarm-verifier binary, run as `serve-rtsp` and as `run`.
    pub binary: PathBuf,
    pub cameras: usize,
    pub alarms: usize,
    /// Seconds over which the alarms are spread.
    pub within_s: f64,
    /// Give each camera a `detect_url` (its 640x360 stream).
    pub detect: bool,
    /// Share of the cameras, and of the alarms, that show people.
    pub people_fraction: f64,
    /// TOML added to the site config (e.g. a `[verdict]` table).
    pub extra: String,
    /// Keep the run's folder (config, logs, store) instead of deleting it.
    pub keep: bool,
}

impl Default for StormOptions {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("alarm-verifier"),
            cameras: 100,
            alarms: 40,
            within_s: 4.0,
            detect: true,
            people_fraction: 0.5,
            extra: String::new(),
            keep: false,
        }
    }
}

/// The site: which cameras show people, and which camera each alarm goes to, in firing order.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// One entry per camera `cam{i}`: true when it shows people.
    pub people: Vec<bool>,
    /// Camera index of each alarm, in firing order; every camera at most once.
    pub alarms: Vec<usize>,
}

impl Plan {
    /// The first `round(cameras × fraction)` cameras show people, the rest empty scenes. Alarms go to
    /// `round(alarms × fraction)` people cameras and the rest to empty ones, interleaved in time so
    /// that both kinds meet the same load.
    pub fn new(cameras: usize, alarms: usize, people_fraction: f64) -> Result<Self, StormError> {
        if cameras == 0 || alarms == 0 {
            return Err(StormError::Options(
                "--cameras and --alarms: expected at least 1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&people_fraction) {
            return Err(StormError::Options(format!(
                "--people-fraction: expected a number from 0 to 1, got {people_fraction}"
            )));
        }
        if alarms > cameras {
            return Err(StormError::Options(format!(
                "--alarms: {alarms} alarms need as many distinct cameras, but --cameras is {cameras}"
            )));
        }
        let people_cameras = (cameras as f64 * people_fraction).round() as usize;
        let people_alarms = (alarms as f64 * people_fraction).round() as usize;
        let empty_alarms = alarms - people_alarms;
        if people_alarms > people_cameras || empty_alarms > cameras - people_cameras {
            return Err(StormError::Options(format!(
                "{people_alarms} alarms on people cameras and {empty_alarms} on empty ones do not fit on \
                 {people_cameras} people and {} empty cameras; use more --cameras",
                cameras - people_cameras
            )));
        }
        let people = (0..cameras).map(|i| i < people_cameras).collect();
        let on_people: Vec<usize> = (0..people_alarms).collect();
        let on_empty: Vec<usize> = (people_cameras..people_cameras + empty_alarms).collect();
        Ok(Self {
            people,
            alarms: interleave(&on_people, &on_empty),
        })
    }

    pub fn camera_id(i: usize) -> String {
        format!("cam{i}")
    }
}

/// Merges two lists so that each is spread evenly over the result.
fn interleave(a: &[usize], b: &[usize]) -> Vec<usize> {
    let key = |i: usize, n: usize| (i as f64 + 0.5) / n as f64;
    let mut all: Vec<(f64, usize)> = a.iter().enumerate().map(|(i, &x)| (key(i, a.len()), x)).collect();
    all.extend(b.iter().enumerate().map(|(i, &x)| (key(i, b.len()), x)));
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    all.into_iter().map(|(_, x)| x).collect()
}

/// A child process, stopped (SIGTERM, then SIGKILL) at the latest when dropped.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(command: &mut Command, log: &Path, what: &str) -> Result<Self, StormError> {
        let file = File::create(log).map_err(io(format!("cannot create {}", log.display())))?;
        let err_file = file.try_clone().map_err(io(format!("cannot open {}", log.display())))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err_file)
            .spawn()
            .map_err(io(format!("cannot start {what}")))?;
        Ok(Self {
            child,
            log: log.to_owned(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of its log, for error messages.
    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn stop(&mut self, timeout: Duration) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// CPU used so far by the service, the RTSP server and the whole machine, in clock ticks, at a moment.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    at: Instant,
    service: u64,
    server: u64,
    /// Busy time of all cores together (`/proc/stat`).
    machine: u64,
}

/// Reads [`Snapshot`]s of the service and the RTSP server.
struct Meter {
    ticks_per_s: f64,
    service: u32,
    server: u32,
}

impl Meter {
    /// Ticks are USER_HZ, from `getconf CLK_TCK`; 100 (Linux's value on every common architecture)
    /// if that fails.
    fn new(service: u32, server: u32) -> Self {
        let ticks_per_s = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0);
        Self {
            ticks_per_s,
            service,
            server,
        }
    }

    fn snapshot(&self) -> Result<Snapshot, StormError> {
        let process = |pid: u32| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| StormError::Proc {
                pid,
                reason: format!("cannot read stat: {e}"),
            })?;
            stat_cpu_ticks(&text).ok_or_else(|| StormError::Proc {
                pid,
                reason: "stat has no utime and stime".into(),
            })
        };
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| machine_busy_ticks(&text))
            .unwrap_or(0);
        Ok(Snapshot {
            at: Instant::now(),
            service: process(self.service)?,
            server: process(self.server)?,
            machine,
        })
    }

    fn usage(&self, from: Snapshot, to: Snapshot) -> Usage {
        let core_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / self.ticks_per_s;
        Usage {
            wall_s: to.at.saturating_duration_since(from.at).as_secs_f64(),
            service_core_s: core_s(from.service, to.service),
            server_core_s: core_s(from.server, to.server),
            machine_core_s: core_s(from.machine, to.machine),
        }
    }
}

/// CPU used over a stretch of time, in core-seconds (one core busy for one second).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub wall_s: f64,
    pub service_core_s: f64,
    pub server_core_s: f64,
    /// All processes on the machine.
    pub machine_core_s: f64,
}

impl Usage {
    fn cores(&self, core_s: f64) -> f64 {
        if self.wall_s > 0.0 { core_s / self.wall_s } else { 0.0 }
    }

    /// Cores the service kept busy on average (1.0 = one core all the time).
    pub fn service_cores(&self) -> f64 {
        self.cores(self.service_core_s)
    }

    pub fn server_cores(&self) -> f64 {
        self.cores(self.server_core_s)
    }

    /// Everything else on the machine: the broker, this tool, and whatever else runs there.
    pub fn other_cores(&self) -> f64 {
        self.cores((self.machine_core_s - self.service_core_s - self.server_core_s).max(0.0))
    }

    /// The service's core-seconds beyond what ingest alone costs (`idle_cores`) over the same time.
    pub fn service_net_core_s(&self, idle_cores: f64) -> f64 {
        (self.service_core_s - idle_cores * self.wall_s).max(0.0)
    }
}

/// Busy ticks of all cores from the text of `/proc/stat`: user, nice, system, irq, softirq and steal
/// of the `cpu` line (guest time is counted in user already).
fn machine_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map_while(|f| f.parse().ok()).collect();
    let field = |i: usize| v.get(i).copied().unwrap_or(0);
    (v.len() >= 4).then(|| field(0) + field(1) + field(2) + field(5) + field(6) + field(7))
}

/// utime + stime from the text of `/proc/PID/stat` (fields 14 and 15, counted after the command
/// name, which may hold spaces and parentheses).
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` line of `/proc/PID/status` (`VmHWM`, `VmRSS`), in MiB.
fn status_mib(pid: u32, key: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_value_kib(&text, key).map(|kib| kib as f64 / 1024.0)
}

fn status_value_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The four storm files, checked to exist.
struct Footage {
    people: (PathBuf, PathBuf),
    empty: (PathBuf, PathBuf),
}

impl Footage {
    fn find() -> Result<Self, StormError> {
        let file = |name: &str| {
            let path = demo::footage(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(StormError::Footage(path))
            }
        };
        Ok(Self {
            people: (file(PEOPLE_MAIN)?, file(PEOPLE_DETECT)?),
            empty: (file(EMPTY_MAIN)?, file(EMPTY_DETECT)?),
        })
    }

    fn of(&self, people: bool) -> &(PathBuf, PathBuf) {
        if people { &self.people } else { &self.empty }
    }
}

/// The `serve-rtsp` mounts: `camN=main` and, with detect streams, `camN-detect=detect`.
fn mounts(plan: &Plan, footage: &Footage, detect: bool) -> Vec<String> {
    let mut mounts = Vec::new();
    for (i, &people) in plan.people.iter().enumerate() {
        let (main, sub) = footage.of(people);
        let id = Plan::camera_id(i);
        mounts.push(format!("{id}={}", main.display()));
        if detect {
            mounts.push(format!("{id}-detect={}", sub.display()));
        }
    }
    mounts
}

/// Starts `serve-rtsp` and waits until it listens on `port`.
async fn start_server(binary: &Path, mounts: &[String], port: u16, dir: &Path) -> Result<Process, StormError> {
    let mut server = Process::spawn(
        Command::new(binary)
            .arg("serve-rtsp")
            .args(mounts)
            .arg("--port")
            .arg(port.to_string())
            .env("RUST_LOG", "warn"),
        &dir.join("rtsp-server.log"),
        "the RTSP server process",
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = server.exited() {
            return Err(StormError::Server {
                reason: format!("exited ({status}): {}", server.log_tail(5)),
                log: server.log.display().to_string(),
            });
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(server);
        }
        if Instant::now() > deadline {
            return Err(StormError::Server {
                reason: format!("not listening on port {port} after 20 s"),
                log: server.log.display().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TOML basic string (quoted and escaped).
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The site config: broker, model, a store in `dir`, `extra`, and one `[[camera]]` per camera.
fn site_toml(plan: &Plan, broker_port: u16, rtsp_port: u16, detect: bool, extra: &str, dir: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let defaults = Config::offline_default();
    let mut text = format!(
        "site = \"storm\"\n{extra}\n\n[http]\nlisten = \"\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {broker_port}\n\n\
         [detector]\nmodel = {}\nonnxruntime = {}\n\n[store]\npath = {}\n",
        toml_string(&root.join(&defaults.detector.model).display().to_string()),
        toml_string(&root.join(&defaults.detector.onnxruntime).display().to_string()),
        toml_string(&dir.join("alarm-verifier.db").display().to_string()),
    );
    for i in 0..plan.people.len() {
        let id = Plan::camera_id(i);
        text.push_str(&format!(
            "\n[[camera]]\nid = \"{id}\"\nurl = \"rtsp://127.0.0.1:{rtsp_port}/{id}\"\n"
        ));
        if detect {
            text.push_str(&format!("detect_url = \"rtsp://127.0.0.1:{rtsp_port}/{id}-detect\"\n"));
        }
    }
    text
}

fn service_failed(service: &mut Process, reason: &str) -> StormError {
    let reason = match service.exited() {
        Some(status) => format!("{reason}; it exited ({status}):\n{}", service.log_tail(15)),
        None => reason.to_owned(),
    };
    StormError::Service {
        reason,
        log: service.log.display().to_string(),
    }
}

/// Waits until every camera's latest retained state says `online`.
async fn wait_online(
    probe: &mut Probe,
    topics: &Topics,
    cameras: usize,
    service: &mut Process,
) -> Result<(), StormError> {
    let state_of: HashMap<String, usize> = (0..cameras)
        .map(|i| (topics.camera_state(&Plan::camera_id(i)), i))
        .collect();
    let mut online = vec![false; cameras];
    let mut last_error: Vec<Option<String>> = vec![None; cameras];
    let deadline = Instant::now() + ONLINE_TIMEOUT;
    while online.iter().any(|o| !o) {
        if service.exited().is_some() {
            return Err(service_failed(service, "stopped before its cameras came online"));
        }
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        if wait.is_zero() {
            let offline: Vec<String> = (0..cameras)
                .filter(|&i| !online[i])
                .take(5)
                .map(|i| match &last_error[i] {
                    Some(e) => format!("{} ({e})", Plan::camera_id(i)),
                    None => Plan::camera_id(i),
                })
                .collect();
            return Err(service_failed(
                service,
                &format!(
                    "only {} of {cameras} cameras online after {} s; offline: {}",
                    online.iter().filter(|o| **o).count(),
                    ONLINE_TIMEOUT.as_secs(),
                    offline.join(", ")
                ),
            ));
        }
        let Some(msg) = probe.next(|m| state_of.contains_key(&m.topic), wait).await else {
            continue;
        };
        let Some(&i) = state_of.get(&msg.topic) else {
            continue;
        };
        let state: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
        online[i] = state["state"] == "online";
        last_error[i] = state["last_error"].as_str().map(str::to_owned);
    }
    Ok(())
}

/// Publishes the alarms, spread evenly over `within`, from `start`; returns when each went out.
async fn fire(
    mut probe: Probe,
    topics: Topics,
    alarms: Vec<(String, String)>,
    within: Duration,
    start: Instant,
) -> Result<Vec<Instant>, StormError> {
    let n = alarms.len() as u32;
    let mut sent = Vec::with_capacity(alarms.len());
    for (k, (camera, alarm_id)) in alarms.into_iter().enumerate() {
        let due = start + within.mul_f64(k as f64 / n as f64);
        // Waiting by reading the probe's events keeps its channel drained.
        probe
            .next(|_| false, due.saturating_duration_since(Instant::now()))
            .await;
        let payload = serde_json::json!({"alarm_id": alarm_id, "time": verdict::rfc3339(Utc::now())});
        probe
            .publish(&topics.alarm(&camera), payload.to_string().into_bytes())
            .await?;
        sent.push(Instant::now());
    }
    Ok(sent)
}

/// A verdict as it arrived at the monitoring centre.
#[derive(Debug, Clone)]
pub struct Answer {
    pub verdict: VerdictKind,
    pub reason: String,
    pub latency_ms: u64,
    /// From publishing the alarm to receiving the verdict, as the monitoring centre sees it.
    pub end_to_end_ms: Option<u64>,
}

/// One alarm of the storm and what came back.
#[derive(Debug, Clone)]
pub struct AlarmResult {
    pub camera: String,
    pub people: bool,
    pub answer: Option<Answer>,
}

/// Everything measured in one run.
#[derive(Debug, Clone, Default)]
pub struct StormReport {
    pub cameras: usize,
    pub people_cameras: usize,
    pub detect: bool,
    pub cores: usize,
    pub deadline_s: f64,
    /// From starting the service until every camera was online.
    pub online_s: f64,
    /// Waited after that for the rings to fill.
    pub fill_s: f64,
    /// From starting the service until the end of the measurements: must stay below the footage's length.
    pub run_s: f64,
    pub within_s: f64,
    /// From the first alarm sent to the last sent.
    pub fired_s: f64,
    pub alarms: Vec<AlarmResult>,
    /// Messages on `{prefix}/errors` during the storm (rejected alarms).
    pub errors: usize,
    /// CPU while the service only ingests, before the storm.
    pub idle: Usage,
    /// CPU from the first alarm sent to the last verdict received.
    pub storm: Usage,
    /// CPU after the last verdict until the service was back to idle.
    pub after: Usage,
    pub peak_rss_mib: Option<f64>,
    pub end_rss_mib: Option<f64>,
    /// The run's folder, when kept.
    pub kept: Option<PathBuf>,
}

/// Runs the whole benchmark and returns its measurements; `progress` gets a line per stage.
pub fn run(options: &StormOptions, progress: impl Fn(&str)) -> Result<StormReport, StormError> {
    if !(options.within_s.is_finite() && options.within_s >= 0.0) {
        return Err(StormError::Options(format!(
            "--within: expected seconds, 0 or more, got {}",
            options.within_s
        )));
    }
    let plan = Plan::new(options.cameras, options.alarms, options.people_fraction)?;
    let footage = Footage::find()?;
    let broker = Broker::start()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io("cannot start the async runtime"))?;
    let result = runtime.block_on(storm(options, &plan, &footage, &broker, progress));
    // The MQTT clients stop with the runtime, before their broker does.
    drop(runtime);
    drop(broker);
    result
}

async fn storm(
    options: &StormOptions,
    plan: &Plan,
    footage: &Footage,
    broker: &Broker,
    progress: impl Fn(&str),
) -> Result<StormReport, StormError> {
    let temp = tempfile::Builder::new()
        .prefix("alarm-verifier-storm-")
        .tempdir()
        .map_err(io("cannot create a temporary folder"))?;
    // With --keep the folder outlives the run, also one that fails.
    let dir = temp.path().to_owned();
    let _removed_at_end = if options.keep {
        let _ = temp.keep();
        None
    } else {
        Some(temp)
    };
    let rtsp_port = demo::free_port()?;
    let mut server = start_server(&options.binary, &mounts(plan, footage, options.detect), rtsp_port, &dir).await?;
    progress(&format!(
        "{} cameras ({} with people) served by process {} on rtsp://127.0.0.1:{rtsp_port}/camN{}",
        plan.people.len(),
        plan.people.iter().filter(|p| **p).count(),
        server.pid(),
        if options.detect { " and camN-detect" } else { "" }
    ));

    let extra = options.extra.replace("\\n", "\n");
    let config_path = dir.join("site.toml");
    let toml = site_toml(plan, broker.port(), rtsp_port, options.detect, &extra, &dir);
    std::fs::write(&config_path, toml).map_err(io(format!("cannot write {}", config_path.display())))?;
    let config = Config::load(&config_path).map_err(StormError::Config)?;
    let topics = Topics::new(&config.mqtt.topic_prefix);
    let mut centre = Probe::connect(
        broker.port(),
        &[topics.verdict("+"), topics.camera_state("+"), topics.errors()],
    )
    .await?;
    let alarms_probe = Probe::connect(broker.port(), &[]).await?;

    let started = Instant::now();
    let mut service = Process::spawn(
        Command::new(&options.binary)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())),
        &dir.join("service.log"),
        "the service",
    )?;
    progress(&format!(
        "service started (process {}); waiting for the cameras to come online",
        service.pid()
    ));
    wait_online(&mut centre, &topics, plan.people.len(), &mut service).await?;
    let online_s = started.elapsed().as_secs_f64();
    let fill = Duration::from_secs_f64(config.clip.pre_s.max(0.0)) + FILL_MARGIN;
    progress(&format!(
        "all cameras online after {online_s:.1} s; waiting {:.1} s for the rings to fill, then {} s idle",
        fill.as_secs_f64(),
        IDLE_WINDOW.as_secs()
    ));
    tokio::time::sleep(fill).await;

    let meter = Meter::new(service.pid(), server.pid());
    let idle_from = meter.snapshot()?;
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle = meter.usage(idle_from, meter.snapshot()?);

    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let targets: Vec<(String, String)> = plan
        .alarms
        .iter()
        .enumerate()
        .map(|(k, &cam)| (Plan::camera_id(cam), format!("storm-{}-{k}", &run_id[..8])))
        .collect();
    let within = Duration::from_secs_f64(options.within_s);
    progress(&format!(
        "firing {} alarms within {:.1} s",
        targets.len(),
        options.within_s
    ));
    let storm_from = meter.snapshot()?;
    let firing = tokio::spawn(fire(
        alarms_probe,
        topics.clone(),
        targets.clone(),
        within,
        storm_from.at,
    ));
    let collected = collect(
        &mut centre,
        &topics,
        &targets,
        storm_from.at + within + COLLECT_WINDOW,
        &meter,
    )
    .await?;
    let sent = match firing.await {
        Ok(result) => result?,
        Err(e) => return Err(StormError::Publisher(e.to_string())),
    };
    let storm_to = match collected.last_snapshot {
        Some(snapshot) => snapshot,
        None => meter.snapshot()?,
    };
    if service.exited().is_some() {
        return Err(service_failed(&mut service, "stopped during the storm"));
    }
    progress("verdicts in; following the service's CPU until it is back to idle");
    let settled = settle(&meter, idle.service_cores(), storm_to).await?;
    let peak_rss_mib = status_mib(service.pid(), "VmHWM");
    let end_rss_mib = status_mib(service.pid(), "VmRSS");
    service.stop(Duration::from_secs_f64(config.verdict.deadline_s + 5.0));
    server.stop(Duration::from_secs(5));

    let alarms = targets
        .iter()
        .zip(&plan.alarms)
        .enumerate()
        .map(|(k, ((camera, _), &cam))| AlarmResult {
            camera: camera.clone(),
            people: plan.people[cam],
            answer: collected.answers[k].clone().map(|(mut answer, arrived)| {
                answer.end_to_end_ms = sent
                    .get(k)
                    .map(|s| arrived.saturating_duration_since(*s).as_millis() as u64);
                answer
            }),
        })
        .collect();
    Ok(StormReport {
        cameras: plan.people.len(),
        people_cameras: plan.people.iter().filter(|p| **p).count(),
        detect: options.detect,
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        deadline_s: config.verdict.deadline_s,
        online_s,
        fill_s: fill.as_secs_f64(),
        run_s: settled.at.saturating_duration_since(started).as_secs_f64(),
        within_s: options.within_s,
        fired_s: match (sent.first(), sent.last()) {
            (Some(a), Some(b)) => b.saturating_duration_since(*a).as_secs_f64(),
            _ => 0.0,
        },
        alarms,
        errors: collected.errors,
        idle,
        storm: meter.usage(storm_from, storm_to),
        after: meter.usage(storm_to, settled),
        peak_rss_mib,
        end_rss_mib,
        kept: options.keep.then_some(dir),
    })
}

struct Collected {
    /// Per alarm, in firing order: the answer and when it arrived.
    answers: Vec<Option<(Answer, Instant)>>,
    errors: usize,
    /// CPU when the last verdict arrived.
    last_snapshot: Option<Snapshot>,
}

/// Collects the verdicts of `targets` (camera, alarm id) until each has one or `until` passes.
async fn collect(
    probe: &mut Probe,
    topics: &Topics,
    targets: &[(String, String)],
    until: Instant,
    meter: &Meter,
) -> Result<Collected, StormError> {
    let index: HashMap<&str, usize> = targets
        .iter()
        .enumerate()
        .map(|(k, (_, id))| (id.as_str(), k))
        .collect();
    let verdict_topics: HashSet<String> = targets.iter().map(|(camera, _)| topics.verdict(camera)).collect();
    let errors_topic = topics.errors();
    let mut collected = Collected {
        answers: vec![None; targets.len()],
        errors: 0,
        last_snapshot: None,
    };
    let mut missing = targets.len();
    while missing > 0 {
        let wait = until.saturating_duration_since(Instant::now());
        let wanted = |m: &crate::mqtt::Inbound| verdict_topics.contains(&m.topic) || m.topic == errors_topic;
        let Some(msg) = probe.next(wanted, wait).await else {
            break;
        };
        if msg.topic == errors_topic {
            collected.errors += 1;
            continue;
        }
        let Ok(doc) = serde_json::from_slice::<VerdictDocument>(&msg.payload) else {
            continue;
        };
        let Some(&k) = index.get(doc.alarm_id.as_str()) else {
            continue;
        };
        if collected.answers[k].is_some() {
            continue; // a QoS 1 redelivery
        }
        collected.answers[k] = Some((
            Answer {
                verdict: doc.verdict,
                reason: doc.reason,
                latency_ms: doc.latency_ms,
                end_to_end_ms: None,
            },
            Instant::now(),
        ));
        collected.last_snapshot = Some(meter.snapshot()?);
        missing -= 1;
    }
    Ok(collected)
}

/// Follows the CPU in 1 s steps from `from` until the service is back to about `idle_cores` (or
/// [`SETTLE_MAX`] passes), and returns the last snapshot.
async fn settle(meter: &Meter, idle_cores: f64, from: Snapshot) -> Result<Snapshot, StormError> {
    let mut last = from;
    while last.at.saturating_duration_since(from.at) < SETTLE_MAX {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = meter.snapshot()?;
        let step = meter.usage(last, now);
        last = now;
        if step.service_cores() <= idle_cores + 0.1 {
            break;
        }
    }
    Ok(last)
}

/// The nearest-rank percentile `p` (0-100) of `values`, which need not be sorted.
pub fn percentile(values: &[u64], p: f64) -> Option<u64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len().saturating_sub(1)))
        .copied()
}

impl StormReport {
    fn answers(&self) -> impl Iterator<Item = (&AlarmResult, &Answer)> {
        self.alarms.iter().filter_map(|a| a.answer.as_ref().map(|ans| (a, ans)))
    }

    /// Not `unverifiable`, and within the deadline.
    pub fn in_time(&self) -> usize {
        let deadline_ms = (self.deadline_s * 1000.0) as u64;
        self.answers()
            .filter(|(_, a)| a.verdict != VerdictKind::Unverifiable && a.latency_ms <= deadline_ms)
            .count()
    }

    /// `verified` on a people camera, `false_alarm` on an empty one.
    pub fn correct(&self) -> usize {
        self.answers()
            .filter(|(alarm, a)| a.verdict == expected(alarm.people))
            .count()
    }

    fn count(&self, people: bool, verdict: Option<VerdictKind>) -> usize {
        self.alarms
            .iter()
            .filter(|a| a.people == people && a.answer.as_ref().map(|a| a.verdict) == verdict)
            .count()
    }

    /// Unverifiable reasons and how often each came.
    pub fn unverifiable_reasons(&self) -> BTreeMap<String, usize> {
        let mut reasons = BTreeMap::new();
        for (_, a) in self.answers().filter(|(_, a)| a.verdict == VerdictKind::Unverifiable) {
            *reasons.entry(a.reason.clone()).or_insert(0) += 1;
        }
        reasons
    }

    fn latency_line(&self, verdict: VerdictKind) -> String {
        let ms: Vec<u64> = self
            .answers()
            .filter(|(_, a)| a.verdict == verdict)
            .map(|(_, a)| a.latency_ms)
            .collect();
        let e2e: Vec<u64> = self
            .answers()
            .filter(|(_, a)| a.verdict == verdict)
            .filter_map(|(_, a)| a.end_to_end_ms)
            .collect();
        let s = |v: Option<u64>| v.map_or("-".into(), |ms| format!("{:.1}", ms as f64 / 1000.0));
        format!(
            "{:>3} | {:>5} | {:>5} | {:>5} | {:>13}",
            ms.len(),
            s(percentile(&ms, 50.0)),
            s(percentile(&ms, 95.0)),
            s(ms.iter().max().copied()),
            s(e2e.iter().max().copied()),
        )
    }

    /// The service's core-seconds per alarm from the first alarm to the last verdict, gross and net
    /// of what ingest alone costs over the same time.
    pub fn core_s_per_alarm(&self) -> (f64, f64) {
        let n = self.alarms.len().max(1) as f64;
        let net = self.storm.service_net_core_s(self.idle.service_cores());
        (self.storm.service_core_s / n, net / n)
    }

    /// Net core-seconds of the storm and of the analyses still running after the last verdict, per
    /// real verdict in time: what one answered alarm costs when the box is overloaded.
    pub fn core_s_per_real_verdict(&self) -> Option<f64> {
        let idle = self.idle.service_cores();
        let net = self.storm.service_net_core_s(idle) + self.after.service_net_core_s(idle);
        let real = self.in_time();
        (real > 0).then(|| net / real as f64)
    }

    pub fn render(&self) -> String {
        let n = self.alarms.len();
        let answered = self.answers().count();
        let people_alarms = self.alarms.iter().filter(|a| a.people).count();
        let empty_alarms = n - people_alarms;
        let share = |x: usize| if n == 0 { 0.0 } else { 100.0 * x as f64 / n as f64 };
        let (gross, net) = self.core_s_per_alarm();
        let mib = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0} MiB"));
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line("alarm storm".into());
        line(format!(
            "  cameras          {} ({} people, {} empty), 1080p15 main stream; detect streams (640x360): {}",
            self.cameras,
            self.people_cameras,
            self.cameras - self.people_cameras,
            if self.detect { "yes" } else { "no" }
        ));
        line(format!(
            "  start-up         all cameras online {:.1} s after the service started; then {:.1} s to fill the rings",
            self.online_s, self.fill_s
        ));
        line(format!(
            "  run length       {:.0} s from the service's start to the end of the measurements; the footage lasts {FOOTAGE_S:.0} s{}",
            self.run_s,
            if self.run_s > FOOTAGE_S - 10.0 {
                " (TOO CLOSE: cameras may have gone offline at the end of their files)"
            } else {
                ""
            }
        ));
        line(format!(
            "  alarms           {n} on distinct cameras ({people_alarms} people, {empty_alarms} empty), \
             sent over {:.1} s (asked: within {:.1} s)",
            self.fired_s, self.within_s
        ));
        line(format!(
            "  verdicts         {answered} of {n} received; {} without a verdict {} s after the last alarm",
            n - answered,
            COLLECT_WINDOW.as_secs()
        ));
        line(format!(
            "  real in time     {} ({:.0}%): verified or false_alarm within the {:.0} s deadline",
            self.in_time(),
            share(self.in_time()),
            self.deadline_s
        ));
        line(format!(
            "  correct          {} ({:.0}%): people cameras verified {}/{people_alarms}, empty cameras false_alarm {}/{empty_alarms}",
            self.correct(),
            share(self.correct()),
            self.count(true, Some(VerdictKind::Verified)),
            self.count(false, Some(VerdictKind::FalseAlarm)),
        ));
        line(format!(
            "  wrong            people cameras false_alarm {}, empty cameras verified {}",
            self.count(true, Some(VerdictKind::FalseAlarm)),
            self.count(false, Some(VerdictKind::Verified)),
        ));
        let reasons = self.unverifiable_reasons();
        line(format!("  unverifiable     {}", reasons.values().sum::<usize>()));
        let mut by_count: Vec<(&String, &usize)> = reasons.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1));
        for (reason, count) in by_count {
            line(format!("    {count:>4} x {reason}"));
        }
        if self.errors > 0 {
            line(format!("  errors topic     {} messages (rejected alarms)", self.errors));
        }
        line("  latency (s)      count |   p50 |   p95 |   max | max at centre".into());
        line(format!(
            "    verified        {}",
            self.latency_line(VerdictKind::Verified)
        ));
        line(format!(
            "    false_alarm     {}",
            self.latency_line(VerdictKind::FalseAlarm)
        ));
        line(format!(
            "    unverifiable    {}",
            self.latency_line(VerdictKind::Unverifiable)
        ));
        line(format!(
            "  core-s per alarm {gross:.2} gross, {net:.2} net of ingest ({:.1} core-s over {:.1} s, first alarm to last verdict)",
            self.storm.service_core_s, self.storm.wall_s
        ));
        line(format!(
            "  after that       {:.1} core-s ({:.1} net of ingest) in {:.1} s until the service was back to idle",
            self.after.service_core_s,
            self.after.service_net_core_s(self.idle.service_cores()),
            self.after.wall_s
        ));
        line(format!(
            "  per real verdict {} core-s net, storm and after together",
            self.core_s_per_real_verdict().map_or("-".into(), |v| format!("{v:.2}"))
        ));
        let pct = |v: f64| format!("{:.0}%", 100.0 * v);
        line(format!(
            "  service CPU      {} during the storm, {} idle (ingest only); 100% = one core, {} cores",
            pct(self.storm.service_cores()),
            pct(self.idle.service_cores()),
            self.cores
        ));
        line(format!(
            "  service memory   peak RSS {}, RSS at the end {}",
            mib(self.peak_rss_mib),
            mib(self.end_rss_mib)
        ));
        line(format!(
            "  RTSP server CPU  {} during the storm, {} idle (a process of its own, not in the service's figures)",
            pct(self.storm.server_cores()),
            pct(self.idle.server_cores())
        ));
        line(format!(
            "  other processes  {} during the storm, {} idle (the broker, this tool, and anything else running here)",
            pct(self.storm.other_cores()),
            pct(self.idle.other_cores())
        ));
        if let Some(dir) = &self.kept {
            line(format!(
                "  kept             {} (site.toml, service.log, rtsp-server.log, store)",
                dir.display()
            ));
        }
        out
    }
}

fn expected(people: bool) -> VerdictKind {
    if people {
        VerdictKind::Verified
    } else {
        VerdictKind::FalseAlarm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_splits_cameras_and_alarms() {
        let plan = Plan::new(100, 40, 0.5).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.people.iter().filter(|p| **p).count(), 50);
        assert_eq!(plan.alarms.len(), 40);
        let distinct: HashSet<usize> = plan.alarms.iter().copied().collect();
        assert_eq!(distinct.len(), 40);
        assert_eq!(plan.alarms.iter().filter(|&&c| plan.people[c]).count(), 20);
        // Interleaved: people and empty alternate.
        assert!(plan.alarms.windows(2).all(|w| plan.people[w[0]] != plan.people[w[1]]));
    }

    #[test]
    fn plan_refuses_what_does_not_fit() {
        assert!(Plan::new(4, 5, 0.5).is_err());
        assert!(Plan::new(10, 4, 1.5).is_err());
        assert!(Plan::new(0, 0, 0.5).is_err());
        let all_on_people = Plan::new(6, 4, 1.0).unwrap_or_else(|e| panic!("{e}"));
        assert!(all_on_people.alarms.iter().all(|&c| all_on_people.people[c]));
    }

    #[test]
    fn cpu_ticks_from_stat_with_spaces_in_the_name() {
        let stat = "1234 (alarm (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 12 0";
        assert_eq!(stat_cpu_ticks(stat), Some(325));
        assert_eq!(stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn machine_busy_from_proc_stat() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        assert_eq!(machine_busy_ticks(stat), Some(161));
        assert_eq!(machine_busy_ticks("intr 1 2 3"), None);
    }

    #[test]
    fn status_values() {
        let status = "Name:\tx\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(status_value_kib(status, "VmHWM"), Some(204_800));
        assert_eq!(status_value_kib(status, "VmRSS"), Some(102_400));
        assert_eq!(status_value_kib(status, "VmSwap"), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v = [5, 1, 4, 2, 3, 10, 9, 8, 7, 6];
        assert_eq!(percentile(&v, 50.0), Some(5));
        assert_eq!(percentile(&v, 95.0), Some(10));
        assert_eq!(percentile(&[7], 95.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn report_counts_and_renders() {
        let answer = |verdict, latency_ms, reason: &str| {
            Some(Answer {
                verdict,
                reason: reason.into(),
                latency_ms,
                end_to_end_ms: Some(latency_ms + 10),
            })
        };
        let alarm = |people, answer| AlarmResult {
            camera: "cam0".into(),
            people,
            answer,
        };
        let report = StormReport {
            cameras: 4,
            people_cameras: 2,
            deadline_s: 15.0,
            idle: Usage {
                wall_s: 5.0,
                service_core_s: 1.0,
                server_core_s: 0.5,
                machine_core_s: 2.0,
            },
            storm: Usage {
                wall_s: 10.0,
                service_core_s: 12.0,
                server_core_s: 1.0,
                machine_core_s: 14.0,
            },
            after: Usage {
                wall_s: 2.0,
                service_core_s: 1.4,
                server_core_s: 0.2,
                machine_core_s: 1.6,
            },
            alarms: vec![
                alarm(true, answer(VerdictKind::Verified, 3000, "person")),
                alarm(true, answer(VerdictKind::Unverifiable, 15000, "overloaded: x")),
                alarm(false, answer(VerdictKind::FalseAlarm, 16000, "nothing")),
                alarm(false, None),
            ],
            ..Default::default()
        };
        assert_eq!(report.in_time(), 1);
        assert_eq!(report.correct(), 2);
        assert_eq!(report.unverifiable_reasons().get("overloaded: x"), Some(&1));
        let (gross, net) = report.core_s_per_alarm();
        assert!((gross - 3.0).abs() < 1e-9 && (net - 2.5).abs() < 1e-9, "{gross} {net}");
        // (12 - 0.2 × 10) + (1.4 - 0.2 × 2) = 11 net core-s for 1 real verdict.
        assert!((report.core_s_per_real_verdict().unwrap_or_default() - 11.0).abs() < 1e-9);
        assert!((report.storm.other_cores() - 0.1).abs() < 1e-9);
        let text = report.render();
        assert!(text.contains("3 of 4 received"), "{text}");
        assert!(text.contains("1 x overloaded: x"), "{text}");
    }
}

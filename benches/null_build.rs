//! Whole-process benchmark of amimake's null build (every layer a cache
//! hit), against a floor program, plus peak memory and the seed DAG's wall
//! time against its critical path.
//!
//! Run: `cargo bench --bench null_build` (see benches/README.md).
//!
//! The same binary has three modes:
//! - no mode argument: the benchmark (full when cargo passes `--bench`, a
//!   quick smoke run otherwise, e.g. under `cargo test --benches`);
//! - `--floor DIR DB`: the floor, i.e. the least work a null build can do:
//!   read and blake3-hash every file under DIR/templates, DIR/scripts and
//!   DIR/files, then one SQLite lookup per template against DB;
//! - `--generate DIR N`: write an N-layer repository into DIR (for
//!   reproducing a measurement by hand);
//! - `--measure-rss CMD ARGS...`: run CMD as our only child and print its
//!   peak RSS (`getrusage(RUSAGE_CHILDREN)`), so earlier children of the
//!   benchmark process cannot inflate the maximum.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

/// Layer counts to benchmark (full mode).
const SIZES: [usize; 2] = [1_000, 10_000];
/// Timed runs per measurement (full mode); one untimed warm-up run first.
const RUNS: usize = 10;
/// The seed DAG's critical path: foundation (2 s) then gromacs or namd (1 s).
const SEED_CRITICAL_PATH: f64 = 3.0;

const TARGET_FLOOR_RATIO: f64 = 1.5;
const TARGET_SCALING: f64 = 11.0;
const TARGET_RSS_MB: f64 = 100.0;
const TARGET_SEED_RATIO: f64 = 1.02;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--floor") if args.len() == 4 => {
            let (files, lookups, hits) = floor(Path::new(&args[2]), Path::new(&args[3]));
            println!("floor: {files} files hashed, {lookups} lookups, {hits} hits");
            ExitCode::SUCCESS
        }
        Some("--generate") if args.len() == 4 => {
            let dir = Path::new(&args[2]);
            let n: usize = args[3].parse().expect("N is a number of layers");
            std::fs::create_dir_all(dir).expect("create DIR");
            amimake::testgen::generate_repo(dir, n).expect("generate repository");
            ExitCode::SUCCESS
        }
        Some("--measure-rss") if args.len() >= 3 => measure_rss(&args[2..]),
        _ => {
            let full = args.iter().any(|a| a == "--bench");
            run_benchmark(full);
            ExitCode::SUCCESS
        }
    }
}

// ---------------------------------------------------------------------------
// Floor mode

fn floor(dir: &Path, db: &Path) -> (usize, usize, usize) {
    let mut files = 0usize;
    let mut keys: Vec<String> = Vec::new();
    for sub in ["templates", "scripts", "files"] {
        for entry in walkdir::WalkDir::new(dir.join(sub)) {
            let entry = entry.expect("walk repository");
            if !entry.file_type().is_file() {
                continue;
            }
            let bytes = std::fs::read(entry.path()).expect("read file");
            let hash = blake3::hash(&bytes);
            files += 1;
            if sub == "templates" && entry.path().extension().is_some_and(|e| e == "yaml") {
                keys.push(hash.to_hex().to_string());
            }
        }
    }
    let conn =
        Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open cache.db");
    conn.busy_timeout(Duration::from_secs(60))
        .expect("busy timeout");
    conn.execute_batch("BEGIN DEFERRED").expect("begin");
    let mut hits = 0usize;
    {
        let mut stmt = conn
            .prepare("SELECT image FROM layers WHERE hash = ?1 AND target = 'simulate'")
            .expect("prepare");
        for key in &keys {
            let image: Option<String> = stmt
                .query_row(params![key], |r| r.get(0))
                .optional()
                .expect("lookup");
            hits += usize::from(image.is_some());
        }
    }
    conn.execute_batch("COMMIT").expect("commit");
    (files, keys.len(), hits)
}

// ---------------------------------------------------------------------------
// Peak-RSS wrapper mode

fn measure_rss(cmd: &[String]) -> ExitCode {
    let status = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn measured command");
    // SAFETY: getrusage only writes into the zeroed struct we pass it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0, "getrusage failed");
    // ru_maxrss is in KiB on Linux.
    println!(
        "maxrss_kib={} exit={}",
        usage.ru_maxrss,
        status.code().unwrap_or(-1)
    );
    if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

// ---------------------------------------------------------------------------
// Benchmark mode

fn amimake_bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_amimake") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/amimake"),
    }
}

fn self_exe() -> PathBuf {
    std::env::current_exe().expect("current_exe")
}

/// User + system CPU time of all waited-for children so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage only writes into the zeroed struct we pass it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0, "getrusage failed");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Runs `cmd` with output discarded; panics unless it succeeds; returns
/// its whole-process wall time and CPU (user + system) time.
fn time_run(cmd: &mut Command) -> (Duration, Duration) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let cpu_before = children_cpu();
    let start = Instant::now();
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let elapsed = start.elapsed();
    let cpu = children_cpu().saturating_sub(cpu_before);
    assert!(status.success(), "{cmd:?} failed: {status}");
    (elapsed, cpu)
}

/// Runs `cmd` capturing stderr; panics unless it succeeds; returns stderr.
fn run_capture(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{stderr}",
        out.status
    );
    stderr
}

#[derive(Clone, Copy, Debug)]
struct Stats {
    /// Wall time.
    median: Duration,
    min: Duration,
    /// CPU (user + system) time, less sensitive to other load on the machine.
    cpu_median: Duration,
}

fn stats(samples: Vec<(Duration, Duration)>) -> Stats {
    let mut wall: Vec<Duration> = samples.iter().map(|s| s.0).collect();
    let mut cpu: Vec<Duration> = samples.iter().map(|s| s.1).collect();
    wall.sort();
    cpu.sort();
    Stats {
        median: wall[wall.len() / 2],
        min: wall[0],
        cpu_median: cpu[cpu.len() / 2],
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn amimake(repo: &Path, cache: &Path) -> Command {
    let mut cmd = Command::new(amimake_bin());
    cmd.arg("-C")
        .arg(repo)
        .env("AMIMAKE_CACHE_DIR", cache)
        .env_remove("CI");
    cmd
}

fn build_cmd(repo: &Path, cache: &Path) -> Command {
    let mut cmd = amimake(repo, cache);
    cmd.args(["build", "--backend", "simulate"]);
    cmd
}

fn floor_cmd(repo: &Path, cache: &Path) -> Command {
    let mut cmd = Command::new(self_exe());
    cmd.arg("--floor").arg(repo).arg(cache.join("cache.db"));
    cmd
}

/// Peak RSS (MiB) of `cmd`, measured in a fresh wrapper process.
fn peak_rss_mb(cmd: &Command) -> f64 {
    let mut wrapper = Command::new(self_exe());
    wrapper
        .arg("--measure-rss")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapper.env(k, v),
            None => wrapper.env_remove(k),
        };
    }
    let out = wrapper
        .stdin(Stdio::null())
        .output()
        .expect("spawn rss wrapper");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "measured command failed: {stdout}");
    let kib: f64 = stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("maxrss_kib="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no maxrss in wrapper output: {stdout}"));
    kib / 1024.0
}

/// Times `runs` runs of each command, interleaved (a, b, c, a, b, c, ...)
/// after one untimed warm-up run of each.
fn interleaved(cmds: &mut [Command], runs: usize) -> Vec<Stats> {
    for cmd in cmds.iter_mut() {
        time_run(cmd);
    }
    let mut samples = vec![Vec::with_capacity(runs); cmds.len()];
    for _ in 0..runs {
        for (i, cmd) in cmds.iter_mut().enumerate() {
            samples[i].push(time_run(cmd));
        }
    }
    samples.into_iter().map(stats).collect()
}

struct SizeResult {
    layers: usize,
    cold: Duration,
    floor: Stats,
    null_build: Stats,
    hash: Stats,
    plan: Stats,
    rss_build_mb: f64,
    rss_floor_mb: f64,
}

fn bench_size(layers: usize, runs: usize) -> SizeResult {
    let repo = tempfile::tempdir().expect("tempdir");
    let cache = tempfile::tempdir().expect("tempdir");
    amimake::testgen::generate_repo(repo.path(), layers).expect("generate repository");
    let (repo, cache) = (repo.path(), cache.path());

    // Populate a fresh cache (every layer built, instantly).
    let cold = time_run(&mut build_cmd(repo, cache)).0;
    // The null build must really be a null build.
    let stderr = run_capture(&mut build_cmd(repo, cache));
    let summary = stderr.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with(&format!("0 built, {layers} reused, 0 failed")),
        "not a null build: {summary}"
    );

    let mut hash = amimake(repo, cache);
    hash.args(["hash", "--backend", "simulate"]);
    let mut plan = amimake(repo, cache);
    plan.args(["plan", "--backend", "simulate"]);
    let mut cmds = [floor_cmd(repo, cache), build_cmd(repo, cache), hash, plan];
    let s = interleaved(&mut cmds, runs);
    let rss_build_mb = peak_rss_mb(&build_cmd(repo, cache));
    let rss_floor_mb = peak_rss_mb(&floor_cmd(repo, cache));
    SizeResult {
        layers,
        cold,
        floor: s[0],
        null_build: s[1],
        hash: s[2],
        plan: s[3],
        rss_build_mb,
        rss_floor_mb,
    }
}

/// Writes the seed repository: foundation (a root), gromacs and namd
/// (both extend foundation).
fn write_seed(dir: &Path) {
    let t = dir.join("templates");
    std::fs::create_dir_all(&t).expect("mkdir templates");
    std::fs::write(dir.join("amimake.yaml"), "region: us-east-1\n").expect("write config");
    std::fs::write(
        t.join("foundation.yaml"),
        "description: common base\nsource:\n  ami: ami-0123456789abcdef0\n\
         build: {instance_type: c6i.large, volume_size_gb: 20}\n\
         software:\n  apt: [build-essential, openmpi-bin]\n\
         provision:\n  - shell: echo foundation\n",
    )
    .expect("write foundation");
    for app in ["gromacs", "namd"] {
        std::fs::write(
            t.join(format!("{app}.yaml")),
            format!("description: {app}\nextends: foundation\nsoftware:\n  apt: [{app}]\nprovision:\n  - shell: echo {app}\n"),
        )
        .expect("write app template");
    }
}

/// Whole-process wall times of the seed DAG built on a fresh cache.
fn bench_seed(runs: usize, scale: f64) -> (Stats, f64) {
    let repo = tempfile::tempdir().expect("tempdir");
    write_seed(repo.path());
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let cache = tempfile::tempdir().expect("tempdir");
        let mut cmd = build_cmd(repo.path(), cache.path());
        for (name, secs) in [("foundation", 2.0), ("gromacs", 1.0), ("namd", 1.0)] {
            cmd.arg("--simulate-duration")
                .arg(format!("{name}={}", secs * scale));
        }
        samples.push(time_run(&mut cmd));
    }
    (stats(samples), SEED_CRITICAL_PATH * scale)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

fn run_benchmark(full: bool) {
    let (sizes, runs, seed_scale): (&[usize], usize, f64) = if full {
        (&SIZES, RUNS, 1.0)
    } else {
        eprintln!(
            "null_build: smoke run (pass --bench, as `cargo bench` does, for the full benchmark)"
        );
        (&[100], 1, 0.1)
    };
    println!("amimake: {}", amimake_bin().display());
    println!("timed runs per command: {runs} (after 1 warm-up), whole-process wall time, output to /dev/null");
    println!();

    let mut results = Vec::new();
    for &n in sizes {
        eprintln!("null_build: {n} layers ...");
        results.push(bench_size(n, runs));
    }
    eprintln!("null_build: seed DAG ...");
    let seed_runs = if full { 3 } else { 1 };
    let (seed, critical) = bench_seed(seed_runs, seed_scale);

    println!(
        "{:>7} | {:>8} | {:>16} | {:>16} | {:>11} | {:>16} | {:>16} | {:>8} | {:>9}",
        "layers",
        "cold ms",
        "floor ms med/min",
        "null ms med/min",
        "null/floor",
        "hash ms med/min",
        "plan ms med/min",
        "RSS MB",
        "floor RSS"
    );
    for r in &results {
        println!(
            "{:>7} | {:>8.1} | {:>7.1} /{:>7.1} | {:>7.1} /{:>7.1} | {:>11.2} | {:>7.1} /{:>7.1} | {:>7.1} /{:>7.1} | {:>8.1} | {:>9.1}",
            r.layers,
            ms(r.cold),
            ms(r.floor.median),
            ms(r.floor.min),
            ms(r.null_build.median),
            ms(r.null_build.min),
            ms(r.null_build.median) / ms(r.floor.median),
            ms(r.hash.median),
            ms(r.hash.min),
            ms(r.plan.median),
            ms(r.plan.min),
            r.rss_build_mb,
            r.rss_floor_mb,
        );
    }
    println!();
    println!("CPU time (user + system, medians; insensitive to other load on the machine, but counts both parse threads):");
    for r in &results {
        println!(
            "{:>7} layers: floor {:.1} ms, null build {:.1} ms (ratio {:.2}), hash {:.1} ms, plan {:.1} ms",
            r.layers,
            ms(r.floor.cpu_median),
            ms(r.null_build.cpu_median),
            ms(r.null_build.cpu_median) / ms(r.floor.cpu_median),
            ms(r.hash.cpu_median),
            ms(r.plan.cpu_median),
        );
    }
    println!();
    println!("split of the null build (wall medians): hash = load+merge+hash+print; plan - hash = cache open + lookups + planning; build - plan = executor + cache writes");
    for r in &results {
        let (h, p, b) = (
            ms(r.hash.median),
            ms(r.plan.median),
            ms(r.null_build.median),
        );
        println!(
            "{:>7} layers: hash {h:.1} ms, plan-hash {:.1} ms, build-plan {:.1} ms, build-floor {:.1} ms",
            r.layers,
            p - h,
            b - p,
            b - ms(r.floor.median)
        );
    }
    println!();

    let seed_ratio = seed.median.as_secs_f64() / critical;
    if !full {
        println!(
            "seed DAG (durations x{seed_scale}): {:.3} s vs critical path {critical:.2} s, ratio {seed_ratio:.3}",
            seed.median.as_secs_f64()
        );
        println!("smoke run only: targets not assessed");
        return;
    }
    let small = results
        .iter()
        .find(|r| r.layers == 1_000)
        .expect("1000-layer result");
    let large = results
        .iter()
        .find(|r| r.layers == 10_000)
        .expect("10000-layer result");
    let floor_ratio = ms(small.null_build.median) / ms(small.floor.median);
    let scaling = ms(large.null_build.median) / ms(small.null_build.median);
    println!("targets:");
    println!(
        "  null build / floor at 1000 layers  {floor_ratio:>8.2}  (<= {TARGET_FLOOR_RATIO})   {}",
        verdict(floor_ratio <= TARGET_FLOOR_RATIO)
    );
    println!(
        "  null build 10000 / 1000 layers     {scaling:>8.2}  (<= {TARGET_SCALING})    {}",
        verdict(scaling <= TARGET_SCALING)
    );
    println!(
        "  peak RSS at 10000 layers (MB)      {:>8.1}  (<= {TARGET_RSS_MB})   {}",
        large.rss_build_mb,
        verdict(large.rss_build_mb <= TARGET_RSS_MB)
    );
    println!(
        "  seed DAG wall (s, median of {seed_runs})     {:>8.3}  (min {:.3}; critical path {critical:.1} s)",
        seed.median.as_secs_f64(),
        seed.min.as_secs_f64()
    );
    println!(
        "  seed DAG wall / critical path      {seed_ratio:>8.3}  (<= {TARGET_SEED_RATIO})  {}",
        verdict(seed_ratio <= TARGET_SEED_RATIO)
    );
}

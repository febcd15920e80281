//! Whole-process benchmark of shared-cache lookups: `amimake plan` of a
//! generated 1,000-layer repository with an empty local cache, against a
//! moto S3 endpoint behind a loopback proxy that delays every request by
//! 20 ms. Target: within 2 × (1000 / 32) × 20 ms = 1.25 s, i.e. lookups
//! really run 32 at a time.
//!
//! Two S3 endpoints are measured behind the same delaying proxy: moto (what
//! the tests use; on a 2-core machine it serves only ~400 requests a second,
//! so it, not amimake, sets the time), and a minimal in-process S3 stand-in
//! that answers GETs from memory, which shows amimake's own cost.
//!
//! Needs moto (`./scripts/setup-test-deps` installs it into `.venv`).
//! Run: `cargo bench --bench remote_probe`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LAYERS: usize = 1000;
const DELAY: Duration = Duration::from_millis(20);
const RUNS: usize = 3;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn amimake() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_amimake"))
}

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto(port: u16) -> Moto {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    assert!(
        bin.exists(),
        "moto is not installed: run ./scripts/setup-test-deps"
    );
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Moto(child)
}

/// Forwards loopback connections to `upstream`, holding each request
/// (a client chunk that starts with an HTTP method) back by `DELAY`.
fn delaying_proxy(listen: u16, upstream: u16) {
    let listener = TcpListener::bind(("127.0.0.1", listen)).unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let (mut c_read, mut s_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_read, mut c_write) = (server, client);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = c_read.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let head = &buf[..n.min(8)];
                    if [&b"GET "[..], b"PUT ", b"HEAD", b"POST", b"DELE"]
                        .iter()
                        .any(|m| head.starts_with(m))
                    {
                        std::thread::sleep(DELAY);
                    }
                    if s_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s_write.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_read, &mut c_write);
                let _ = c_write.shutdown(std::net::Shutdown::Write);
            });
        }
    });
}

/// A minimal S3 stand-in: path-style GET/HEAD of objects held in memory
/// (404 `NoSuchKey` otherwise), HTTP/1.1 keep-alive, a thread per connection.
fn memory_s3(port: u16, objects: std::collections::HashMap<String, Vec<u8>>) {
    let objects = std::sync::Arc::new(objects);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let objects = objects.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let mut line = String::new();
                    if std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (method, path) = (
                        parts.next().unwrap_or("").to_string(),
                        parts.next().unwrap_or("").to_string(),
                    );
                    let mut content_length = 0usize;
                    loop {
                        let mut h = String::new();
                        if std::io::BufRead::read_line(&mut reader, &mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h == "\r\n" {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            content_length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; content_length];
                    let _ = reader.read_exact(&mut body);
                    let key = path.split('?').next().unwrap_or("").to_string();
                    let response = match objects.get(&key) {
                        Some(obj) if method == "GET" || method == "HEAD" => {
                            let mut r = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"e\"\r\nContent-Type: application/json\r\n\r\n",
                                obj.len()
                            )
                            .into_bytes();
                            if method == "GET" {
                                r.extend_from_slice(obj);
                            }
                            r
                        }
                        _ => {
                            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchKey</Code><Message>no such key</Message></Error>";
                            format!("HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nContent-Type: application/xml\r\n\r\n{xml}", xml.len()).into_bytes()
                        }
                    };
                    if conn.write_all(&response).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

fn run(dir: &Path, cache: &Path, endpoint: &str, args: &[&str]) -> (f64, String, String) {
    let start = Instant::now();
    let out = Command::new(amimake())
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("AMIMAKE_CACHE_DIR", cache)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "amimake {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        secs,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` support
    }
    let repo = tempfile::tempdir().unwrap();
    amimake::testgen::generate_repo(repo.path(), LAYERS).unwrap();
    std::fs::write(
        repo.path().join("amimake.yaml"),
        "region: us-east-1\ncache:\n  s3: s3://amimake-bench/cache\n",
    )
    .unwrap();
    let moto_port = free_port();
    let _moto = start_moto(moto_port);
    let direct = format!("http://127.0.0.1:{moto_port}");
    // Create the bucket with a PUT (path-style, unsigned requests are fine for moto).
    let mut s = TcpStream::connect(("127.0.0.1", moto_port)).unwrap();
    write!(s, "PUT /amimake-bench HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut sink = String::new();
    let _ = s.read_to_string(&mut sink);

    eprintln!("publishing {LAYERS} layers to the shared cache (simulate backend)...");
    let publisher_cache = tempfile::tempdir().unwrap();
    let (secs, _, _) = run(
        repo.path(),
        publisher_cache.path(),
        &direct,
        &["build", "--backend", "simulate"],
    );
    eprintln!("  published in {secs:.1}s");

    let proxy_port = free_port();
    delaying_proxy(proxy_port, moto_port);
    let proxied = format!("http://127.0.0.1:{proxy_port}");
    let bound = 2.0 * (LAYERS as f64 / 32.0) * DELAY.as_secs_f64();
    let mut times = Vec::new();
    for i in 0..RUNS {
        let cache = tempfile::tempdir().unwrap();
        let (secs, stdout, _) = run(
            repo.path(),
            cache.path(),
            &proxied,
            &["plan", "--backend", "simulate", "--format", "json"],
        );
        let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(
            plan["totals"]["reuse"], LAYERS as u64,
            "every layer is a remote hit"
        );
        eprintln!("  run {}: {secs:.3}s", i + 1);
        times.push(secs);
    }
    // Same plan with no delay: what moto and amimake themselves cost.
    let cache = tempfile::tempdir().unwrap();
    let (undelayed, _, _) = run(
        repo.path(),
        cache.path(),
        &direct,
        &["plan", "--backend", "simulate", "--format", "json"],
    );
    // The in-memory stand-in, holding exactly what moto holds.
    let mut objects = std::collections::HashMap::new();
    let (_, hashes, _) = run(
        repo.path(),
        publisher_cache.path(),
        &direct,
        &["hash", "--backend", "simulate", "--format", "json"],
    );
    let hashes: serde_json::Value = serde_json::from_str(&hashes).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&direct)
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "t", "t", None, None, "bench",
            ))
            .build(),
    );
    for l in hashes["layers"].as_array().unwrap() {
        let key = format!(
            "cache/v1/layers/{}/simulate.json",
            l["hash"].as_str().unwrap()
        );
        let out = rt
            .block_on(s3.get_object().bucket("amimake-bench").key(&key).send())
            .unwrap();
        let body = rt
            .block_on(out.body.collect())
            .unwrap()
            .into_bytes()
            .to_vec();
        objects.insert(format!("/amimake-bench/{key}"), body);
    }
    if let Some((k, v)) = objects.iter().next() {
        eprintln!(
            "  in-memory S3 holds {} objects, e.g. {k}: {}",
            objects.len(),
            String::from_utf8_lossy(&v[..v.len().min(80)])
        );
    }
    let mem_port = free_port();
    memory_s3(mem_port, objects);
    let mem_proxy = free_port();
    delaying_proxy(mem_proxy, mem_port);
    let mem_proxied = format!("http://127.0.0.1:{mem_proxy}");
    let mut mem_times = Vec::new();
    for i in 0..RUNS {
        let cache = tempfile::tempdir().unwrap();
        let (secs, stdout, stderr) = run(
            repo.path(),
            cache.path(),
            &mem_proxied,
            &["plan", "--backend", "simulate", "--format", "json"],
        );
        let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(
            plan["totals"]["reuse"], LAYERS as u64,
            "every layer is a remote hit: {stderr}"
        );
        eprintln!("  in-memory S3, run {}: {secs:.3}s", i + 1);
        mem_times.push(secs);
    }
    mem_times.sort_by(|a, b| a.total_cmp(b));
    let mem_median = mem_times[mem_times.len() / 2];
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "remote probe: plan of {LAYERS} layers, empty local cache, S3 behind a {} ms/request proxy",
        DELAY.as_millis()
    );
    println!("  median {median:.3}s (min {:.3}s) over {RUNS} runs; bound 2 x ({LAYERS}/32) x 20 ms = {bound:.3}s: {}", times[0], if median <= bound { "PASS" } else { "MISS" });
    println!(
        "  the same plan against moto without the proxy: {undelayed:.3}s (moto's own throughput)"
    );
    println!(
        "  against an in-memory S3 behind the same proxy: median {mem_median:.3}s (min {:.3}s): {}",
        mem_times[0],
        if mem_median <= bound { "PASS" } else { "MISS" }
    );
}

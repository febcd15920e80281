//! A real moto server on a free loopback port, and an instance runner that
//! plays the builder instance: moto never runs user-data, so the runner
//! reads each new amimake instance's user-data, runs it in a temp directory
//! with `AMIMAKE_ROOT` set and shims for `poweroff` (-> StopInstances) and
//! the package managers (which record what they were asked), and so
//! exercises the real bootstrap.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::Filter;
use base64::Engine;

pub const REGION: &str = "us-east-1";
pub const BUCKET: &str = "amimake-artifacts";

fn moto_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("AMIMAKE_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    assert!(
        p.exists(),
        "moto is not installed: run ./scripts/test (it installs moto[server] into .venv), or set AMIMAKE_MOTO_SERVER"
    );
    p
}

/// A moto server for one test.
pub struct Moto {
    child: Child,
    pub port: u16,
    pub endpoint: String,
    pub dir: tempfile::TempDir,
    pub rt: tokio::runtime::Runtime,
    pub ec2: aws_sdk_ec2::Client,
    pub s3: aws_sdk_s3::Client,
}

impl Moto {
    pub fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        let child = Command::new(moto_server_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("moto_server starts");
        let endpoint = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if http_get(port, "/moto-api/").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conf = aws_sdk_ec2::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&endpoint)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
            .build();
        let ec2 = aws_sdk_ec2::Client::from_conf(conf);
        let s3conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(REGION))
            .endpoint_url(&endpoint)
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .build();
        let s3 = aws_sdk_s3::Client::from_conf(s3conf);
        let moto = Moto {
            child,
            port,
            endpoint,
            dir,
            rt,
            ec2,
            s3,
        };
        moto.rt
            .block_on(moto.s3.create_bucket().bucket(BUCKET).send())
            .expect("bucket created");
        moto
    }

    /// Environment for an amimake process talking to this server.
    pub fn env(&self, cmd: &mut Command) {
        cmd.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", self.dir.path().join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.path().join("no-aws-credentials"),
            )
            .env_remove("AWS_PROFILE");
    }

    /// Registers a base image (what `source.ami` points at).
    pub fn base_image(&self) -> String {
        let out = self
            .rt
            .block_on(
                self.ec2
                    .register_image()
                    .name("test-base")
                    .root_device_name("/dev/sda1")
                    .architecture(aws_sdk_ec2::types::ArchitectureValues::X8664)
                    .virtualization_type("hvm")
                    .block_device_mappings(
                        aws_sdk_ec2::types::BlockDeviceMapping::builder()
                            .device_name("/dev/sda1")
                            .ebs(
                                aws_sdk_ec2::types::EbsBlockDevice::builder()
                                    .volume_size(8)
                                    .build(),
                            )
                            .build(),
                    )
                    .send(),
            )
            .unwrap();
        out.image_id().unwrap().to_string()
    }

    /// (instance id, state) of every instance moto knows.
    pub fn instances(&self) -> Vec<(String, String)> {
        let out = self
            .rt
            .block_on(self.ec2.describe_instances().send())
            .unwrap();
        out.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(|i| {
                (
                    i.instance_id().unwrap().to_string(),
                    i.state()
                        .and_then(|s| s.name())
                        .map(|n| n.as_str().to_string())
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Instances not terminated.
    pub fn live_instances(&self) -> Vec<(String, String)> {
        self.instances()
            .into_iter()
            .filter(|(_, s)| s != "terminated")
            .collect()
    }

    /// Images with their tags.
    pub fn image(&self, id: &str) -> Option<aws_sdk_ec2::types::Image> {
        let out = self
            .rt
            .block_on(
                self.ec2
                    .describe_images()
                    .filters(Filter::builder().name("image-id").values(id).build())
                    .send(),
            )
            .unwrap();
        out.images().first().cloned()
    }

    pub fn deregister(&self, id: &str) {
        self.rt
            .block_on(self.ec2.deregister_image().image_id(id).send())
            .unwrap();
    }

    /// Starts playing the instances; stops when the runner is dropped.
    pub fn runner(&self) -> Runner {
        Runner::start(self)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// One played instance.
#[derive(Debug, Default, Clone)]
pub struct Played {
    pub dir: PathBuf,
    pub exit: Option<i32>,
}

/// Plays builder instances in the background.
pub struct Runner {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub played: Arc<Mutex<HashMap<String, Played>>>,
    pub dir: PathBuf,
}

impl Runner {
    fn start(moto: &Moto) -> Runner {
        let stop = Arc::new(AtomicBool::new(false));
        let played: Arc<Mutex<HashMap<String, Played>>> = Arc::default();
        let dir = moto.dir.path().join("instances");
        std::fs::create_dir_all(&dir).unwrap();
        let ec2 = moto.ec2.clone();
        let (stop2, played2, dir2) = (stop.clone(), played.clone(), dir.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut children: HashMap<String, Child> = HashMap::new();
            while !stop2.load(Ordering::Relaxed) {
                rt.block_on(tick(&ec2, &dir2, &played2, &mut children));
                std::thread::sleep(Duration::from_millis(100));
            }
            for (_, c) in children.iter_mut() {
                kill_group(c);
            }
        });
        Runner {
            stop,
            thread: Some(thread),
            played,
            dir,
        }
    }

    /// Names of package-manager calls recorded by the shims, per instance.
    pub fn packages(&self, instance: &str) -> String {
        std::fs::read_to_string(self.dir.join(instance).join("packages.log")).unwrap_or_default()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn kill_group(c: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", c.id())])
        .status();
    let _ = c.kill();
    let _ = c.wait();
}

const SHIM_PACKAGES: &str =
    "#!/bin/sh\necho \"$(basename \"$0\") $*\" >> \"$AMIMAKE_TEST_DIR/packages.log\"\n";
const SHIM_POWEROFF: &str = "#!/bin/sh\ntouch \"$AMIMAKE_TEST_DIR/poweroff\"\nexit 0\n";

async fn tick(
    ec2: &aws_sdk_ec2::Client,
    dir: &Path,
    played: &Mutex<HashMap<String, Played>>,
    children: &mut HashMap<String, Child>,
) {
    let Ok(out) = ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag-key")
                .values("amimake:build-id")
                .build(),
        )
        .send()
        .await
    else {
        return;
    };
    let mut states = HashMap::new();
    for i in out.reservations().iter().flat_map(|r| r.instances()) {
        let id = i.instance_id().unwrap_or_default().to_string();
        let state = i
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string())
            .unwrap_or_default();
        states.insert(id, state);
    }
    for (id, state) in &states {
        let known = played.lock().unwrap().contains_key(id);
        if !known && (state == "pending" || state == "running") {
            let Ok(attr) = ec2
                .describe_instance_attribute()
                .instance_id(id)
                .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
                .send()
                .await
            else {
                continue;
            };
            let b64 = attr.user_data().and_then(|u| u.value()).unwrap_or_default();
            let script = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_default();
            let idir = dir.join(id);
            let shims = idir.join("shims");
            std::fs::create_dir_all(idir.join("root")).unwrap();
            std::fs::create_dir_all(&shims).unwrap();
            std::fs::write(idir.join("user-data.sh"), &script).unwrap();
            for (name, body) in [
                ("poweroff", SHIM_POWEROFF),
                ("apt-get", SHIM_PACKAGES),
                ("dnf", SHIM_PACKAGES),
                ("spack", SHIM_PACKAGES),
                ("pip", SHIM_PACKAGES),
            ] {
                let p = shims.join(name);
                std::fs::write(&p, body).unwrap();
                let _ = Command::new("chmod").arg("+x").arg(&p).status();
            }
            let path = format!(
                "{}:{}",
                shims.display(),
                std::env::var("PATH").unwrap_or_default()
            );
            let log = std::fs::File::create(idir.join("console.log")).unwrap();
            let child = Command::new("sh")
                .arg(idir.join("user-data.sh"))
                .current_dir(&idir)
                .env("AMIMAKE_ROOT", idir.join("root"))
                .env("AMIMAKE_TEST_DIR", &idir)
                .env("PATH", path)
                .env("TMPDIR", &idir)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .process_group(0)
                .spawn()
                .unwrap();
            children.insert(id.clone(), child);
            played.lock().unwrap().insert(
                id.clone(),
                Played {
                    dir: idir,
                    exit: None,
                },
            );
        }
    }
    // Power off, or vanish with the instance.
    let ids: Vec<String> = children.keys().cloned().collect();
    for id in ids {
        let idir = dir.join(&id);
        let state = states.get(&id).cloned().unwrap_or_default();
        let powered_off = idir.join("poweroff").exists();
        let child = children.get_mut(&id).unwrap();
        let exited = child.try_wait().ok().flatten();
        if powered_off || exited.is_some() || state == "terminated" || state == "shutting-down" {
            if powered_off && state != "terminated" {
                let _ = ec2.stop_instances().instance_ids(&id).send().await;
            }
            let mut c = children.remove(&id).unwrap();
            kill_group(&mut c);
            if let Some(p) = played.lock().unwrap().get_mut(&id) {
                p.exit = exited.and_then(|s| s.code());
            }
        }
    }
}

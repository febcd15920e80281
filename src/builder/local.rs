//! The local backend: each layer is a root filesystem tree on this machine,
//! kept in the cache directory under `local/<arch>/layers/<hash>/rootfs`.
//!
//! - A root layer comes from `source.local`: `mmdebstrap` (suite, variant,
//!   mirror, extra packages) or a `rootfs` tarball.
//! - A child starts as a copy of its parent's tree (`cp -a --reflink=auto`:
//!   a reflink where the filesystem allows, a plain copy otherwise; never
//!   hard links a step could write through).
//! - The same user-data bootstrap as on EC2 runs inside the tree, with the
//!   bundle, log and status behind `file://` URLs under `/run/amimake`, in
//!   bubblewrap (with the host's network and resolv.conf), or in a chroot
//!   when running as root without bubblewrap. Its `poweroff` is a shim that
//!   ends the layer.
//! - A layer is built in a staging directory and renamed into place only
//!   when complete: a failed or interrupted layer leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;

use crate::builder::bootstrap::{self, BootstrapUrls, Status};
use crate::builder::{cancelled, BuildFuture, Builder, BuiltImage, LayerError, LayerJob};

const LOG_TAIL_LINES: usize = 25;

/// The machine's architecture as amimake names it.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        other => other,
    }
}

pub fn target() -> String {
    format!("local/{}", arch())
}

/// Where local layer trees live: `<cache dir>/local/<arch>`.
pub fn store_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("local").join(arch())
}

/// The finished tree of a layer.
pub fn tree(store: &Path, hash: &str) -> PathBuf {
    store.join("layers").join(hash).join("rootfs")
}

/// The image ID of a local layer.
pub fn image_id(hash: &str) -> String {
    format!("local-{}", &hash[..17.min(hash.len())])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sandbox {
    Bwrap,
    Chroot,
}

impl Sandbox {
    /// bubblewrap when installed, else chroot (which needs root).
    pub fn detect() -> Result<Sandbox, String> {
        if which("bwrap") {
            return Ok(Sandbox::Bwrap);
        }
        if is_root() {
            return Ok(Sandbox::Chroot);
        }
        Err(
            "the local backend needs bubblewrap (`apt-get install bubblewrap`) or root for chroot"
                .into(),
        )
    }
}

pub fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == 0
        })
        .unwrap_or(false)
}

pub struct LocalBuilder {
    pub store: PathBuf,
    pub target: String,
    pub sandbox: Sandbox,
}

impl Builder for LocalBuilder {
    fn target(&self) -> &str {
        &self.target
    }

    fn build(&self, job: LayerJob, cancel: watch::Receiver<bool>) -> BuildFuture<'_> {
        Box::pin(async move {
            let nonce = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let staging = self.store.join("staging").join(format!(
                "{}-{}-{nonce}",
                job.hash.short(),
                std::process::id()
            ));
            let result = tokio::select! {
                r = self.build_tree(&job, &staging) => r,
                _ = cancelled(cancel) => Err(LayerError::cancelled()),
            };
            // Child processes were killed on drop; nothing half-made stays.
            let staging_clone = staging.clone();
            let _ = tokio::task::spawn_blocking(move || remove_tree(&staging_clone)).await;
            result
        })
    }
}

fn remove_tree(p: &Path) {
    if p.exists() {
        if let Err(e) = std::fs::remove_dir_all(p) {
            tracing::warn!("could not remove {}: {e}", p.display());
        }
    }
}

async fn run(cmd: &mut Command, what: &str, log: &mut String) -> Result<(), LayerError> {
    let out = cmd
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| LayerError::failed(format!("{what}: cannot run: {e}")))?;
    log.push_str(&String::from_utf8_lossy(&out.stdout));
    log.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(())
    } else {
        Err(LayerError {
            message: format!("{what} failed ({})", out.status),
            log_tail: bootstrap::tail(log, LOG_TAIL_LINES),
            cancelled: false,
        })
    }
}

impl LocalBuilder {
    async fn build_tree(&self, job: &LayerJob, staging: &Path) -> Result<BuiltImage, LayerError> {
        let rootfs = staging.join("rootfs");
        std::fs::create_dir_all(staging)
            .map_err(|e| LayerError::failed(format!("{}: {e}", staging.display())))?;
        let mut log = String::new();

        // 1. The starting tree.
        match &job.parent_hash {
            Some(parent) => {
                let parent_tree = tree(&self.store, parent.as_str());
                if !parent_tree.is_dir() {
                    return Err(LayerError::failed(format!(
                        "parent tree {} is missing; `amimake cache forget {}` and build again",
                        parent_tree.display(),
                        parent.short()
                    )));
                }
                let copy_started = std::time::Instant::now();
                run(
                    Command::new("cp")
                        .arg("-a")
                        .arg("--reflink=auto")
                        .arg(&parent_tree)
                        .arg(&rootfs),
                    "copying the parent tree",
                    &mut log,
                )
                .await?;
                tracing::info!(
                    "{}: copied the parent tree in {:.3}s",
                    job.name(),
                    copy_started.elapsed().as_secs_f64()
                );
            }
            None => self.make_root(job, &rootfs, &mut log).await?,
        }

        // 2. The bootstrap, its bundle and a poweroff shim under /run/amimake.
        let run_dir = rootfs.join("run/amimake");
        let io =
            |e: std::io::Error| LayerError::failed(format!("preparing {}: {e}", run_dir.display()));
        std::fs::create_dir_all(run_dir.join("bin")).map_err(io)?;
        std::fs::create_dir_all(run_dir.join("out")).map_err(io)?;
        let bundle = bootstrap::bundle(job)
            .map_err(|e| LayerError::failed(format!("cannot make the bundle: {e}")))?;
        std::fs::write(run_dir.join("bundle.tgz"), &bundle.bytes).map_err(io)?;
        std::fs::write(
            run_dir.join("bin/poweroff"),
            "#!/bin/sh\n# amimake local backend: the layer ends here\ntouch /run/amimake/out/poweroff\nexit 0\n",
        )
        .map_err(io)?;
        set_exec(&run_dir.join("bin/poweroff")).map_err(io)?;
        let timeout = job
            .layer
            .timeout
            .map(|t| t.as_secs())
            .unwrap_or(bootstrap::DEFAULT_TIMEOUT_SECS);
        let user_data = bootstrap::user_data(
            job.name(),
            &job.build_id,
            &BootstrapUrls {
                bundle: "file:///run/amimake/bundle.tgz",
                bundle_sha256: &bundle.sha256,
                log: "file:///run/amimake/out/amimake.log",
                status: "file:///run/amimake/out/status.json",
            },
            timeout,
        );
        std::fs::write(run_dir.join("user-data.sh"), user_data).map_err(io)?;

        // 3. Run it inside the tree.
        let path = "/run/amimake/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        let mut cmd = match self.sandbox {
            Sandbox::Bwrap => {
                let mut c = Command::new("bwrap");
                c.arg("--bind")
                    .arg(&rootfs)
                    .arg("/")
                    .args([
                        "--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp",
                    ])
                    .args(["--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf"])
                    .args(["--die-with-parent", "--clearenv"])
                    .args([
                        "--setenv",
                        "PATH",
                        path,
                        "--setenv",
                        "HOME",
                        "/root",
                        "--setenv",
                        "AMIMAKE_ROOT",
                        "/",
                    ])
                    .args(["--setenv", "LANG", "C.UTF-8"])
                    .args(["/bin/sh", "/run/amimake/user-data.sh"]);
                c
            }
            Sandbox::Chroot => {
                if let Ok(conf) = std::fs::read("/etc/resolv.conf") {
                    let _ = std::fs::write(rootfs.join("etc/resolv.conf"), conf);
                }
                let mut c = Command::new("chroot");
                c.arg(&rootfs)
                    .args(["/usr/bin/env", "-i"])
                    .arg(format!("PATH={path}"))
                    .args([
                        "HOME=/root",
                        "AMIMAKE_ROOT=/",
                        "LANG=C.UTF-8",
                        "/bin/sh",
                        "/run/amimake/user-data.sh",
                    ]);
                c
            }
        };
        let console_path = staging.join("console.log");
        let console_file = std::fs::File::create(&console_path).map_err(io)?;
        let console_err = console_file.try_clone().map_err(io)?;
        let status = tokio::time::timeout(
            Duration::from_secs(timeout + 60),
            cmd.stdin(Stdio::null())
                .stdout(console_file)
                .stderr(console_err)
                .kill_on_drop(true)
                .status(),
        )
        .await
        .map_err(|_| {
            LayerError::failed(format!(
                "the layer did not power off within build.timeout ({timeout}s)"
            ))
        })?
        .map_err(|e| LayerError::failed(format!("cannot start the sandbox: {e}")))?;
        let console = std::fs::read_to_string(&console_path).unwrap_or_default();
        let layer_log =
            std::fs::read_to_string(run_dir.join("out/amimake.log")).unwrap_or_default();
        let full_log = if layer_log.is_empty() {
            console
        } else {
            layer_log
        };
        let reported: Option<Status> = std::fs::read(run_dir.join("out/status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let logs_dir = self.store.join("logs");
        let _ = std::fs::create_dir_all(&logs_dir);
        let log_path = logs_dir.join(format!(
            "{}-{}-{}.log",
            job.name(),
            job.hash.short(),
            job.build_id
        ));
        let _ = std::fs::write(&log_path, &full_log);
        match reported {
            Some(s) if s.status == "succeeded" => {}
            Some(s) => {
                let what = if s.step.is_empty() {
                    "the bootstrap".to_string()
                } else {
                    s.step.clone()
                };
                return Err(LayerError {
                    message: format!(
                        "{what} failed (exit {}); full log: {}",
                        s.exit_code,
                        log_path.display()
                    ),
                    log_tail: bootstrap::tail(&full_log, LOG_TAIL_LINES),
                    cancelled: false,
                });
            }
            None => {
                return Err(LayerError {
                    message: format!(
                        "the layer ended without a status ({status}); full log: {}",
                        log_path.display()
                    ),
                    log_tail: bootstrap::tail(&full_log, LOG_TAIL_LINES),
                    cancelled: false,
                })
            }
        }

        // 4. Publish atomically.
        std::fs::remove_dir_all(&run_dir).map_err(io)?;
        let final_tree = tree(&self.store, job.hash.as_str());
        let final_dir = final_tree
            .parent()
            .expect("tree has a parent")
            .to_path_buf();
        let pub_err = |e: std::io::Error| {
            LayerError::failed(format!("publishing {}: {e}", final_tree.display()))
        };
        std::fs::create_dir_all(&final_dir).map_err(pub_err)?;
        if final_tree.exists() {
            // A forced rebuild replaces the old tree.
            let old = staging.join("replaced");
            std::fs::rename(&final_tree, &old).map_err(pub_err)?;
        }
        std::fs::rename(&rootfs, &final_tree).map_err(pub_err)?;
        Ok(BuiltImage::new(image_id(job.hash.as_str())))
    }

    async fn make_root(
        &self,
        job: &LayerJob,
        rootfs: &Path,
        log: &mut String,
    ) -> Result<(), LayerError> {
        let local = job
            .layer
            .source()
            .and_then(|s| s.local.as_ref())
            .ok_or_else(|| {
                LayerError::failed("the local backend needs `source.local` on this root")
            })?;
        if let Some(m) = &local.mmdebstrap {
            if !which("mmdebstrap") {
                return Err(LayerError::failed(
                    "mmdebstrap is not installed (`apt-get install mmdebstrap`)",
                ));
            }
            let mut c = Command::new("mmdebstrap");
            c.arg("--quiet").arg(format!(
                "--variant={}",
                m.variant.as_deref().unwrap_or("minbase")
            ));
            if !m.packages.is_empty() {
                c.arg(format!("--include={}", m.packages.join(",")));
            }
            c.arg(&m.suite).arg(rootfs);
            if let Some(mirror) = &m.mirror {
                c.arg(mirror);
            }
            run(&mut c, "mmdebstrap", log).await
        } else if let Some(tarball) = &local.rootfs {
            let path = job.layer.dir().join(&tarball.value);
            std::fs::create_dir_all(rootfs)
                .map_err(|e| LayerError::failed(format!("{}: {e}", rootfs.display())))?;
            run(
                Command::new("tar")
                    .arg("-xf")
                    .arg(&path)
                    .arg("-C")
                    .arg(rootfs)
                    .arg("--numeric-owner"),
                "unpacking the rootfs tarball",
                log,
            )
            .await
        } else {
            Err(LayerError::failed(
                "`source.local` needs `mmdebstrap:` or `rootfs:`",
            ))
        }
    }
}

fn set_exec(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
}

/// Total bytes of regular files below `dir` (not following links).
pub fn disk_usage(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.blocks() * 512
        })
        .sum()
}

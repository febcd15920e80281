//! The builder-instance protocol, shared by the ec2 and local backends.
//!
//! A layer becomes a **bundle** (a deterministic `tar.gz`: `run.sh`, the
//! layer's `files/` and `scripts/`, `manifest.json`) and a **bootstrap**: a
//! small POSIX shell script (the instance's user-data, < 16 KB) that
//!
//! 1. downloads the bundle and checks its SHA-256,
//! 2. runs `run.sh`: installs `files` under `${AMIMAKE_ROOT:-/}`, then the
//!    layer's own software delta (`apt-get install -y`, `dnf install -y`,
//!    `spack install`, `pip install`), then the provision steps in order,
//!    with the template variables exported throughout,
//! 3. uploads its log and a status object (`{"status": "succeeded" |
//!    "failed" | "timeout", "exit_code", "step"}`) through presigned PUT
//!    URLs (`curl -T`, `Content-Type: application/octet-stream`), and
//! 4. powers off. A watchdog powers off when `build.timeout` passes.
//!
//! Nothing here needs inbound network access to the instance.

use std::io::Write;

use serde::Serialize;
use sha2::Digest;

use crate::builder::LayerJob;
use crate::template::packages::Manager;
use crate::template::resolve::ResolvedStep;

/// Largest user-data EC2 accepts.
pub const MAX_USER_DATA: usize = 16 * 1024;
/// Default `build.timeout`.
pub const DEFAULT_TIMEOUT_SECS: u64 = 2 * 3600;

/// A built bundle: its bytes and SHA-256 (hex).
pub struct Bundle {
    pub bytes: Vec<u8>,
    pub sha256: String,
}

#[derive(Serialize)]
struct Manifest<'a> {
    schema_version: u32,
    layer: &'a str,
    hash: &'a str,
    build_id: &'a str,
    parent_image: Option<&'a str>,
    steps: Vec<String>,
}

/// Quotes `s` for POSIX sh.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The layer script run inside the bundle directory.
pub fn run_script(job: &LayerJob) -> String {
    let layer = &job.layer;
    let mut s = String::new();
    s.push_str("#!/bin/sh\n# amimake layer script (generated)\nset -eu\n");
    s.push_str("B=$(cd \"$(dirname \"$0\")\" && pwd)\n");
    s.push_str("R=\"${AMIMAKE_ROOT:-/}\"; R=\"${R%/}\"\n");
    s.push_str("export PATH=\"${PATH:+$PATH:}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"\n");
    s.push_str("export DEBIAN_FRONTEND=noninteractive\n");
    s.push_str(&format!(
        "export AMIMAKE_LAYER={}\n",
        sh_quote(layer.name())
    ));
    s.push_str(&format!(
        "export AMIMAKE_LAYER_HASH={}\n",
        sh_quote(job.hash.as_str())
    ));
    s.push_str(&format!(
        "export AMIMAKE_BUILD_ID={}\n",
        sh_quote(&job.build_id)
    ));
    for (k, v) in &layer.variables {
        s.push_str(&format!("export {k}={}\n", sh_quote(v)));
    }
    s.push_str("mark() { printf '%s\\n' \"$1\" > \"$B/.step\"; echo \"==> amimake: $1\"; }\n");
    for (i, f) in layer.files.iter().enumerate() {
        let dest = sh_quote(&f.dest);
        s.push_str(&format!(
            "mark {}\n",
            sh_quote(&format!("files[{i}] {}", f.dest))
        ));
        if f.is_dir {
            s.push_str(&format!(
                "mkdir -p \"$R\"{dest} && cp -R \"$B/files/{i}/.\" \"$R\"{dest}\n"
            ));
            if let Some(mode) = &f.mode {
                s.push_str(&format!("chmod {mode} \"$R\"{dest}\n"));
            }
        } else {
            s.push_str(&format!(
                "mkdir -p \"$(dirname \"$R\"{dest})\" && cp \"$B/files/{i}\" \"$R\"{dest}\n"
            ));
            s.push_str(&format!(
                "chmod {} \"$R\"{dest}\n",
                f.mode.as_deref().unwrap_or("0644")
            ));
        }
        if let Some(owner) = &f.owner {
            s.push_str(&format!("chown -R {} \"$R\"{dest}\n", sh_quote(owner)));
        }
    }
    for (manager, specs) in &layer.own_software {
        if specs.is_empty() {
            continue;
        }
        let args: Vec<String> = specs.iter().map(|p| sh_quote(p)).collect();
        let args = args.join(" ");
        s.push_str(&format!(
            "mark {}\n",
            sh_quote(&format!("software.{manager}"))
        ));
        match manager {
            Manager::Apt => s.push_str(&format!(
                "apt-get update\napt-get install -y --no-install-recommends {args}\n"
            )),
            Manager::Dnf => s.push_str(&format!("dnf install -y {args}\n")),
            Manager::Spack => s.push_str(&format!("spack install {args}\n")),
            Manager::Pip => {
                s.push_str(&format!("PIP_BREAK_SYSTEM_PACKAGES=1 pip install {args}\n"))
            }
        }
    }
    for (i, step) in layer.steps.iter().enumerate() {
        match step {
            ResolvedStep::Script { path, .. } => {
                s.push_str(&format!(
                    "mark {}\n",
                    sh_quote(&format!("provision[{i}] {path}"))
                ));
                s.push_str(&format!(
                    "chmod +x \"$B/scripts/{i}\"\nif head -c 2 \"$B/scripts/{i}\" | grep -q '^#!'; then \"$B/scripts/{i}\"; else sh -e \"$B/scripts/{i}\"; fi\n"
                ));
            }
            ResolvedStep::Shell(text) => {
                s.push_str(&format!(
                    "mark {}\n",
                    sh_quote(&format!("provision[{i}] shell"))
                ));
                s.push_str(&format!("sh -ec {}\n", sh_quote(text)));
            }
        }
    }
    s.push_str("mark done\n");
    s
}

fn append(
    tar: &mut tar::Builder<impl Write>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, path, data)
}

/// Builds the layer's bundle, byte-for-byte reproducible for equal inputs.
pub fn bundle(job: &LayerJob) -> std::io::Result<Bundle> {
    let layer = &job.layer;
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    append(&mut tar, "run.sh", run_script(job).as_bytes(), 0o755)?;
    let manifest = Manifest {
        schema_version: 1,
        layer: layer.name(),
        hash: job.hash.as_str(),
        build_id: &job.build_id,
        parent_image: job.parent_image.as_deref(),
        steps: job.record.labels.provision.clone(),
    };
    append(
        &mut tar,
        "manifest.json",
        &serde_json::to_vec_pretty(&manifest).expect("manifest serializes"),
        0o644,
    )?;
    for (i, f) in layer.files.iter().enumerate() {
        if f.is_dir {
            for entry in walkdir::WalkDir::new(&f.src_path)
                .sort_by_file_name()
                .min_depth(1)
            {
                let entry = entry.map_err(std::io::Error::other)?;
                if !entry.file_type().is_file() {
                    continue;
                }
                let rel = entry
                    .path()
                    .strip_prefix(&f.src_path)
                    .unwrap_or(entry.path());
                let exec = is_exec(entry.path());
                let data = std::fs::read(entry.path())?;
                append(
                    &mut tar,
                    &format!("files/{i}/{}", rel.to_string_lossy()),
                    &data,
                    if exec { 0o755 } else { 0o644 },
                )?;
            }
        } else {
            append(
                &mut tar,
                &format!("files/{i}"),
                &std::fs::read(&f.src_path)?,
                0o644,
            )?;
        }
    }
    for (i, step) in layer.steps.iter().enumerate() {
        if let ResolvedStep::Script { abs, .. } = step {
            append(
                &mut tar,
                &format!("scripts/{i}"),
                &std::fs::read(abs)?,
                0o755,
            )?;
        }
    }
    let bytes = tar.into_inner()?.finish()?;
    let sha256 = hex(&sha2::Sha256::digest(&bytes));
    Ok(Bundle { bytes, sha256 })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(unix)]
fn is_exec(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(not(unix))]
fn is_exec(_: &std::path::Path) -> bool {
    false
}

/// Where the bootstrap gets the bundle and puts its results.
pub struct BootstrapUrls<'a> {
    pub bundle: &'a str,
    pub bundle_sha256: &'a str,
    pub log: &'a str,
    pub status: &'a str,
}

/// The user-data script. `timeout_secs` arms the watchdog.
pub fn user_data(
    layer: &str,
    build_id: &str,
    urls: &BootstrapUrls<'_>,
    timeout_secs: u64,
) -> String {
    format!(
        r#"#!/bin/sh
# amimake bootstrap: layer {layer}, build {build_id}
set -u
umask 022
export PATH="${{PATH:+$PATH:}}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
W=$(mktemp -d /tmp/amimake.XXXXXX)
LOG="$W/amimake.log"
BUNDLE_URL={bundle}
BUNDLE_SHA256={sha}
LOG_URL={log}
STATUS_URL={status}
: > "$LOG"
# file:// URLs serve the local backend; everything else goes through curl.
fetch() {{
  case "$1" in
    file://*) cp "${{1#file://}}" "$2" ;;
    *) curl -fsS --retry 5 --retry-delay 2 -o "$2" "$1" ;;
  esac
}}
put() {{
  case "$2" in
    file://*) cp "$1" "${{2#file://}}" 2>>"$LOG" || echo "amimake: upload of $1 failed" >>"$LOG" ;;
    *) curl -fsS --retry 5 --retry-delay 2 -X PUT -H 'Content-Type: application/octet-stream' -T "$1" "$2" >/dev/null 2>>"$LOG" || echo "amimake: upload of $1 failed" >>"$LOG" ;;
  esac
}}
finish() {{
  step=$(cat "$W/b/.step" 2>/dev/null | tr -d '"\\' || true)
  printf '{{"status":"%s","exit_code":%s,"step":"%s"}}\n' "$1" "$2" "$step" > "$W/status.json"
  echo "==> amimake: $1 (exit $2)" >>"$LOG"
  put "$LOG" "$LOG_URL"
  put "$W/status.json" "$STATUS_URL"
  rm -rf "$W"
  sync
  poweroff
  exit 0
}}
(
  trap 'kill "$S" 2>/dev/null; exit 0' TERM
  sleep {timeout} & S=$!
  wait "$S"
  echo "amimake: build.timeout ({timeout}s) passed" >>"$LOG"; finish timeout 124
) &
WATCHDOG=$!
echo "==> amimake: layer {layer}, build {build_id}" >>"$LOG"
n=0
until fetch "$BUNDLE_URL" "$W/bundle.tgz" 2>>"$LOG"; do
  n=$((n + 1)); [ "$n" -ge 5 ] && {{ kill "$WATCHDOG" 2>/dev/null; finish failed 1; }}
  sleep 5
done
got=$(sha256sum "$W/bundle.tgz" | cut -d' ' -f1)
if [ "$got" != "$BUNDLE_SHA256" ]; then
  echo "amimake: bundle checksum mismatch: $got" >>"$LOG"; kill "$WATCHDOG" 2>/dev/null; finish failed 1
fi
mkdir -p "$W/b" && tar -xzf "$W/bundle.tgz" -C "$W/b" 2>>"$LOG" || {{ kill "$WATCHDOG" 2>/dev/null; finish failed 1; }}
(cd "$W/b" && sh ./run.sh) >>"$LOG" 2>&1
rc=$?
kill "$WATCHDOG" 2>/dev/null
if [ "$rc" -eq 0 ]; then finish succeeded 0; else finish failed "$rc"; fi
"#,
        layer = layer,
        build_id = build_id,
        bundle = sh_quote(urls.bundle),
        sha = sh_quote(urls.bundle_sha256),
        log = sh_quote(urls.log),
        status = sh_quote(urls.status),
        timeout = timeout_secs,
    )
}

/// The status object the bootstrap uploads.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
pub struct Status {
    pub status: String,
    pub exit_code: i64,
    #[serde(default)]
    pub step: String,
}

/// The last `n` lines of a log.
pub fn tail(log: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

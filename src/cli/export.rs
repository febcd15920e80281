//! `amimake export <t>`: a local layer's tree as a tar archive, a raw ext4
//! disk image (`mkfs.ext4 -d`) or a qcow2 image (`qemu-img convert`), to
//! boot, inspect or import elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{Args, ValueEnum};

use crate::backend::BackendKind;
use crate::builder::local;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Tar,
    Raw,
    Qcow2,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The template whose layer to export (built with --backend local).
    pub template: String,
    #[arg(long, value_enum, default_value = "tar")]
    pub format: ExportFormat,
    /// Output file (default: <template>.<format>).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .map_err(|e| Error::BuildFailed(format!("{what}: cannot run: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::BuildFailed(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn raw_image(tree: &Path, out: &Path) -> Result<()> {
    if !local::which("mkfs.ext4") {
        return Err(Error::Usage(
            "exporting a raw image needs mkfs.ext4 (`apt-get install e2fsprogs`)".into(),
        ));
    }
    // The tree, plus a quarter for filesystem overhead and 64 MiB of room.
    let size = local::disk_usage(tree) * 5 / 4 + 64 * 1024 * 1024;
    let size = size.div_ceil(1024 * 1024) * 1024 * 1024;
    let file = std::fs::File::create(out).map_err(|e| Error::io(out, e))?;
    file.set_len(size).map_err(|e| Error::io(out, e))?;
    drop(file);
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "amimake", "-d"])
            .arg(tree)
            .arg(out),
        "mkfs.ext4",
    )
}

pub fn run_export(args: ExportArgs) -> Result<i32> {
    let project = super::load_project()?;
    let i = project.find(&args.template)?;
    let hashes = super::offline_hashes(&project, BackendKind::Local, None)?;
    let hash = hashes[i].hash().ok_or_else(|| {
        Error::Usage(format!(
            "`{}` has no local hash: {}",
            args.template,
            match &hashes[i] {
                crate::hash::HashState::Unresolved(why) => why.as_str(),
                _ => "",
            }
        ))
    })?;
    let store = local::store_dir(&super::local_cache_dir(&project));
    let tree = local::tree(&store, hash.as_str());
    if !tree.is_dir() {
        return Err(Error::Usage(format!(
            "`{}` is not built for {} yet; run `amimake build --backend local {}` first",
            args.template,
            local::target(),
            args.template
        )));
    }
    let ext = match args.format {
        ExportFormat::Tar => "tar",
        ExportFormat::Raw => "raw",
        ExportFormat::Qcow2 => "qcow2",
    };
    let out = args
        .output
        .unwrap_or_else(|| PathBuf::from(format!("{}.{ext}", args.template)));
    match args.format {
        ExportFormat::Tar => run(
            Command::new("tar")
                .args(["--numeric-owner", "--xattrs", "-C"])
                .arg(&tree)
                .arg("-cf")
                .arg(&out)
                .arg("."),
            "tar",
        )?,
        ExportFormat::Raw => raw_image(&tree, &out)?,
        ExportFormat::Qcow2 => {
            if !local::which("qemu-img") {
                return Err(Error::Usage(
                    "exporting qcow2 needs qemu-img (`apt-get install qemu-utils`)".into(),
                ));
            }
            let raw = out.with_extension("raw.tmp");
            let result = raw_image(&tree, &raw).and_then(|()| {
                run(
                    Command::new("qemu-img")
                        .args(["convert", "-f", "raw", "-O", "qcow2"])
                        .arg(&raw)
                        .arg(&out),
                    "qemu-img convert",
                )
            });
            let _ = std::fs::remove_file(&raw);
            result?;
        }
    }
    let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "exported {} ({}) to {} ({} MiB)",
        args.template,
        hash.short(),
        out.display(),
        bytes / (1024 * 1024)
    );
    Ok(0)
}

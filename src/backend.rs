//! Backends as the hash and the cache see them: which target a cache entry
//! is for, and how a root layer's source becomes the parent component of its
//! hash without touching the network (recorded `ami_filter` resolutions).

use std::fmt;

use serde::Serialize;

use crate::cache::LocalCache;
use crate::hash::RootSource;
use crate::template::resolve::Layer;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Bake AMIs on EC2 builder instances.
    Ec2,
    /// Build root filesystem trees on this machine.
    Local,
    /// Pretend: synthetic image IDs, optional sleeps; for tests and trials.
    Simulate,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Ec2 => "ec2",
            BackendKind::Local => "local",
            BackendKind::Simulate => "simulate",
        }
    }

    pub fn parse(s: &str) -> Option<BackendKind> {
        match s {
            "ec2" => Some(BackendKind::Ec2),
            "local" => Some(BackendKind::Local),
            "simulate" => Some(BackendKind::Simulate),
            _ => None,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The cache key for an `ami_filter` resolution in `region`.
pub fn filter_key(region: &str, filter: &crate::template::model::AmiFilter) -> String {
    format!(
        "ec2:{region}:{}",
        serde_json::to_string(filter).expect("filter serializes")
    )
}

/// A root's source identity without network access (see the hash module
/// table). `recorded` supplies the last live `ami_filter` resolution.
pub fn offline_root_source(
    kind: BackendKind,
    layer: &Layer,
    base_ami: Option<&str>,
    region: &str,
    recorded: Option<&LocalCache>,
) -> RootSource {
    if let Some(ami) = base_ami {
        if kind != BackendKind::Local {
            return RootSource::Resolved {
                identity: format!("{kind}:{ami}"),
                image: Some(ami.to_string()),
            };
        }
    }
    let Some(source) = layer.source() else {
        return RootSource::Unresolved("root has no source".into());
    };
    match kind {
        BackendKind::Simulate => RootSource::Resolved {
            identity: format!(
                "simulate:{}",
                serde_json::to_string(source).expect("source serializes")
            ),
            image: None,
        },
        BackendKind::Ec2 => {
            if let Some(ami) = &source.ami {
                return RootSource::Resolved {
                    identity: format!("ec2:{}", ami.value),
                    image: Some(ami.value.clone()),
                };
            }
            let Some(filter) = &source.ami_filter else {
                return RootSource::Unresolved(
                    "no ec2 source: give `source.ami` or `source.ami_filter`, or pass --base-ami"
                        .into(),
                );
            };
            match recorded.and_then(|c| c.resolution(&filter_key(region, filter)).ok().flatten()) {
                Some((image, _at)) => RootSource::Resolved {
                    identity: format!("ec2:{image}"),
                    image: Some(image),
                },
                None => RootSource::Unresolved(format!(
                    "ami_filter has no recorded resolution in {region} yet (an ec2 plan or build records one; or pass --base-ami, or --backend simulate)"
                )),
            }
        }
        BackendKind::Local => {
            let Some(local) = &source.local else {
                return RootSource::Unresolved(
                    "no `source.local` for the local backend: add `local: {mmdebstrap: {suite: bookworm}}` or `local: {rootfs: <tarball>}`".into(),
                );
            };
            let mut identity = format!(
                "local:{}",
                serde_json::to_string(local).expect("local source serializes")
            );
            if let Some(rootfs) = &local.rootfs {
                let path = layer.dir().join(&rootfs.value);
                match crate::hash::content_hash(&path) {
                    Ok((_, h)) => identity.push_str(&format!("+rootfs:{h}")),
                    Err(e) => {
                        return RootSource::Unresolved(format!(
                            "cannot read rootfs `{}`: {e}",
                            rootfs.value
                        ))
                    }
                }
            }
            RootSource::Resolved {
                identity,
                image: None,
            }
        }
    }
}

/// The AWS region amimake uses: `amimake.yaml` `region`, else the standard
/// environment variables, else `us-east-1`.
pub fn region(config_region: Option<&str>) -> String {
    config_region
        .map(str::to_string)
        .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
        .or_else(|| {
            std::env::var("AWS_DEFAULT_REGION")
                .ok()
                .filter(|r| !r.is_empty())
        })
        .unwrap_or_else(|| "us-east-1".to_string())
}

//! The template file as written: serde types for template language v1.
//!
//! Every struct refuses unknown keys so a typo is an error with its location,
//! not a silently ignored setting. Values that later checks need to point at
//! (paths, package specs, durations) are kept [`Spanned`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

/// One `templates/*.yaml` file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateDoc {
    /// Overrides the file stem as the template's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Parent template: a name, or a path relative to this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<Spanned<String>>,
    /// Base image; only on root templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Spanned<Source>>,
    #[serde(
        default,
        deserialize_with = "crate::yaml::null_as_default",
        skip_serializing_if = "BuildSettings::is_empty"
    )]
    pub build: BuildSettings,
    #[serde(
        default,
        deserialize_with = "crate::yaml::null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub variables: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "crate::yaml::null_as_default",
        skip_serializing_if = "Software::is_empty"
    )]
    pub software: Software,
    #[serde(
        default,
        deserialize_with = "crate::yaml::null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub files: Vec<FileSpec>,
    #[serde(
        default,
        deserialize_with = "crate::yaml::null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub provision: Vec<Step>,
    #[serde(
        default,
        deserialize_with = "crate::yaml::null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<RebuildPolicy>,
    /// Regions to copy the image to after a build (multi-region).
    #[serde(
        default,
        deserialize_with = "crate::yaml::null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub regions: Vec<String>,
}

/// Where a root layer's image comes from.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// A fixed AMI ID (ec2 backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ami: Option<Spanned<String>>,
    /// The newest available AMI matching a filter (ec2 backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ami_filter: Option<AmiFilter>,
    /// A root filesystem built on this machine (local backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalSource>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AmiFilter {
    #[serde(default)]
    pub owners: Vec<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocalSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmdebstrap: Option<Mmdebstrap>,
    /// A root filesystem tarball, relative to the template file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<Spanned<String>>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mmdebstrap {
    pub suite: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
}

/// Builder settings; maps merge key by key along the chain, the child wins.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BuildSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// `x86_64` or `arm64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_size_gb: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_type: Option<String>,
    /// How long the builder may run, e.g. `90m`; a watchdog powers it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_groups: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_profile: Option<String>,
}

impl BuildSettings {
    pub fn is_empty(&self) -> bool {
        *self == BuildSettings::default()
    }

    /// `self` overridden key by key by `child`.
    pub fn merged_with(&self, child: &BuildSettings) -> BuildSettings {
        fn pick<T: Clone>(parent: &Option<T>, child: &Option<T>) -> Option<T> {
            child.clone().or_else(|| parent.clone())
        }
        BuildSettings {
            instance_type: pick(&self.instance_type, &child.instance_type),
            architecture: pick(&self.architecture, &child.architecture),
            volume_size_gb: pick(&self.volume_size_gb, &child.volume_size_gb),
            volume_type: pick(&self.volume_type, &child.volume_type),
            timeout: pick(&self.timeout, &child.timeout),
            subnet: pick(&self.subnet, &child.subnet),
            security_groups: pick(&self.security_groups, &child.security_groups),
            instance_profile: pick(&self.instance_profile, &child.instance_profile),
        }
    }
}

/// Package lists per manager.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Software {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apt: Vec<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dnf: Vec<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spack: Vec<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pip: Vec<Spanned<String>>,
}

impl Software {
    pub fn is_empty(&self) -> bool {
        self.lists().iter().all(|(_, l)| l.is_empty())
    }

    /// The lists in their fixed install order.
    pub fn lists(&self) -> [(crate::template::packages::Manager, &Vec<Spanned<String>>); 4] {
        use crate::template::packages::Manager;
        [
            (Manager::Apt, &self.apt),
            (Manager::Dnf, &self.dnf),
            (Manager::Spack, &self.spack),
            (Manager::Pip, &self.pip),
        ]
    }
}

/// A file copied into the image.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Relative to the template file; a file or a directory.
    pub src: Spanned<String>,
    /// Absolute path in the image.
    pub dest: Spanned<String>,
    /// Octal permission bits, e.g. `"0644"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Spanned<String>>,
    /// `user:group` to chown to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A provisioning step: exactly one of `script` or `shell`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// A script file, relative to the template file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<Spanned<String>>,
    /// Inline shell, run with `sh -e`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Spanned<String>>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RebuildPolicy {
    /// Older cached images are rebuilt, e.g. `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Spanned<String>>,
}

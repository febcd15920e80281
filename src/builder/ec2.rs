//! The ec2 backend: one builder instance per layer, driven by the
//! user-data bootstrap of [`crate::builder::bootstrap`].
//!
//! 1. Upload the layer bundle to the artifacts bucket, content-addressed
//!    (`<prefix>/bundles/<sha256>.tar.gz`), once.
//! 2. RunInstances from the parent image (`InstanceInitiatedShutdownBehavior
//!    =stop`, `amimake:*` tags, user-data with presigned URLs). The instance
//!    is recorded in the local cache *before* the call (by client token).
//! 3. Wait for `stopped`: a shared [`Poller`] makes one batched Describe
//!    call per tick for every layer in flight.
//! 4. Read the status object; on failure show the log's tail.
//! 5. CreateImage (recorded before), tag image and snapshots, wait for
//!    `available`.
//! 6. Always terminate the instance — on success, failure and cancel — and
//!    deregister a half-made image and delete its snapshots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, IamInstanceProfileSpecification, InstanceType,
    ResourceType, ShutdownBehavior, Tag, TagSpecification, VolumeType,
};
use base64::Engine;
use tokio::sync::watch;

use crate::aws::{ec2_err, Aws};
use crate::builder::bootstrap::{self, BootstrapUrls, Status};
use crate::builder::{cancelled, BuildFuture, Builder, BuiltImage, LayerError, LayerJob};
use crate::cache::LocalCache;

pub const DEFAULT_INSTANCE_TYPE: &str = "t3.medium";
const LOG_TAIL_LINES: usize = 25;

/// Settings from `amimake.yaml` `builder:` (and the template's `build:`).
#[derive(Clone, Debug)]
pub struct Ec2Settings {
    pub artifacts_bucket: String,
    pub artifacts_prefix: String,
    pub subnet: Option<String>,
    pub security_groups: Vec<String>,
    pub instance_profile: Option<String>,
    pub poll_interval: Duration,
    /// Longest wait for an image to become available.
    pub max_wait: Duration,
}

/// Batched state polling for instances and images in flight.
pub struct Poller {
    aws: Aws,
    interval: Duration,
    instances: Mutex<HashMap<String, watch::Sender<Option<String>>>>,
    images: Mutex<HashMap<String, watch::Sender<Option<String>>>>,
}

impl Poller {
    pub fn new(aws: Aws, interval: Duration) -> Arc<Poller> {
        Arc::new(Poller {
            aws,
            interval,
            instances: Mutex::new(HashMap::new()),
            images: Mutex::new(HashMap::new()),
        })
    }

    /// Polls until the poller is dropped by everyone else.
    pub async fn run(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.interval).await;
            if Arc::strong_count(&self) == 1 {
                return;
            }
            let ids = Self::watched(&self.instances);
            if !ids.is_empty() {
                match self.aws.instance_states(&ids).await {
                    Ok(states) => Self::publish(&self.instances, states),
                    Err(e) => tracing::warn!("polling instances: {e}"),
                }
            }
            let ids = Self::watched(&self.images);
            if !ids.is_empty() {
                match self.aws.describe_images(&ids).await {
                    Ok(images) => {
                        Self::publish(&self.images, images.into_iter().map(|i| (i.id, i.state)))
                    }
                    Err(e) => tracing::warn!("polling images: {e}"),
                }
            }
        }
    }

    fn watched(map: &Mutex<HashMap<String, watch::Sender<Option<String>>>>) -> Vec<String> {
        map.lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    fn publish(
        map: &Mutex<HashMap<String, watch::Sender<Option<String>>>>,
        states: impl IntoIterator<Item = (String, String)>,
    ) {
        let map = map.lock().unwrap_or_else(|p| p.into_inner());
        for (id, state) in states {
            if let Some(tx) = map.get(&id) {
                tx.send_replace(Some(state));
            }
        }
    }

    fn watch(
        map: &Mutex<HashMap<String, watch::Sender<Option<String>>>>,
        id: &str,
    ) -> watch::Receiver<Option<String>> {
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    fn unwatch(map: &Mutex<HashMap<String, watch::Sender<Option<String>>>>, id: &str) {
        map.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Waits until the instance reaches one of `wanted`; fails on one of
    /// `fatal`, or after `max`. Returns the state reached.
    pub async fn wait_instance(
        &self,
        id: &str,
        wanted: &[&str],
        fatal: &[&str],
        max: Duration,
    ) -> Result<String, String> {
        let rx = Self::watch(&self.instances, id);
        let r = wait_state(rx, wanted, fatal, max, &format!("instance {id}")).await;
        Self::unwatch(&self.instances, id);
        r
    }

    pub async fn wait_image(&self, id: &str, max: Duration) -> Result<String, String> {
        let rx = Self::watch(&self.images, id);
        let r = wait_state(
            rx,
            &["available"],
            &["failed", "invalid", "error", "deregistered"],
            max,
            &format!("image {id}"),
        )
        .await;
        Self::unwatch(&self.images, id);
        r
    }
}

async fn wait_state(
    mut rx: watch::Receiver<Option<String>>,
    wanted: &[&str],
    fatal: &[&str],
    max: Duration,
    what: &str,
) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + max;
    loop {
        if let Some(state) = rx.borrow_and_update().clone() {
            if wanted.contains(&state.as_str()) {
                return Ok(state);
            }
            if fatal.contains(&state.as_str()) {
                return Err(format!("{what} went to `{state}`"));
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(format!("stopped watching {what}")),
            Err(_) => {
                return Err(format!(
                    "{what}: no `{}` after {}s",
                    wanted.join("|"),
                    max.as_secs()
                ))
            }
        }
    }
}

/// What a layer build has created so far, for cleanup.
#[derive(Default, Debug)]
struct Created {
    instance: Option<String>,
    client_token: Option<String>,
    image: Option<String>,
    snapshots: Vec<String>,
    done: bool,
}

pub struct Ec2Builder {
    pub aws: Aws,
    pub target: String,
    pub settings: Ec2Settings,
    pub cache: Arc<LocalCache>,
    pub poller: Arc<Poller>,
}

impl Builder for Ec2Builder {
    fn target(&self) -> &str {
        &self.target
    }

    fn build(&self, job: LayerJob, cancel: watch::Receiver<bool>) -> BuildFuture<'_> {
        Box::pin(async move {
            let created = Arc::new(Mutex::new(Created::default()));
            let result = tokio::select! {
                r = self.build_layer(&job, created.clone()) => r,
                _ = cancelled(cancel) => Err(LayerError::cancelled()),
            };
            self.cleanup(&job, &created, result.is_ok()).await;
            result
        })
    }
}

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

fn fail(e: impl std::fmt::Display) -> LayerError {
    LayerError::failed(e.to_string())
}

impl Ec2Builder {
    fn key(&self, rest: &str) -> String {
        let prefix = self.settings.artifacts_prefix.trim_matches('/');
        if prefix.is_empty() {
            rest.to_string()
        } else {
            format!("{prefix}/{rest}")
        }
    }

    fn record(&self, id: &str, kind: &str, job: &LayerJob) {
        if let Err(e) = self.cache.record_resource(
            id,
            kind,
            &self.aws.region,
            &job.build_id,
            job.name(),
            job.hash.as_str(),
        ) {
            tracing::warn!("could not record {kind} {id}: {e}");
        }
    }

    fn rename_record(&self, old: &str, new: &str) {
        if let Err(e) = self.cache.rename_resource(old, new) {
            tracing::warn!("could not record {new}: {e}");
        }
    }

    async fn build_layer(
        &self,
        job: &LayerJob,
        created: Arc<Mutex<Created>>,
    ) -> Result<BuiltImage, LayerError> {
        if let Some((region, image)) = &job.copy_from {
            return self.copy_layer(job, region, image, created).await;
        }
        let parent_image = job
            .parent_image
            .clone()
            .ok_or_else(|| fail("no parent image to build on"))?;
        let bucket = &self.settings.artifacts_bucket;
        let timeout = job
            .layer
            .timeout
            .map(|t| t.as_secs())
            .unwrap_or(bootstrap::DEFAULT_TIMEOUT_SECS);

        // 1. The bundle, content-addressed, uploaded once.
        let bundle =
            bootstrap::bundle(job).map_err(|e| fail(format!("cannot make the bundle: {e}")))?;
        let bundle_key = self.key(&format!("bundles/{}.tar.gz", bundle.sha256));
        if !self
            .aws
            .object_exists(bucket, &bundle_key)
            .await
            .map_err(fail)?
        {
            self.aws
                .put_object(bucket, &bundle_key, bundle.bytes)
                .await
                .map_err(fail)?;
        }
        let stem = format!("{}-{}", job.name(), job.hash.short());
        let log_key = self.key(&format!("logs/{}/{stem}.log", job.build_id));
        let status_key = self.key(&format!("logs/{}/{stem}.status.json", job.build_id));
        let ttl = Duration::from_secs(timeout + 3600);
        let urls = (
            self.aws
                .presign_get(bucket, &bundle_key, ttl)
                .await
                .map_err(fail)?,
            self.aws
                .presign_put(bucket, &log_key, ttl)
                .await
                .map_err(fail)?,
            self.aws
                .presign_put(bucket, &status_key, ttl)
                .await
                .map_err(fail)?,
        );
        let user_data = bootstrap::user_data(
            job.name(),
            &job.build_id,
            &BootstrapUrls {
                bundle: &urls.0,
                bundle_sha256: &bundle.sha256,
                log: &urls.1,
                status: &urls.2,
            },
            timeout,
        );
        if user_data.len() > bootstrap::MAX_USER_DATA {
            return Err(fail(format!(
                "user-data is {} bytes, over EC2's 16 KiB",
                user_data.len()
            )));
        }

        // 2. The builder instance, recorded before it exists.
        let parent_info = self
            .aws
            .describe_images(std::slice::from_ref(&parent_image))
            .await
            .map_err(fail)?;
        let root_device = parent_info.first().and_then(|i| i.root_device.clone());
        let client_token = format!("amimake-{}-{}", &job.build_id, job.hash.short());
        let client_token: String = client_token.chars().take(64).collect();
        let pending_id = format!("pending:{client_token}");
        self.record(&pending_id, "instance", job);
        created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .client_token = Some(client_token.clone());
        let build = &job.layer.build;
        let instance_type = build
            .instance_type
            .clone()
            .unwrap_or_else(|| DEFAULT_INSTANCE_TYPE.to_string());
        let tags = vec![
            tag(
                "Name",
                &format!("amimake {} {}", job.name(), job.hash.short()),
            ),
            tag("amimake:build-id", &job.build_id),
            tag("amimake:layer", job.name()),
            tag("amimake:layer-hash", job.hash.as_str()),
        ];
        let mut run = self
            .aws
            .ec2
            .run_instances()
            .image_id(&parent_image)
            .instance_type(InstanceType::from(instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .client_token(&client_token)
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Stop)
            .user_data(base64::engine::general_purpose::STANDARD.encode(user_data.as_bytes()))
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .set_tags(Some(tags.clone()))
                    .build(),
            )
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Volume)
                    .set_tags(Some(tags.clone()))
                    .build(),
            );
        if let (Some(device), Some(size)) = (&root_device, build.volume_size_gb) {
            run = run.block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(device)
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_size(size as i32)
                            .volume_type(VolumeType::from(
                                build.volume_type.as_deref().unwrap_or("gp3"),
                            ))
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            );
        }
        let subnet = build
            .subnet
            .clone()
            .or_else(|| self.settings.subnet.clone());
        if let Some(subnet) = subnet {
            run = run.subnet_id(subnet);
        }
        let groups = build
            .security_groups
            .clone()
            .unwrap_or_else(|| self.settings.security_groups.clone());
        if !groups.is_empty() {
            run = run.set_security_group_ids(Some(groups));
        }
        let profile = build
            .instance_profile
            .clone()
            .or_else(|| self.settings.instance_profile.clone());
        if let Some(profile) = profile {
            let spec = if profile.starts_with("arn:") {
                IamInstanceProfileSpecification::builder()
                    .arn(profile)
                    .build()
            } else {
                IamInstanceProfileSpecification::builder()
                    .name(profile)
                    .build()
            };
            run = run.iam_instance_profile(spec);
        }
        let out = run
            .send()
            .await
            .map_err(|e| fail(ec2_err("RunInstances", e)))?;
        let instance = out
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .ok_or_else(|| fail("RunInstances returned no instance"))?
            .to_string();
        self.rename_record(&pending_id, &instance);
        created.lock().unwrap_or_else(|p| p.into_inner()).instance = Some(instance.clone());
        tracing::info!(
            "{}: builder instance {instance} from {parent_image}",
            job.name()
        );

        // 3. Wait for the bootstrap to power off.
        self.poller
            .wait_instance(
                &instance,
                &["stopped"],
                &["terminated", "shutting-down"],
                Duration::from_secs(timeout + 900),
            )
            .await
            .map_err(fail)?;

        // 4. The status and log.
        let status = self
            .aws
            .get_object(bucket, &status_key)
            .await
            .map_err(fail)?;
        let log = self
            .aws
            .get_object(bucket, &log_key)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let log = String::from_utf8_lossy(&log).into_owned();
        let status: Option<Status> = status.and_then(|b| serde_json::from_slice(&b).ok());
        match status {
            Some(s) if s.status == "succeeded" => {}
            Some(s) => {
                let what = if s.step.is_empty() { "the bootstrap".to_string() } else { s.step.clone() };
                let how = if s.status == "timeout" { "timed out (build.timeout)".to_string() } else { format!("failed (exit {})", s.exit_code) };
                return Err(LayerError {
                    message: format!("{what} {how} on instance {instance}; full log: s3://{bucket}/{log_key}"),
                    log_tail: bootstrap::tail(&log, LOG_TAIL_LINES),
                    cancelled: false,
                });
            }
            None => {
                return Err(LayerError {
                    message: format!("instance {instance} stopped without reporting a status (s3://{bucket}/{status_key})"),
                    log_tail: bootstrap::tail(&log, LOG_TAIL_LINES),
                    cancelled: false,
                })
            }
        }

        // 5. The image, recorded before it exists.
        let name = ami_name(job.name(), job.hash.short(), &job.build_id);
        let pending_image = format!("pending-image:{name}");
        self.record(&pending_image, "image", job);
        let mut image_tags = vec![
            tag("Name", &name),
            tag("amimake:build-id", &job.build_id),
            tag("amimake:layer", job.name()),
            tag("amimake:layer-hash", job.hash.as_str()),
            tag("amimake:parent-image", &parent_image),
        ];
        if let Some(parent) = &job.record.parent_name {
            image_tags.push(tag("amimake:parent-layer", parent));
        }
        for (k, v) in &job.layer.tags {
            image_tags.push(tag(k, v));
        }
        let out = self
            .aws
            .ec2
            .create_image()
            .instance_id(&instance)
            .name(&name)
            .description(format!("amimake layer {} ({})", job.name(), job.hash))
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Image)
                    .set_tags(Some(image_tags.clone()))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| fail(ec2_err("CreateImage", e)))?;
        let image = out
            .image_id()
            .ok_or_else(|| fail("CreateImage returned no image"))?
            .to_string();
        self.rename_record(&pending_image, &image);
        created.lock().unwrap_or_else(|p| p.into_inner()).image = Some(image.clone());
        self.poller
            .wait_image(&image, self.settings.max_wait)
            .await
            .map_err(fail)?;
        let info = self
            .aws
            .describe_images(std::slice::from_ref(&image))
            .await
            .map_err(fail)?;
        let snapshots = info
            .first()
            .map(|i| i.snapshots.clone())
            .unwrap_or_default();
        created.lock().unwrap_or_else(|p| p.into_inner()).snapshots = snapshots.clone();
        // The snapshots are tagged once known (and the image again, where
        // TagSpecifications were not honoured).
        let pairs: Vec<(String, String)> = image_tags
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect();
        let mut resources = vec![image.clone()];
        resources.extend(snapshots.iter().cloned());
        self.aws.tag(&resources, &pairs).await.map_err(fail)?;
        created.lock().unwrap_or_else(|p| p.into_inner()).done = true;
        Ok(BuiltImage {
            image,
            snapshots,
            adopted: false,
        })
    }

    /// CopyImage of the layer's image from another region into this one,
    /// recorded before it exists and tagged like a built image.
    async fn copy_layer(
        &self,
        job: &LayerJob,
        region: &str,
        image: &str,
        created: Arc<Mutex<Created>>,
    ) -> Result<BuiltImage, LayerError> {
        let (new, snapshots) = copy_into(
            &self.aws,
            &self.cache,
            &self.poller,
            job.name(),
            &job.hash,
            &job.build_id,
            region,
            image,
            self.settings.max_wait,
        )
        .await
        .map_err(fail)?;
        let mut c = created.lock().unwrap_or_else(|p| p.into_inner());
        c.image = Some(new.clone());
        c.snapshots = snapshots.clone();
        c.done = true;
        Ok(BuiltImage {
            image: new,
            snapshots,
            adopted: false,
        })
    }

    /// Terminates the instance; on failure also removes a half-made image.
    async fn cleanup(&self, job: &LayerJob, created: &Mutex<Created>, succeeded: bool) {
        let c = std::mem::take(&mut *created.lock().unwrap_or_else(|p| p.into_inner()));
        let started = Instant::now();
        let mut instances: Vec<String> = c.instance.iter().cloned().collect();
        if instances.is_empty() {
            if let Some(token) = &c.client_token {
                // Cancelled between RunInstances and its answer.
                if let Ok(found) = self.aws.instances_by_token(&job.build_id, token).await {
                    instances = found;
                }
            }
        }
        match self.aws.terminate(&instances).await {
            Ok(()) => {
                for i in &instances {
                    let _ = self.cache.forget_resource(i);
                }
                if let Some(token) = &c.client_token {
                    let _ = self.cache.forget_resource(&format!("pending:{token}"));
                }
            }
            Err(e) => tracing::error!(
                "{}: could not terminate {}: {e}; run `amimake gc --orphans`",
                job.name(),
                instances.join(", ")
            ),
        }
        if let Some(image) = &c.image {
            if succeeded && c.done {
                let _ = self.cache.forget_resource(image);
            } else {
                match self.aws.delete_image(image, &c.snapshots).await {
                    Ok(()) => {
                        let _ = self.cache.forget_resource(image);
                    }
                    Err(e) => tracing::error!(
                        "{}: could not remove image {image}: {e}; run `amimake gc --orphans`",
                        job.name()
                    ),
                }
            }
        }
        tracing::debug!("{}: cleanup took {:?}", job.name(), started.elapsed());
    }
}

/// `<layer>-<hash12>-<build id>`, within EC2's AMI name rules.
pub fn ami_name(layer: &str, hash_short: &str, build_id: &str) -> String {
    let raw = format!("{layer}-{hash_short}-{build_id}");
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect()
}

/// Copies `image` from `source_region` into `aws`'s region, waits until it
/// is available (through `poller`, which must poll that region), and tags it
/// and its snapshots with the source image's tags. Returns the copy and its
/// snapshots.
#[allow(clippy::too_many_arguments)]
pub async fn copy_into(
    aws: &Aws,
    cache: &LocalCache,
    poller: &Poller,
    layer: &str,
    hash: &crate::hash::LayerHash,
    build_id: &str,
    source_region: &str,
    image: &str,
    max_wait: Duration,
) -> Result<(String, Vec<String>), String> {
    let source = aws.in_region(source_region);
    let tags: Vec<(String, String)> = source
        .describe_images(&[image.to_string()])
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .map(|i| i.tags.into_iter().collect())
        .unwrap_or_default();
    let name = ami_name(layer, hash.short(), build_id);
    let pending = format!("pending-image:{name}");
    let _ = cache.record_resource(
        &pending,
        "image",
        &aws.region,
        build_id,
        layer,
        hash.as_str(),
    );
    let new = aws
        .copy_image(
            source_region,
            image,
            &name,
            &format!("amimake layer {layer} ({hash}), copied from {image} in {source_region}"),
        )
        .await
        .map_err(|e| e.to_string())?;
    let _ = cache.rename_resource(&pending, &new);
    let result = async {
        poller.wait_image(&new, max_wait).await?;
        let info = aws
            .describe_images(std::slice::from_ref(&new))
            .await
            .map_err(|e| e.to_string())?;
        let snapshots = info
            .first()
            .map(|i| i.snapshots.clone())
            .unwrap_or_default();
        let mut resources = vec![new.clone()];
        resources.extend(snapshots.iter().cloned());
        let mut tags = tags;
        tags.retain(|(k, _)| k != "Name");
        tags.push(("Name".into(), name.clone()));
        tags.push((
            "amimake:copied-from".into(),
            format!("{source_region}/{image}"),
        ));
        aws.tag(&resources, &tags)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(snapshots)
    }
    .await;
    match result {
        Ok(snapshots) => {
            let _ = cache.forget_resource(&new);
            Ok((new, snapshots))
        }
        Err(e) => {
            if aws.delete_image(&new, &[]).await.is_ok() {
                let _ = cache.forget_resource(&new);
            }
            Err(e)
        }
    }
}

/// One layer image to have in other regions.
#[derive(Clone, Debug)]
pub struct Replica {
    pub layer: String,
    pub hash: crate::hash::LayerHash,
    pub parent_hash: Option<String>,
    pub image: String,
    pub regions: Vec<String>,
}

/// Copies built and reused images into their other regions, at most three
/// CopyImage operations at once, one cache entry per region. Images already
/// present (cached and still available there) are skipped. Returns the
/// number of failed copies; progress goes to stderr.
pub async fn replicate(
    aws: &Aws,
    account: &str,
    cache: Arc<LocalCache>,
    build_id: &str,
    replicas: Vec<Replica>,
    settings: &Ec2Settings,
) -> usize {
    use crate::report::rfc3339;
    let sem = Arc::new(tokio::sync::Semaphore::new(3));
    let mut pollers: HashMap<String, Arc<Poller>> = HashMap::new();
    let mut set = tokio::task::JoinSet::new();
    for r in replicas {
        for region in r.regions.iter().filter(|reg| **reg != aws.region) {
            let regional = aws.in_region(region);
            let target = format!("ec2/{account}/{region}");
            if let Ok(Some(e)) = cache.get(&r.hash, &target) {
                let present = regional
                    .describe_images(std::slice::from_ref(&e.image))
                    .await
                    .map(|v| v.iter().any(|i| i.state == "available"))
                    .unwrap_or(false);
                if present {
                    continue;
                }
            }
            let poller = pollers
                .entry(region.clone())
                .or_insert_with(|| {
                    let p = Poller::new(regional.clone(), settings.poll_interval);
                    tokio::spawn(p.clone().run());
                    p
                })
                .clone();
            let (sem, cache, r, region, build_id, source_region, max_wait) = (
                sem.clone(),
                cache.clone(),
                r.clone(),
                region.clone(),
                build_id.to_string(),
                aws.region.clone(),
                settings.max_wait,
            );
            set.spawn(async move {
                let _permit = sem.acquire().await;
                let started = Instant::now();
                eprintln!(
                    "[{}] {}: copying {} to {region}",
                    rfc3339(std::time::SystemTime::now()),
                    r.layer,
                    r.image
                );
                match copy_into(
                    &regional,
                    &cache,
                    &poller,
                    &r.layer,
                    &r.hash,
                    &build_id,
                    &source_region,
                    &r.image,
                    max_wait,
                )
                .await
                {
                    Ok((image, _)) => {
                        let entry = crate::cache::CacheEntry {
                            hash: r.hash.clone(),
                            target,
                            image: image.clone(),
                            parent_hash: r.parent_hash.clone(),
                            template: r.layer.clone(),
                            created_at: crate::cache::now_unix(),
                            build_seconds: Some(started.elapsed().as_secs_f64()),
                            build_id: Some(build_id.clone()),
                        };
                        if let Err(e) = cache.put_entry(&entry) {
                            eprintln!(
                                "{}: copied to {region} as {image} but could not record it: {e}",
                                r.layer
                            );
                            return false;
                        }
                        eprintln!(
                            "[{}] {}: copied to {region} as {image} in {:.1}s",
                            rfc3339(std::time::SystemTime::now()),
                            r.layer,
                            started.elapsed().as_secs_f64()
                        );
                        true
                    }
                    Err(e) => {
                        eprintln!("{}: copy to {region} failed: {e}", r.layer);
                        false
                    }
                }
            });
        }
    }
    let mut failed = 0;
    while let Some(done) = set.join_next().await {
        if !matches!(done, Ok(true)) {
            failed += 1;
        }
    }
    failed
}

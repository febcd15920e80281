//! AWS behind domain-level methods: the SDK clients (configured through the
//! standard aws-config chain, with standard retries and timeouts) wrapped in
//! [`Aws`], whose methods speak amimake's language (`resolve_source`,
//! `launch_builder`, `create_layer_image`, ...). SDK errors become strings
//! carrying the AWS error code and message.

use std::collections::HashMap;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{Filter, Tag};

use crate::template::model::AmiFilter;

/// An AWS failure: operation, error code and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsError {
    pub operation: &'static str,
    pub code: Option<String>,
    pub message: String,
}

impl std::fmt::Display for AwsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{}: {code}: {}", self.operation, self.message),
            None => write!(f, "{}: {}", self.operation, self.message),
        }
    }
}

impl std::error::Error for AwsError {}

impl AwsError {
    pub fn is_not_found(&self) -> bool {
        self.code
            .as_deref()
            .is_some_and(|c| c.ends_with(".NotFound") || c == "NoSuchKey" || c == "NotFound")
    }
}

fn err<E>(operation: &'static str, e: aws_sdk_ec2::error::SdkError<E>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let code = e.code().map(str::to_string);
    let message = e
        .message()
        .map(str::to_string)
        .unwrap_or_else(|| aws_sdk_ec2::error::DisplayErrorContext(&e).to_string());
    AwsError {
        operation,
        code,
        message,
    }
}

fn s3_err<E>(operation: &'static str, e: aws_sdk_s3::error::SdkError<E>) -> AwsError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let code = e.code().map(str::to_string);
    let message = e
        .message()
        .map(str::to_string)
        .unwrap_or_else(|| aws_sdk_s3::error::DisplayErrorContext(&e).to_string());
    AwsError {
        operation,
        code,
        message,
    }
}

/// Clients for one account and region.
#[derive(Clone, Debug)]
pub struct Aws {
    pub ec2: aws_sdk_ec2::Client,
    pub s3: aws_sdk_s3::Client,
    pub sts: aws_sdk_sts::Client,
    pub region: String,
}

/// An image as amimake cares about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    pub state: String,
    pub owner: Option<String>,
    pub name: Option<String>,
    pub created: Option<String>,
    pub root_device: Option<String>,
    pub snapshots: Vec<String>,
    /// Sum of the image's EBS volume sizes (GiB): what its snapshots hold.
    pub size_gb: u64,
    pub public: bool,
    pub tags: HashMap<String, String>,
}

impl Aws {
    /// Loads credentials and region from the standard chain. `region`
    /// (from amimake.yaml) wins over the environment.
    pub async fn connect(region: Option<&str>) -> Result<Aws, String> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(5))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .operation_timeout(Duration::from_secs(180))
                    .build(),
            );
        if let Some(r) = region {
            loader = loader.region(aws_config::Region::new(r.to_string()));
        }
        let sdk = loader.load().await;
        let region = sdk.region().map(|r| r.to_string()).ok_or(
            "no AWS region: set `region:` in amimake.yaml, or AWS_REGION, or a profile's region",
        )?;
        // Emulators and custom endpoints want path-style bucket addressing.
        let custom_endpoint = std::env::var_os("AWS_ENDPOINT_URL").is_some()
            || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        let s3_conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(custom_endpoint)
            .build();
        Ok(Aws {
            ec2: aws_sdk_ec2::Client::new(&sdk),
            s3: aws_sdk_s3::Client::from_conf(s3_conf),
            sts: aws_sdk_sts::Client::new(&sdk),
            region,
        })
    }

    /// The same credentials and settings, another region.
    pub fn in_region(&self, region: &str) -> Aws {
        let ec2 = aws_sdk_ec2::Client::from_conf(
            self.ec2
                .config()
                .to_builder()
                .region(aws_config::Region::new(region.to_string()))
                .build(),
        );
        let s3 = aws_sdk_s3::Client::from_conf(
            self.s3
                .config()
                .to_builder()
                .region(aws_sdk_s3::config::Region::new(region.to_string()))
                .build(),
        );
        Aws {
            ec2,
            s3,
            sts: self.sts.clone(),
            region: region.to_string(),
        }
    }

    /// CopyImage into this client's region; returns the new image ID.
    pub async fn copy_image(
        &self,
        source_region: &str,
        source_image: &str,
        name: &str,
        description: &str,
    ) -> Result<String, AwsError> {
        let out = self
            .ec2
            .copy_image()
            .source_region(source_region)
            .source_image_id(source_image)
            .name(name)
            .description(description)
            .send()
            .await
            .map_err(|e| err("CopyImage", e))?;
        out.image_id().map(str::to_string).ok_or_else(|| AwsError {
            operation: "CopyImage",
            code: None,
            message: "no image ID in the answer".into(),
        })
    }

    /// The caller's account ID.
    pub async fn account(&self) -> Result<String, AwsError> {
        let out = self.sts.get_caller_identity().send().await.map_err(|e| {
            let code = aws_sdk_sts::error::ProvideErrorMetadata::code(&e).map(str::to_string);
            AwsError {
                operation: "GetCallerIdentity",
                code,
                message: aws_sdk_sts::error::DisplayErrorContext(&e).to_string(),
            }
        })?;
        out.account().map(str::to_string).ok_or_else(|| AwsError {
            operation: "GetCallerIdentity",
            code: None,
            message: "no account in the answer".into(),
        })
    }

    /// Images by ID; missing ones are simply absent (no NotFound error).
    pub async fn describe_images(&self, ids: &[String]) -> Result<Vec<ImageInfo>, AwsError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for chunk in ids.chunks(190) {
            let resp = self
                .ec2
                .describe_images()
                .filters(
                    Filter::builder()
                        .name("image-id")
                        .set_values(Some(chunk.to_vec()))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| err("DescribeImages", e))?;
            out.extend(resp.images().iter().map(image_info));
        }
        Ok(out)
    }

    /// The newest available image matching `filter`.
    pub async fn resolve_filter(&self, filter: &AmiFilter) -> Result<Option<ImageInfo>, AwsError> {
        let mut req = self
            .ec2
            .describe_images()
            .set_owners(Some(filter.owners.clone()))
            .filters(Filter::builder().name("name").values(&filter.name).build())
            .filters(Filter::builder().name("state").values("available").build());
        if let Some(arch) = &filter.architecture {
            req = req.filters(Filter::builder().name("architecture").values(arch).build());
        }
        let resp = req.send().await.map_err(|e| err("DescribeImages", e))?;
        let mut images: Vec<ImageInfo> = resp.images().iter().map(image_info).collect();
        images.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(images.pop())
    }

    /// Instance states for many instances in one call (missing ones absent).
    pub async fn instance_states(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, String>, AwsError> {
        let mut states = HashMap::new();
        if ids.is_empty() {
            return Ok(states);
        }
        let resp = self
            .ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("instance-id")
                    .set_values(Some(ids.to_vec()))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| err("DescribeInstances", e))?;
        for r in resp.reservations() {
            for i in r.instances() {
                if let (Some(id), Some(state)) = (i.instance_id(), i.state().and_then(|s| s.name()))
                {
                    states.insert(id.to_string(), state.as_str().to_string());
                }
            }
        }
        Ok(states)
    }

    /// Image IDs with this exact name, owned by this account.
    pub async fn images_named(&self, name: &str) -> Result<Vec<String>, AwsError> {
        let resp = self
            .ec2
            .describe_images()
            .owners("self")
            .filters(Filter::builder().name("name").values(name).build())
            .send()
            .await
            .map_err(|e| err("DescribeImages", e))?;
        Ok(resp
            .images()
            .iter()
            .filter_map(|i| i.image_id().map(str::to_string))
            .collect())
    }

    /// Instances carrying an amimake build-id tag, not terminated:
    /// (instance, build id, launch time in unix seconds).
    pub async fn tagged_instances(&self) -> Result<Vec<(String, String, Option<i64>)>, AwsError> {
        let resp = self
            .ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("tag-key")
                    .values("amimake:build-id")
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .values("pending")
                    .values("running")
                    .values("stopping")
                    .values("stopped")
                    .build(),
            )
            .send()
            .await
            .map_err(|e| err("DescribeInstances", e))?;
        let mut out = Vec::new();
        for r in resp.reservations() {
            for i in r.instances() {
                let build = i
                    .tags()
                    .iter()
                    .find(|t| t.key() == Some("amimake:build-id"))
                    .and_then(|t| t.value())
                    .unwrap_or_default();
                if let Some(id) = i.instance_id() {
                    out.push((
                        id.to_string(),
                        build.to_string(),
                        i.launch_time().map(|t| t.secs()),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Instances of build `build_id` launched with `client_token` (not
    /// terminated). Matched client-side: not every EC2 implementation
    /// filters on `client-token`.
    pub async fn instances_by_token(
        &self,
        build_id: &str,
        client_token: &str,
    ) -> Result<Vec<String>, AwsError> {
        let resp = self
            .ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("tag:amimake:build-id")
                    .values(build_id)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| err("DescribeInstances", e))?;
        Ok(resp
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| i.client_token() == Some(client_token))
            .filter(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str()) != Some("terminated"))
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect())
    }

    pub async fn terminate(&self, ids: &[String]) -> Result<(), AwsError> {
        if ids.is_empty() {
            return Ok(());
        }
        match self
            .ec2
            .terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = err("TerminateInstances", e);
                if e.is_not_found() {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Grants (or with `remove`, revokes) launch permission on an image and
    /// create-volume permission on its snapshots. `accounts`, an
    /// organization ARN, or everyone (`public`).
    pub async fn set_sharing(
        &self,
        image: &str,
        snapshots: &[String],
        accounts: &[String],
        org: Option<&str>,
        public: bool,
        remove: bool,
    ) -> Result<(), AwsError> {
        use aws_sdk_ec2::types::{
            CreateVolumePermission, CreateVolumePermissionModifications, LaunchPermission,
            LaunchPermissionModifications, PermissionGroup,
        };
        let mut perms: Vec<LaunchPermission> = accounts
            .iter()
            .map(|a| LaunchPermission::builder().user_id(a).build())
            .collect();
        if let Some(org) = org {
            perms.push(LaunchPermission::builder().organization_arn(org).build());
        }
        if public {
            perms.push(
                LaunchPermission::builder()
                    .group(PermissionGroup::All)
                    .build(),
            );
        }
        let mods = if remove {
            LaunchPermissionModifications::builder()
                .set_remove(Some(perms))
                .build()
        } else {
            LaunchPermissionModifications::builder()
                .set_add(Some(perms))
                .build()
        };
        self.ec2
            .modify_image_attribute()
            .image_id(image)
            .launch_permission(mods)
            .send()
            .await
            .map_err(|e| err("ModifyImageAttribute", e))?;
        let mut vols: Vec<CreateVolumePermission> = accounts
            .iter()
            .map(|a| CreateVolumePermission::builder().user_id(a).build())
            .collect();
        if public {
            vols.push(
                CreateVolumePermission::builder()
                    .group(PermissionGroup::All)
                    .build(),
            );
        }
        if vols.is_empty() {
            return Ok(());
        }
        for snap in snapshots {
            let mods = if remove {
                CreateVolumePermissionModifications::builder()
                    .set_remove(Some(vols.clone()))
                    .build()
            } else {
                CreateVolumePermissionModifications::builder()
                    .set_add(Some(vols.clone()))
                    .build()
            };
            self.ec2
                .modify_snapshot_attribute()
                .snapshot_id(snap)
                .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
                .create_volume_permission(mods)
                .send()
                .await
                .map_err(|e| err("ModifySnapshotAttribute", e))?;
        }
        Ok(())
    }

    /// Deregisters an image and deletes its snapshots.
    pub async fn delete_image(&self, image: &str, snapshots: &[String]) -> Result<(), AwsError> {
        if let Err(e) = self.ec2.deregister_image().image_id(image).send().await {
            let e = err("DeregisterImage", e);
            if !e.is_not_found() {
                return Err(e);
            }
        }
        for s in snapshots {
            if let Err(e) = self.ec2.delete_snapshot().snapshot_id(s).send().await {
                let e = err("DeleteSnapshot", e);
                if !e.is_not_found() {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Tags resources; retries (bounded) while a just-created resource is
    /// not yet visible (`*.NotFound`).
    pub async fn tag(
        &self,
        resources: &[String],
        tags: &[(String, String)],
    ) -> Result<(), AwsError> {
        if resources.is_empty() {
            return Ok(());
        }
        let mut delay = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            let mut req = self
                .ec2
                .create_tags()
                .set_resources(Some(resources.to_vec()));
            for (k, v) in tags {
                req = req.tags(Tag::builder().key(k).value(v).build());
            }
            match req.send().await.map_err(|e| err("CreateTags", e)) {
                Ok(_) => return Ok(()),
                Err(e) if e.is_not_found() && attempt < 6 => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    // --- S3 ---

    pub async fn object_exists(&self, bucket: &str, key: &str) -> Result<bool, AwsError> {
        match self.s3.head_object().bucket(bucket).key(key).send().await {
            Ok(_) => Ok(true),
            Err(e) => {
                let not_found = matches!(e.as_service_error(), Some(se) if se.is_not_found());
                if not_found {
                    Ok(false)
                } else {
                    Err(s3_err("HeadObject", e))
                }
            }
        }
    }

    pub async fn put_object(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<(), AwsError> {
        self.s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from(body))
            .send()
            .await
            .map_err(|e| s3_err("PutObject", e))?;
        Ok(())
    }

    /// The object's bytes, or None when it does not exist.
    pub async fn get_object(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, AwsError> {
        Ok(self
            .get_object_etag(bucket, key)
            .await?
            .map(|(bytes, _)| bytes))
    }

    /// The object's bytes and ETag, or None when it does not exist.
    pub async fn get_object_etag(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, String)>, AwsError> {
        match self.s3.get_object().bucket(bucket).key(key).send().await {
            Ok(out) => {
                let etag = out.e_tag().unwrap_or_default().to_string();
                let bytes = out.body.collect().await.map_err(|e| AwsError {
                    operation: "GetObject",
                    code: None,
                    message: e.to_string(),
                })?;
                Ok(Some((bytes.into_bytes().to_vec(), etag)))
            }
            Err(e) => {
                let missing = matches!(e.as_service_error(), Some(se) if se.is_no_such_key());
                if missing {
                    Ok(None)
                } else {
                    Err(s3_err("GetObject", e))
                }
            }
        }
    }

    /// Conditional write: `If-None-Match: *` when `if_match` is None, else
    /// `If-Match: <etag>`. Returns the new ETag, or None when the
    /// precondition failed (someone else wrote first).
    pub async fn put_conditional(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        if_match: Option<&str>,
    ) -> Result<Option<String>, AwsError> {
        let mut req = self
            .s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type("application/json")
            .body(aws_sdk_s3::primitives::ByteStream::from(body));
        req = match if_match {
            Some(etag) => req.if_match(etag),
            None => req.if_none_match("*"),
        };
        match req.send().await {
            Ok(out) => Ok(Some(out.e_tag().unwrap_or_default().to_string())),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e).map(str::to_string);
                if matches!(status, Some(412) | Some(409))
                    || matches!(
                        code.as_deref(),
                        Some("PreconditionFailed") | Some("ConditionalRequestConflict")
                    )
                {
                    Ok(None)
                } else {
                    Err(s3_err("PutObject", e))
                }
            }
        }
    }

    pub async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), AwsError> {
        self.s3
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3_err("DeleteObject", e))?;
        Ok(())
    }

    /// Every key under `prefix`.
    pub async fn list_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, AwsError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .s3
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| s3_err("ListObjectsV2", e))?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            token = out.next_continuation_token().map(str::to_string);
            if token.is_none() {
                return Ok(keys);
            }
        }
    }

    pub async fn presign_get(
        &self,
        bucket: &str,
        key: &str,
        ttl: Duration,
    ) -> Result<String, AwsError> {
        let cfg = presigning(ttl)?;
        let req = self
            .s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .presigned(cfg)
            .await
            .map_err(|e| s3_err("GetObject (presign)", e))?;
        Ok(req.uri().to_string())
    }

    pub async fn presign_put(
        &self,
        bucket: &str,
        key: &str,
        ttl: Duration,
    ) -> Result<String, AwsError> {
        let cfg = presigning(ttl)?;
        let req = self
            .s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .presigned(cfg)
            .await
            .map_err(|e| s3_err("PutObject (presign)", e))?;
        Ok(req.uri().to_string())
    }
}

fn presigning(ttl: Duration) -> Result<aws_sdk_s3::presigning::PresigningConfig, AwsError> {
    // SigV4 presigned URLs live at most 7 days.
    let ttl = ttl.min(Duration::from_secs(7 * 24 * 3600 - 60));
    aws_sdk_s3::presigning::PresigningConfig::expires_in(ttl).map_err(|e| AwsError {
        operation: "presign",
        code: None,
        message: e.to_string(),
    })
}

pub(crate) fn image_info(i: &aws_sdk_ec2::types::Image) -> ImageInfo {
    ImageInfo {
        id: i.image_id().unwrap_or_default().to_string(),
        state: i
            .state()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        owner: i.owner_id().map(str::to_string),
        name: i.name().map(str::to_string),
        created: i.creation_date().map(str::to_string),
        root_device: i.root_device_name().map(str::to_string),
        snapshots: i
            .block_device_mappings()
            .iter()
            .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
            .collect(),
        size_gb: i
            .block_device_mappings()
            .iter()
            .filter_map(|b| b.ebs().and_then(|e| e.volume_size()))
            .map(|v| v.max(0) as u64)
            .sum(),
        public: i.public().unwrap_or(false),
        tags: i
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect(),
    }
}

pub(crate) fn ec2_err<E>(operation: &'static str, e: aws_sdk_ec2::error::SdkError<E>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    err(operation, e)
}

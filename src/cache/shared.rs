//! The shared cache in S3, so a layer baked by one developer or by the
//! nightly job is a hit for everyone.
//!
//! Layout under `s3://<bucket>/<prefix>/`:
//! - `v1/layers/<hash>/<target>.json`: one [`RemoteRecord`], written with
//!   `If-None-Match: *` (first writer wins), or `If-Match: <etag>` when
//!   replacing an entry the writer has seen (a forced, expired or stale
//!   rebuild), so a late writer never overwrites a newer result.
//! - `v1/leases/<hash>/<target>.json`: a [`Lease`] while someone builds that
//!   layer; see [`SharedCache::acquire_lease`].
//!
//! Records may be signed (ed25519, over the whole record but the signature
//! field): with `cache.trusted_keys` set, an unsigned or badly signed record
//! is refused (a warning and a miss). The record's JSON Schema is
//! `cache-schema/remote-record.schema.json`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};

use crate::aws::{Aws, AwsError};
use crate::cache::CacheEntry;
use crate::hash::LayerHash;

pub const RECORD_SCHEMA_VERSION: u32 = 1;

/// One shared-cache entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteRecord {
    pub schema_version: u32,
    pub hash: String,
    pub target: String,
    pub image: String,
    pub region: Option<String>,
    pub account: Option<String>,
    pub parent_hash: Option<String>,
    pub parent_image: Option<String>,
    pub template: String,
    /// Unix seconds.
    pub created: i64,
    /// Who built it: `user@host`.
    pub builder: String,
    pub duration_seconds: Option<f64>,
    #[serde(default)]
    pub snapshot_ids: Vec<String>,
    /// The lease generation the image was built under.
    #[serde(default)]
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl RemoteRecord {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.signature = None;
        serde_json::to_vec(&unsigned).expect("record serializes")
    }

    pub fn sign(&mut self, key: &ed25519_dalek::SigningKey) {
        let sig = key.sign(&self.signed_bytes());
        self.signature = Some(base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()));
    }

    /// Whether one of `trusted` signed exactly this record.
    pub fn verify(&self, trusted: &[ed25519_dalek::VerifyingKey]) -> bool {
        let Some(sig) = &self.signature else {
            return false;
        };
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(sig) else {
            return false;
        };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(&bytes) else {
            return false;
        };
        let msg = self.signed_bytes();
        trusted.iter().any(|k| k.verify(&msg, &sig).is_ok())
    }

    pub fn to_entry(&self) -> Option<CacheEntry> {
        Some(CacheEntry {
            hash: LayerHash::parse(&self.hash)?,
            target: self.target.clone(),
            image: self.image.clone(),
            parent_hash: self.parent_hash.clone(),
            template: self.template.clone(),
            created_at: self.created,
            build_seconds: self.duration_seconds,
            build_id: None,
        })
    }
}

/// A build lease.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: String,
    pub build_id: String,
    /// Unix seconds.
    pub expires: i64,
    pub generation: u64,
}

/// The outcome of trying to take a lease.
#[derive(Clone, Debug, PartialEq)]
pub enum LeaseState {
    /// Ours, with the object's ETag (for renewal and release).
    Acquired { etag: String, generation: u64 },
    /// Someone else is building it until `expires`.
    Held(Lease),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    ReadWrite,
    ReadOnly,
}

#[derive(Clone)]
pub struct SharedCache {
    pub aws: Aws,
    pub bucket: String,
    pub prefix: String,
    pub mode: Mode,
    pub signer: Option<ed25519_dalek::SigningKey>,
    pub trusted: Vec<ed25519_dalek::VerifyingKey>,
    /// Parallel lookups.
    pub concurrency: usize,
    /// Set after the first failure to reach S3: the rest of the run treats
    /// the shared cache as absent instead of retrying every call.
    pub disabled: Arc<std::sync::atomic::AtomicBool>,
}

/// Parses `s3://bucket/prefix`.
pub fn parse_s3_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then(|| (bucket.to_string(), prefix.trim_matches('/').to_string()))
}

/// `user@host` for records and leases.
pub fn whoami() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "someone".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}

impl SharedCache {
    fn guard(&self) -> Result<(), AwsError> {
        if self.disabled.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(AwsError {
                operation: "shared cache",
                code: None,
                message: "disabled for this run after an earlier error".into(),
            });
        }
        Ok(())
    }

    /// Records a failure to reach S3 (warning once) and passes it on.
    fn tripped(&self, e: AwsError) -> AwsError {
        if !self
            .disabled
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                "shared cache {} unavailable, continuing without it: {e}",
                self.url()
            );
        }
        e
    }

    fn key(&self, kind: &str, hash: &str, target: &str) -> String {
        let rest = format!("v1/{kind}/{hash}/{target}.json");
        if self.prefix.is_empty() {
            rest
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// The record for (hash, target) and its ETag; refused records (bad
    /// signature, wrong key) are a warning and `None`.
    pub async fn get(
        &self,
        hash: &LayerHash,
        target: &str,
    ) -> Result<Option<(RemoteRecord, String)>, AwsError> {
        let Some((key, bytes, etag)) = self.fetch(hash, target).await? else {
            return Ok(None);
        };
        let record: RemoteRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    "shared cache: s3://{}/{key} is not a valid record ({e}); ignoring it",
                    self.bucket
                );
                return Ok(None);
            }
        };
        if record.hash != hash.as_str() || record.target != target {
            tracing::warn!(
                "shared cache: s3://{}/{key} names another layer ({} / {}); ignoring it",
                self.bucket,
                record.hash,
                record.target
            );
            return Ok(None);
        }
        if !self.trusted.is_empty() && !record.verify(&self.trusted) {
            tracing::warn!(
                "shared cache: s3://{}/{key} is {}; ignoring it (cache.trusted_keys is set)",
                self.bucket,
                if record.signature.is_some() {
                    "not signed by a trusted key"
                } else {
                    "unsigned"
                }
            );
            return Ok(None);
        }
        Ok(Some((record, etag)))
    }

    /// Looks up many keys at once, `concurrency` in flight. The first error
    /// makes every remaining lookup a miss (with one warning).
    pub async fn get_many(
        &self,
        keys: &[LayerHash],
        target: &str,
    ) -> Vec<Option<(RemoteRecord, String)>> {
        let sem = Arc::new(tokio::sync::Semaphore::new(self.concurrency.max(1)));
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut set = tokio::task::JoinSet::new();
        for (i, hash) in keys.iter().enumerate() {
            let (me, sem, failed, hash, target) = (
                self.clone(),
                sem.clone(),
                failed.clone(),
                hash.clone(),
                target.to_string(),
            );
            set.spawn(async move {
                let _permit = sem.acquire().await;
                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                    return (i, None);
                }
                match me.get(&hash, &target).await {
                    Ok(r) => (i, r),
                    Err(e) => {
                        if !failed.swap(true, std::sync::atomic::Ordering::Relaxed) {
                            tracing::warn!(
                                "shared cache {} unavailable, treating lookups as misses: {e}",
                                me.url()
                            );
                        }
                        (i, None)
                    }
                }
            });
        }
        let mut out = vec![None; keys.len()];
        while let Some(done) = set.join_next().await {
            if let Ok((i, r)) = done {
                out[i] = r;
            }
        }
        out
    }

    /// Publishes a record: first writer wins, or replaces the entry with
    /// ETag `replacing`. Returns false when another writer got there first.
    pub async fn put(
        &self,
        mut record: RemoteRecord,
        replacing: Option<&str>,
    ) -> Result<bool, AwsError> {
        if self.mode == Mode::ReadOnly {
            return Ok(false);
        }
        if let Some(key) = &self.signer {
            record.sign(key);
        }
        let key = self.key("layers", &record.hash, &record.target);
        let body = serde_json::to_vec_pretty(&record).expect("record serializes");
        self.guard()?;
        self.aws
            .put_conditional(&self.bucket, &key, body, replacing)
            .await
            .map_err(|e| self.tripped(e))
            .map(|etag| etag.is_some())
    }

    pub async fn delete(&self, hash: &LayerHash, target: &str) -> Result<(), AwsError> {
        if self.mode == Mode::ReadOnly {
            return Ok(());
        }
        self.guard()?;
        self.aws
            .delete_object(&self.bucket, &self.key("layers", hash.as_str(), target))
            .await
            .map_err(|e| self.tripped(e))
    }

    /// Takes the build lease for (hash, target): created with
    /// `If-None-Match: *`; an expired lease is taken over with `If-Match`
    /// on its ETag and a higher generation.
    pub async fn acquire_lease(
        &self,
        hash: &LayerHash,
        target: &str,
        build_id: &str,
        ttl: Duration,
    ) -> Result<LeaseState, AwsError> {
        let key = self.key("leases", hash.as_str(), target);
        self.guard()?;
        for _ in 0..5 {
            let now = crate::cache::now_unix();
            let existing = self
                .aws
                .get_object_etag(&self.bucket, &key)
                .await
                .map_err(|e| self.tripped(e))?;
            let (generation, replacing) = match &existing {
                None => (1, None),
                Some((bytes, etag)) => match serde_json::from_slice::<Lease>(bytes) {
                    Ok(lease) if lease.expires > now => return Ok(LeaseState::Held(lease)),
                    Ok(lease) => (lease.generation + 1, Some(etag.clone())),
                    Err(_) => (1, Some(etag.clone())),
                },
            };
            let lease = Lease {
                owner: whoami(),
                build_id: build_id.to_string(),
                expires: now + ttl.as_secs() as i64,
                generation,
            };
            let body = serde_json::to_vec(&lease).expect("lease serializes");
            if let Some(etag) = self
                .aws
                .put_conditional(&self.bucket, &key, body, replacing.as_deref())
                .await?
            {
                return Ok(LeaseState::Acquired { etag, generation });
            }
            // Lost a race: look again.
        }
        Err(AwsError {
            operation: "lease",
            code: None,
            message: "could not take the build lease after 5 attempts".into(),
        })
    }

    /// Extends our lease; returns the new ETag, or None if it is no longer ours.
    pub async fn renew_lease(
        &self,
        hash: &LayerHash,
        target: &str,
        build_id: &str,
        etag: &str,
        generation: u64,
        ttl: Duration,
    ) -> Result<Option<String>, AwsError> {
        let expires = crate::cache::now_unix() + ttl.as_secs() as i64;
        self.write_lease(hash, target, build_id, etag, generation, expires)
            .await
    }

    /// Ends our lease by expiring it (never deleting it, so generations
    /// keep growing).
    pub async fn release_lease(
        &self,
        hash: &LayerHash,
        target: &str,
        build_id: &str,
        etag: &str,
        generation: u64,
    ) -> Result<(), AwsError> {
        self.write_lease(hash, target, build_id, etag, generation, 0)
            .await
            .map(|_| ())
    }

    /// Replaces our lease (`If-Match` on its ETag) with a new expiry.
    async fn write_lease(
        &self,
        hash: &LayerHash,
        target: &str,
        build_id: &str,
        etag: &str,
        generation: u64,
        expires: i64,
    ) -> Result<Option<String>, AwsError> {
        let key = self.key("leases", hash.as_str(), target);
        let lease = Lease {
            owner: whoami(),
            build_id: build_id.to_string(),
            expires,
            generation,
        };
        self.guard()?;
        self.aws
            .put_conditional(
                &self.bucket,
                &key,
                serde_json::to_vec(&lease).expect("lease serializes"),
                Some(etag),
            )
            .await
            .map_err(|e| self.tripped(e))
    }

    /// The current lease, if any.
    pub async fn lease(&self, hash: &LayerHash, target: &str) -> Result<Option<Lease>, AwsError> {
        let key = self.key("leases", hash.as_str(), target);
        self.guard()?;
        Ok(self
            .aws
            .get_object_etag(&self.bucket, &key)
            .await
            .map_err(|e| self.tripped(e))?
            .and_then(|(bytes, _)| serde_json::from_slice(&bytes).ok()))
    }

    /// The stored record and its ETag without signature checks (for
    /// deciding whether to replace it).
    pub async fn get_unverified(
        &self,
        hash: &LayerHash,
        target: &str,
    ) -> Result<Option<(RemoteRecord, String)>, AwsError> {
        Ok(self
            .fetch(hash, target)
            .await?
            .and_then(|(_, bytes, etag)| Some((serde_json::from_slice(&bytes).ok()?, etag))))
    }

    /// The record object for (hash, target): its key, bytes and ETag.
    async fn fetch(
        &self,
        hash: &LayerHash,
        target: &str,
    ) -> Result<Option<(String, Vec<u8>, String)>, AwsError> {
        let key = self.key("layers", hash.as_str(), target);
        self.guard()?;
        let found = self
            .aws
            .get_object_etag(&self.bucket, &key)
            .await
            .map_err(|e| self.tripped(e))?;
        Ok(found.map(|(bytes, etag)| (key, bytes, etag)))
    }

    /// Every record key's (hash, target) under the prefix.
    pub async fn list(&self) -> Result<Vec<(String, String)>, AwsError> {
        let prefix = self
            .key("layers", "", "")
            .trim_end_matches("/.json")
            .to_string()
            + "/";
        let keys = self.aws.list_keys(&self.bucket, &prefix).await?;
        Ok(keys
            .into_iter()
            .filter_map(|k| {
                let rest = k.strip_prefix(&prefix)?.strip_suffix(".json")?;
                let (hash, target) = rest.split_once('/')?;
                Some((hash.to_string(), target.to_string()))
            })
            .collect())
    }
}

impl crate::cache::LayerCache for SharedCache {
    fn name(&self) -> String {
        self.url()
    }

    fn get_many<'a>(
        &'a self,
        hashes: &'a [LayerHash],
        target: &'a str,
    ) -> crate::cache::CacheFuture<'a, Vec<Option<CacheEntry>>> {
        Box::pin(async move {
            let found = SharedCache::get_many(self, hashes, target).await;
            Ok(found
                .into_iter()
                .map(|r| r.and_then(|(rec, _)| rec.to_entry()))
                .collect())
        })
    }

    fn put<'a>(&'a self, entry: &'a CacheEntry) -> crate::cache::CacheFuture<'a, ()> {
        Box::pin(async move {
            let record = RemoteRecord {
                schema_version: RECORD_SCHEMA_VERSION,
                hash: entry.hash.to_string(),
                target: entry.target.clone(),
                image: entry.image.clone(),
                region: None,
                account: None,
                parent_hash: entry.parent_hash.clone(),
                parent_image: None,
                template: entry.template.clone(),
                created: entry.created_at,
                builder: whoami(),
                duration_seconds: entry.build_seconds,
                snapshot_ids: Vec::new(),
                generation: 0,
                signature: None,
            };
            self.put(record, None)
                .await
                .map_err(|e| crate::error::Error::Cache(e.to_string()))?;
            Ok(())
        })
    }

    fn check(&self) -> crate::cache::CacheFuture<'_, crate::cache::CacheMode> {
        Box::pin(async move {
            self.aws
                .list_keys(&self.bucket, &self.prefix)
                .await
                .map_err(|e| crate::error::Error::Cache(e.to_string()))?;
            Ok(match self.mode {
                Mode::ReadWrite => crate::cache::CacheMode::ReadWrite,
                Mode::ReadOnly => crate::cache::CacheMode::ReadOnly,
            })
        })
    }
}

/// Reads an ed25519 signing key: 32 bytes, base64.
pub fn parse_signing_key(text: &str) -> Result<ed25519_dalek::SigningKey, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("signing key is not base64: {e}"))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "signing key must be 32 bytes".to_string())?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&arr))
}

/// Reads a public key: 32 bytes, base64 (optionally prefixed `ed25519:`).
pub fn parse_public_key(text: &str) -> Result<ed25519_dalek::VerifyingKey, String> {
    let text = text.trim().trim_start_matches("ed25519:");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("public key `{text}` is not base64: {e}"))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| format!("public key `{text}` must be 32 bytes"))?;
    ed25519_dalek::VerifyingKey::from_bytes(&arr).map_err(|e| format!("public key `{text}`: {e}"))
}

pub fn public_key_text(key: &ed25519_dalek::SigningKey) -> String {
    format!(
        "ed25519:{}",
        base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> RemoteRecord {
        RemoteRecord {
            schema_version: 1,
            hash: "a".repeat(64),
            target: "ec2/1/us-east-1".into(),
            image: "ami-0123456789abcdef0".into(),
            region: Some("us-east-1".into()),
            account: Some("1".into()),
            parent_hash: None,
            parent_image: Some("ami-0fedcba9876543210".into()),
            template: "t".into(),
            created: 1,
            builder: "me@here".into(),
            duration_seconds: Some(1.0),
            snapshot_ids: vec![],
            generation: 1,
            signature: None,
        }
    }

    #[test]
    fn signature_covers_the_whole_record() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let trusted = vec![key.verifying_key()];
        let mut r = record();
        assert!(!r.verify(&trusted), "unsigned is refused");
        r.sign(&key);
        assert!(r.verify(&trusted));
        let mut replayed = r.clone();
        replayed.hash = "b".repeat(64);
        assert!(
            !replayed.verify(&trusted),
            "replay under another hash fails"
        );
        let mut swapped = r.clone();
        swapped.image = "ami-0badbadbadbadbad0".into();
        assert!(!swapped.verify(&trusted), "another image fails");
        let other = ed25519_dalek::SigningKey::from_bytes(&[8u8; 32]);
        assert!(
            !r.verify(&[other.verifying_key()]),
            "an untrusted key fails"
        );
    }

    #[test]
    fn s3_urls() {
        assert_eq!(
            parse_s3_url("s3://b/p/q/"),
            Some(("b".into(), "p/q".into()))
        );
        assert_eq!(parse_s3_url("s3://b"), Some(("b".into(), "".into())));
        assert_eq!(parse_s3_url("https://b"), None);
    }
}

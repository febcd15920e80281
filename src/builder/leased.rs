//! A builder decorator for teams sharing an S3 cache: before baking a layer
//! it takes the layer's build lease, so two developers never bake the same
//! layer twice. Whoever finds a live lease waits for that build's record and
//! adopts its image; whoever holds the lease keeps it alive while building,
//! publishes the record, then releases the lease.
//!
//! Leases are never deleted: releasing one sets its expiry to zero, so each
//! (hash, target) has a generation number that only grows. A record carries
//! the generation it was built under, and a record is only ever replaced by
//! one of a higher generation — a late writer cannot overwrite a newer
//! result.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::builder::{cancelled, BuildFuture, Builder, BuiltImage, LayerError, LayerJob};
use crate::cache::shared::{
    whoami, LeaseState, Mode, RemoteRecord, SharedCache, RECORD_SCHEMA_VERSION,
};

pub struct LeasedBuilder {
    pub inner: Arc<dyn Builder>,
    pub shared: SharedCache,
    /// How long a lease lives without renewal.
    pub lease_ttl: Duration,
    /// How often a waiting builder looks for the other build's record.
    pub poll: Duration,
}

impl Builder for LeasedBuilder {
    fn target(&self) -> &str {
        self.inner.target()
    }

    fn build(&self, job: LayerJob, cancel: watch::Receiver<bool>) -> BuildFuture<'_> {
        Box::pin(async move {
            if self.shared.mode == Mode::ReadOnly {
                return self.inner.build(job, cancel).await;
            }
            let target = self.target().to_string();
            loop {
                match self
                    .shared
                    .acquire_lease(&job.hash, &target, &job.build_id, self.lease_ttl)
                    .await
                {
                    Err(e) => {
                        tracing::warn!(
                            "{}: no build lease ({e}); building without one",
                            job.name()
                        );
                        return self.build_and_publish(job, cancel, 0, None).await;
                    }
                    Ok(LeaseState::Acquired { etag, generation }) => {
                        // Someone may have finished this layer between our
                        // plan and our lease: adopt their image.
                        if let Ok(Some((record, _))) = self.shared.get(&job.hash, &target).await {
                            if job.planned_over.as_deref() != Some(record.image.as_str()) {
                                let _ = self
                                    .shared
                                    .release_lease(
                                        &job.hash,
                                        &target,
                                        &job.build_id,
                                        &etag,
                                        generation,
                                    )
                                    .await;
                                return Ok(BuiltImage {
                                    image: record.image,
                                    snapshots: record.snapshot_ids,
                                    adopted: true,
                                });
                            }
                        }
                        return self
                            .build_and_publish(job, cancel, generation, Some(etag))
                            .await;
                    }
                    Ok(LeaseState::Held(lease)) => {
                        tracing::warn!(
                            "{}: {} is building this layer (build {}); waiting for its image",
                            job.name(),
                            lease.owner,
                            lease.build_id
                        );
                        let found = tokio::select! {
                            r = self.wait_for_record(&job, &target, lease.generation) => r,
                            _ = cancelled(cancel.clone()) => return Err(LayerError::cancelled()),
                        };
                        if let Some(record) = found {
                            return Ok(BuiltImage {
                                image: record.image,
                                snapshots: record.snapshot_ids,
                                adopted: true,
                            });
                        }
                        // The other build ended without a record: try again.
                    }
                }
            }
        })
    }
}

impl LeasedBuilder {
    /// Waits until the record built under lease `generation` appears
    /// (Some) or the lease is gone without one (None).
    async fn wait_for_record(
        &self,
        job: &LayerJob,
        target: &str,
        generation: u64,
    ) -> Option<RemoteRecord> {
        loop {
            tokio::time::sleep(self.poll).await;
            match self.shared.get(&job.hash, target).await {
                Ok(Some((record, _))) if record.generation >= generation => return Some(record),
                Ok(_) => {}
                Err(e) => tracing::warn!("{}: shared cache: {e}", job.name()),
            }
            match self.shared.lease(&job.hash, target).await {
                Ok(Some(lease)) if lease.expires > crate::cache::now_unix() => {}
                _ => return None,
            }
        }
    }

    async fn build_and_publish(
        &self,
        job: LayerJob,
        cancel: watch::Receiver<bool>,
        generation: u64,
        lease_etag: Option<String>,
    ) -> Result<BuiltImage, LayerError> {
        let target = self.target().to_string();
        let etag = Arc::new(Mutex::new(lease_etag.clone()));
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let heartbeat = lease_etag.is_some().then(|| {
            let (shared, hash, build_id, etag, ttl, target) = (
                self.shared.clone(),
                job.hash.clone(),
                job.build_id.clone(),
                etag.clone(),
                self.lease_ttl,
                target.clone(),
            );
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(ttl / 3) => {}
                        _ = stop_rx.changed() => return,
                    }
                    let current = etag.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let Some(current) = current else { return };
                    match shared
                        .renew_lease(&hash, &target, &build_id, &current, generation, ttl)
                        .await
                    {
                        Ok(Some(new)) => {
                            *etag.lock().unwrap_or_else(|p| p.into_inner()) = Some(new)
                        }
                        Ok(None) => {
                            tracing::warn!("lost the build lease for {}", hash.short());
                            return;
                        }
                        Err(e) => tracing::warn!(
                            "could not renew the build lease for {}: {e}",
                            hash.short()
                        ),
                    }
                }
            })
        });
        let started = std::time::Instant::now();
        let result = self.inner.build(job.clone(), cancel).await;
        let _ = stop_tx.send(true);
        if let Some(h) = heartbeat {
            let _ = h.await;
        }
        if let Ok(built) = &result {
            let (account, region) = match target.split('/').collect::<Vec<_>>().as_slice() {
                ["ec2", account, region] => (Some(account.to_string()), Some(region.to_string())),
                _ => (None, None),
            };
            let record = RemoteRecord {
                schema_version: RECORD_SCHEMA_VERSION,
                hash: job.hash.to_string(),
                target: target.clone(),
                image: built.image.clone(),
                region,
                account,
                parent_hash: job.parent_hash.as_ref().map(|h| h.to_string()),
                parent_image: job.parent_image.clone(),
                template: job.name().to_string(),
                created: crate::cache::now_unix(),
                builder: whoami(),
                duration_seconds: Some(started.elapsed().as_secs_f64()),
                snapshot_ids: built.snapshots.clone(),
                generation,
                signature: None,
            };
            if let Err(e) = self.publish(record).await {
                tracing::warn!("{}: could not publish to the shared cache: {e}", job.name());
            }
        }
        let final_etag = etag.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(etag) = final_etag {
            if let Err(e) = self
                .shared
                .release_lease(&job.hash, &target, &job.build_id, &etag, generation)
                .await
            {
                tracing::warn!("{}: could not release the build lease: {e}", job.name());
            }
        }
        result
    }

    /// First writer wins; a record of a higher generation replaces an older one.
    async fn publish(&self, record: RemoteRecord) -> Result<(), crate::aws::AwsError> {
        let hash = crate::hash::LayerHash::parse(&record.hash).expect("a valid hash");
        if self.shared.put(record.clone(), None).await? {
            return Ok(());
        }
        if let Some((existing, etag)) = self.shared.get_unverified(&hash, &record.target).await? {
            if existing.generation < record.generation {
                self.shared.put(record, Some(&etag)).await?;
            }
        }
        Ok(())
    }
}

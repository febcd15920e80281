//! Layer caches: a small [`LayerCache`] trait (get / put / check), the
//! local SQLite implementation, and [`Tiered`], which asks the local cache
//! first, then a remote one, writes remote hits back locally, and turns any
//! remote error into a warning and a miss.

pub mod sqlite;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::hash::LayerHash;

pub use sqlite::LocalCache;

/// What a cache maps a (layer hash, target) to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub hash: LayerHash,
    pub target: String,
    pub image: String,
    pub parent_hash: Option<String>,
    pub template: String,
    /// Unix seconds.
    pub created_at: i64,
    pub build_seconds: Option<f64>,
    pub build_id: Option<String>,
}

/// Which tier answered a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Local,
    Remote,
}

/// Whether a cache can be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    ReadWrite,
    ReadOnly,
}

/// One level of layer cache.
pub trait LayerCache: Send + Sync {
    fn name(&self) -> &str;
    fn get(&self, hash: &LayerHash, target: &str) -> Result<Option<CacheEntry>>;
    fn put(&self, entry: &CacheEntry) -> Result<()>;
    /// Probes the cache; says whether it can be written.
    fn check(&self) -> Result<CacheMode>;
}

/// Local first, then remote; see the module docs.
pub struct Tiered<'a> {
    pub local: &'a LocalCache,
    pub remote: Option<Box<dyn LayerCache + 'a>>,
    remote_disabled: std::sync::atomic::AtomicBool,
}

impl<'a> Tiered<'a> {
    pub fn new(local: &'a LocalCache, remote: Option<Box<dyn LayerCache + 'a>>) -> Self {
        Tiered {
            local,
            remote,
            remote_disabled: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn lookup(&self, hash: &LayerHash, target: &str) -> Result<Option<(CacheEntry, Tier)>> {
        if let Some(hit) = self.local.get(hash, target)? {
            return Ok(Some((hit, Tier::Local)));
        }
        let Some(remote) = &self.remote else {
            return Ok(None);
        };
        if self
            .remote_disabled
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(None);
        }
        match remote.get(hash, target) {
            Ok(Some(entry)) => {
                self.local.put(&entry)?;
                Ok(Some((entry, Tier::Remote)))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::warn!(
                    "remote cache {} unavailable, treating as a miss: {e}",
                    remote.name()
                );
                self.remote_disabled
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// Records a new image locally and, best effort, remotely.
    pub fn publish(&self, entry: &CacheEntry) -> Result<()> {
        self.local.put(entry)?;
        if let Some(remote) = &self.remote {
            if let Err(e) = remote.put(entry) {
                tracing::warn!(
                    "could not publish {} to remote cache {}: {e}",
                    entry.hash.short(),
                    remote.name()
                );
            }
        }
        Ok(())
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::sync::Mutex;

    struct FakeRemote {
        entries: Mutex<Vec<CacheEntry>>,
        fail: bool,
    }

    impl LayerCache for FakeRemote {
        fn name(&self) -> &str {
            "fake"
        }
        fn get(&self, hash: &LayerHash, target: &str) -> Result<Option<CacheEntry>> {
            if self.fail {
                return Err(Error::Cache("connection refused".into()));
            }
            Ok(self
                .entries
                .lock()
                .unwrap()
                .iter()
                .find(|e| &e.hash == hash && e.target == target)
                .cloned())
        }
        fn put(&self, entry: &CacheEntry) -> Result<()> {
            self.entries.lock().unwrap().push(entry.clone());
            Ok(())
        }
        fn check(&self) -> Result<CacheMode> {
            Ok(CacheMode::ReadWrite)
        }
    }

    fn entry(n: u8) -> CacheEntry {
        CacheEntry {
            hash: LayerHash::parse(&format!("{:064x}", n)).unwrap(),
            target: "simulate".into(),
            image: format!("sim-{n}"),
            parent_hash: None,
            template: "t".into(),
            created_at: 1,
            build_seconds: Some(1.0),
            build_id: None,
        }
    }

    #[test]
    fn remote_hit_is_written_back_locally() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalCache::open(dir.path()).unwrap();
        let remote = FakeRemote {
            entries: Mutex::new(vec![entry(1)]),
            fail: false,
        };
        let tiered = Tiered::new(&local, Some(Box::new(remote)));
        let (hit, tier) = tiered.lookup(&entry(1).hash, "simulate").unwrap().unwrap();
        assert_eq!((hit.image.as_str(), tier), ("sim-1", Tier::Remote));
        assert_eq!(
            local
                .get(&entry(1).hash, "simulate")
                .unwrap()
                .unwrap()
                .image,
            "sim-1"
        );
        let (_, tier) = tiered.lookup(&entry(1).hash, "simulate").unwrap().unwrap();
        assert_eq!(tier, Tier::Local);
    }

    #[test]
    fn remote_error_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalCache::open(dir.path()).unwrap();
        let remote = FakeRemote {
            entries: Mutex::new(vec![]),
            fail: true,
        };
        let tiered = Tiered::new(&local, Some(Box::new(remote)));
        assert!(tiered.lookup(&entry(2).hash, "simulate").unwrap().is_none());
    }
}

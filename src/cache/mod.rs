//! Layer caches: a small [`LayerCache`] trait (get / put / check), the
//! local SQLite implementation, and [`Tiered`], which asks the local cache
//! first, then a remote one, writes remote hits back locally, and turns any
//! remote error into a warning and a miss.

pub mod shared;
pub mod sqlite;

use std::future::Future;
use std::pin::Pin;

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

pub type CacheFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// One level of layer cache.
pub trait LayerCache: Send + Sync {
    fn name(&self) -> String;
    /// Looks up `hashes` for `target`; the answer is aligned with `hashes`.
    fn get_many<'a>(
        &'a self,
        hashes: &'a [LayerHash],
        target: &'a str,
    ) -> CacheFuture<'a, Vec<Option<CacheEntry>>>;
    fn put<'a>(&'a self, entry: &'a CacheEntry) -> CacheFuture<'a, ()>;
    /// Probes the cache; says whether it can be written.
    fn check(&self) -> CacheFuture<'_, CacheMode>;
}

/// Local first, then remote: remote errors are a warning and a miss (the
/// remote tier reports them itself); hits are returned with their tier and
/// written back locally by [`Tiered::write_back`] once verified.
pub struct Tiered<'a> {
    pub local: &'a dyn LayerCache,
    pub remote: Option<&'a dyn LayerCache>,
}

impl Tiered<'_> {
    pub async fn lookup_many(
        &self,
        hashes: &[LayerHash],
        target: &str,
    ) -> Result<Vec<Option<(CacheEntry, Tier)>>> {
        let local = self.local.get_many(hashes, target).await?;
        let mut out: Vec<Option<(CacheEntry, Tier)>> = local
            .into_iter()
            .map(|e| e.map(|e| (e, Tier::Local)))
            .collect();
        let Some(remote) = self.remote else {
            return Ok(out);
        };
        let misses: Vec<usize> = (0..hashes.len()).filter(|&i| out[i].is_none()).collect();
        if misses.is_empty() {
            return Ok(out);
        }
        let keys: Vec<LayerHash> = misses.iter().map(|&i| hashes[i].clone()).collect();
        match remote.get_many(&keys, target).await {
            Ok(found) => {
                for (&i, hit) in misses.iter().zip(found) {
                    out[i] = hit.map(|e| (e, Tier::Remote));
                }
            }
            Err(e) => tracing::warn!(
                "remote cache {} unavailable, treating as misses: {e}",
                remote.name()
            ),
        }
        Ok(out)
    }

    /// Records verified remote hits locally.
    pub async fn write_back(&self, entries: &[CacheEntry]) -> Result<()> {
        for e in entries {
            self.local.put(e).await?;
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
        fn name(&self) -> String {
            "fake".into()
        }
        fn get_many<'a>(
            &'a self,
            hashes: &'a [LayerHash],
            target: &'a str,
        ) -> CacheFuture<'a, Vec<Option<CacheEntry>>> {
            Box::pin(async move {
                if self.fail {
                    return Err(Error::Cache("connection refused".into()));
                }
                let entries = self.entries.lock().unwrap();
                Ok(hashes
                    .iter()
                    .map(|h| {
                        entries
                            .iter()
                            .find(|e| &e.hash == h && e.target == target)
                            .cloned()
                    })
                    .collect())
            })
        }
        fn put<'a>(&'a self, entry: &'a CacheEntry) -> CacheFuture<'a, ()> {
            Box::pin(async move {
                self.entries.lock().unwrap().push(entry.clone());
                Ok(())
            })
        }
        fn check(&self) -> CacheFuture<'_, CacheMode> {
            Box::pin(async { Ok(CacheMode::ReadWrite) })
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

    fn block<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn local_first_then_remote_then_written_back() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalCache::open(dir.path()).unwrap();
        local.put_entry(&entry(2)).unwrap();
        let remote = FakeRemote {
            entries: Mutex::new(vec![entry(1), entry(2)]),
            fail: false,
        };
        let tiered = Tiered {
            local: &local,
            remote: Some(&remote),
        };
        let keys = [entry(1).hash, entry(2).hash, entry(3).hash];
        let hits = block(tiered.lookup_many(&keys, "simulate")).unwrap();
        assert_eq!(
            hits[0].as_ref().map(|(e, t)| (e.image.as_str(), *t)),
            Some(("sim-1", Tier::Remote))
        );
        assert_eq!(hits[1].as_ref().map(|(_, t)| *t), Some(Tier::Local));
        assert!(hits[2].is_none());
        block(tiered.write_back(&[hits[0].clone().unwrap().0])).unwrap();
        let again = block(tiered.lookup_many(&keys[..1], "simulate")).unwrap();
        assert_eq!(again[0].as_ref().map(|(_, t)| *t), Some(Tier::Local));
    }

    #[test]
    fn remote_error_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalCache::open(dir.path()).unwrap();
        let remote = FakeRemote {
            entries: Mutex::new(vec![]),
            fail: true,
        };
        let tiered = Tiered {
            local: &local,
            remote: Some(&remote),
        };
        let hits = block(tiered.lookup_many(&[entry(2).hash], "simulate")).unwrap();
        assert!(hits[0].is_none());
    }
}

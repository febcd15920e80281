//! Criterion benchmark: load + merge + hash of a generated 1,000-layer
//! template repository, in process (no process start-up, no cache).
//!
//! Run: `cargo bench --bench load_hash`
//!
//! Three functions: `load_hash` (the whole thing, the headline figure),
//! and its two halves, `load` (discover, parse, link, merge) and `hash`
//! (`hash_all` over an already loaded project). `LOAD_HASH_LAYERS=N`
//! benchmarks an N-layer repository instead.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use amimake::backend::{offline_root_source, BackendKind};
use amimake::hash::{hash_all, HashState};
use amimake::template::Project;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const DEFAULT_LAYERS: usize = 1_000;

fn load(root: &Path) -> Project {
    Project::load(root).expect("generated repository loads")
}

fn hash(project: &Project) -> Vec<HashState> {
    hash_all(project, |layer| {
        offline_root_source(BackendKind::Simulate, layer, None, "us-east-1", None)
    })
}

fn bench_load_hash(c: &mut Criterion) {
    let layers = std::env::var("LOAD_HASH_LAYERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_LAYERS);
    let dir = tempfile::tempdir().expect("tempdir");
    amimake::testgen::generate_repo(dir.path(), layers).expect("generate repository");
    let root = dir.path().to_path_buf();
    let loaded = load(&root);
    assert_eq!(loaded.layers.len(), layers);
    assert_eq!(hash(&loaded).len(), layers);

    let mut group = c.benchmark_group(format!("{layers}_layers"));
    group.throughput(Throughput::Elements(layers as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("load_hash", |b| {
        b.iter(|| {
            let project = load(black_box(&root));
            black_box(hash(&project))
        })
    });
    group.bench_function("load", |b| b.iter(|| black_box(load(black_box(&root)))));
    group.bench_function("hash", |b| b.iter(|| black_box(hash(black_box(&loaded)))));
    group.finish();
}

criterion_group!(benches, bench_load_hash);
criterion_main!(benches);

//! Criterion benchmark: load + merge + hash of a generated 1,000-layer
//! template repository (no cache, no process start-up).
//!
//! Run: `cargo bench --bench load_hash`

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use amimake::backend::{offline_root_source, BackendKind};
use amimake::hash::hash_all;
use amimake::template::Project;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const LAYERS: usize = 1_000;

fn load_and_hash(root: &Path) -> usize {
    let project = Project::load(root).expect("generated repository loads");
    let hashes = hash_all(&project, |layer| {
        offline_root_source(BackendKind::Simulate, layer, None, "us-east-1", None)
    });
    assert_eq!(hashes.len(), LAYERS);
    hashes.len()
}

fn bench_load_hash(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    amimake::testgen::generate_repo(dir.path(), LAYERS).expect("generate repository");
    let root = dir.path().to_path_buf();

    let mut group = c.benchmark_group("load_hash");
    group.throughput(Throughput::Elements(LAYERS as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("1000_layers", |b| {
        b.iter(|| black_box(load_and_hash(black_box(&root))))
    });
    group.finish();
}

criterion_group!(benches, bench_load_hash);
criterion_main!(benches);

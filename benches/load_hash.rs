//! Criterion benchmark: load + merge + hash of a generated 1,000-layer
//! template repository, in process (no process start-up, no cache).
//!
//! Run: `cargo bench --bench load_hash`
//!
//! Four functions: `load_hash` (the whole thing from scratch, the headline
//! figure), its two halves, `load` (discover, parse, link, merge) and
//! `hash` (`hash_all` over an already loaded project), and `load_memoized`
//! (the same load through a valid load memo: what every command after the
//! first pays). `LOAD_HASH_LAYERS=N` benchmarks an N-layer repository
//! instead.

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
    let cache = tempfile::tempdir().expect("tempdir");
    // Read by `load_memoized` for the memo's location; set before any
    // other thread exists.
    std::env::set_var("AMIMAKE_CACHE_DIR", cache.path());
    // The generated files must be older than the memo's racy margin.
    std::thread::sleep(amimake::template::memo::RACY_MARGIN * 2);
    let loaded = load(&root);
    let memoized = Project::load_memoized(&root).expect("loads and saves the memo");
    assert!(
        std::fs::read_dir(cache.path().join("memo")).is_ok_and(|d| d.count() == 1),
        "the load memo was not saved"
    );
    assert_eq!(memoized.layers.len(), layers);
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
    group.bench_function("load_memoized", |b| {
        b.iter(|| black_box(Project::load_memoized(black_box(&root)).expect("loads")))
    });
    group.finish();
}

criterion_group!(benches, bench_load_hash);
criterion_main!(benches);

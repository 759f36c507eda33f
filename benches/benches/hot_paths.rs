//! Wall-time micro-benchmarks of the hot paths (criterion), for people
//! comparing changes on a quiet machine. CI does not time them: it checks
//! the same workloads' instruction counts (`icount check`).
//!
//! `cargo bench --locked -p arqonbus-benches` (a filter such as `route`
//! narrows it down); every workload is described in `arqonbus_benches`.

use std::hint::black_box;

use arqonbus_benches::{NAMES, workload};
use criterion::{Criterion, criterion_group, criterion_main};

fn hot_paths(c: &mut Criterion) {
    for name in NAMES {
        let Ok(mut w) = workload(name) else {
            continue;
        };
        c.bench_function(name, |b| b.iter(|| black_box(w.run())));
    }
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);

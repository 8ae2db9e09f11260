//! In-process micro-benchmarks (one core): mint (sign), verify, and verify + consume with the
//! memory store. `make bench` prints them as ops/s next to the HTTP figures.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use streamtoken::admission::redeem::Redeemer;
use streamtoken::keys::keyring::KeyringHandle;
use streamtoken::settings::TokenSettings;
use streamtoken::store::MemoryStore;
use streamtoken::tenancy::org::Org;
use streamtoken::token::mint::{MintRequest, Minter};
use streamtoken::token::verify::TokenVerifier;

fn keyring_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    streamtoken::keys::admin::init_dev(dir.path()).expect("dev keys");
    dir
}

fn benches(c: &mut Criterion) {
    let dir = keyring_dir();
    let handle = Arc::new(KeyringHandle::load(dir.path()).expect("keyring"));
    let settings = TokenSettings::default();
    let minter = Minter::new(handle.clone(), settings.clone());
    let acme = Org::parse("acme").expect("a valid org");

    let mut group = c.benchmark_group("tokens");
    group.throughput(Throughput::Elements(1));
    group.bench_function("mint", |b| {
        b.iter(|| minter.mint(&acme, MintRequest::default()).expect("mint"))
    });

    let token = minter
        .mint(&acme, MintRequest::default())
        .expect("mint")
        .token;
    let verifier = TokenVerifier::new(&settings);
    let keyring = handle.snapshot();
    group.bench_function("verify", |b| {
        b.iter(|| verifier.verify(&token, &keyring).expect("verifies"))
    });

    // Each iteration redeems a distinct pre-minted token, as in production.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let redeemer = runtime
        .block_on(async { Redeemer::new(handle.clone(), &settings, Arc::new(MemoryStore::new())) });
    group.bench_function("verify_and_consume_memory", |b| {
        b.iter_batched(
            || {
                minter
                    .mint(&acme, MintRequest::default())
                    .expect("mint")
                    .token
            },
            |token| runtime.block_on(redeemer.redeem(&token)).expect("redeems"),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(tokens, benches);
criterion_main!(tokens);

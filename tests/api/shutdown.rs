//! What a graceful shutdown must not break: actix stops each HTTP worker's runtime as soon as
//! that worker has drained, while other workers may still be waiting on Redis for an in-flight
//! redemption. The shared Redis connection must outlive any one worker.

use std::sync::Arc;

use streamtoken::store::{Consumed, RedisStore, ReplayStore, UsageStore, UseOf};

use crate::support::app::redis_settings;
use crate::support::fields::now;
use crate::support::redis_server::RedisServer;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Before the store ran its own I/O runtime, the connection's driver lived on the runtime that
/// first opened it; once that worker stopped, the next call from another worker failed with 503.
#[test]
fn a_redis_connection_first_used_by_a_worker_that_stopped_still_serves_the_others() {
    // Arrange: "worker A" opens the connection, then stops (its runtime is dropped).
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let worker_a = runtime();
    let store = {
        let _inside = worker_a.enter();
        Arc::new(RedisStore::connect_lazily(&redis_settings(&redis.url())).unwrap())
    };
    worker_a
        .block_on(store.usage("acme"))
        .expect("Redis answers worker A");
    drop(worker_a);

    // Act: "worker B", still draining, redeems.
    let worker_b = runtime();
    let consumed = worker_b.block_on(store.consume_once(a_fresh_use()));

    // Assert
    assert_eq!(
        consumed.expect("the redemption reached Redis"),
        Consumed::Accepted { uses_remaining: 0 }
    );
}

fn a_fresh_use() -> UseOf<'static> {
    UseOf {
        attempt: uuid::Uuid::new_v4(),
        jti: uuid::Uuid::new_v4(),
        org: "acme",
        allowed_uses: 1,
        expires_at: now() + 60,
        credit_limit: None,
        outlive_seconds: 0,
        issued_at: 0,
        session: None,
    }
}

/// Each runtime calling the store drives a connection of its own. Two runtimes taking turns on
/// one thread must not share one: the connection's driver would only run while its runtime runs,
/// so the other's calls would wait for it and time out.
#[test]
fn runtimes_taking_turns_on_one_thread_each_reach_redis() {
    // Arrange: runtime A opens its connection and stays alive, idle.
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (runtime_a, runtime_b) = (runtime(), runtime());
    let store = Arc::new(RedisStore::connect_lazily(&redis_settings(&redis.url())).unwrap());
    runtime_a
        .block_on(store.usage("acme"))
        .expect("Redis answers runtime A");

    // Act: runtime B redeems on the same thread, then A again.
    let by_b = runtime_b.block_on(store.consume_once(a_fresh_use()));
    let by_a = runtime_a.block_on(store.consume_once(a_fresh_use()));

    // Assert
    for consumed in [by_b, by_a] {
        assert_eq!(
            consumed.expect("the redemption reached Redis"),
            Consumed::Accepted { uses_remaining: 0 }
        );
    }
}

//! The Redis Cluster test helper on its own, before any service test leans on it: a 3+3 cluster
//! forms, routes a key to one master, survives that master's death through its replica, pauses,
//! and comes back from a full stop. Prints how long each step took.

use std::time::{Duration, Instant};

use crate::support::redis_cluster::{RedisCluster, SLOTS};
use crate::support::redis_server::{command_at, RedisReply};

const FAILOVER_DEADLINE: Duration = Duration::from_secs(10);

#[test]
fn a_three_by_three_cluster_routes_keys_and_fails_over_when_a_master_dies() {
    let clock = Instant::now();
    let Some(cluster) = RedisCluster::start(3, 1) else {
        return;
    };
    let formed = clock.elapsed();

    let nodes = cluster.nodes();
    let masters: Vec<u16> = nodes
        .iter()
        .filter(|n| n.is_master())
        .map(|n| n.port)
        .collect();
    assert_eq!(masters.len(), 3, "{nodes:#?}");
    let served: usize = nodes
        .iter()
        .flat_map(|n| n.slots.iter())
        .map(|r| r.clone().count())
        .sum();
    assert_eq!(served, usize::from(SLOTS), "{nodes:#?}");
    for &master in &masters {
        assert_eq!(cluster.replica_ports_of(master).len(), 1, "{nodes:#?}");
    }
    let seeds = cluster.seed_urls();
    assert_eq!(seeds.split(',').count(), 6, "{seeds}");
    assert!(
        seeds
            .split(',')
            .all(|u| u.starts_with("redis://127.0.0.1:")),
        "{seeds}"
    );

    let key = "streamtoken:cluster-helper";
    let owner = cluster.master_for_key(key);
    let ok = RedisReply::Status("OK".into());
    // Replication is asynchronous: without WAIT (which counts only its own connection's
    // writes), the kill below may beat the write to the replica.
    assert_eq!(
        cluster.pipeline(owner, &[&["SET", key, "before"], &["WAIT", "1", "5000"]]),
        [ok.clone(), RedisReply::Int(1)]
    );
    assert_eq!(
        cluster.command(owner, &["GET", key]),
        RedisReply::Bulk("before".into())
    );
    let elsewhere = *masters
        .iter()
        .find(|&&m| m != owner)
        .expect("a second master");
    match cluster.command(elsewhere, &["GET", key]) {
        RedisReply::Error(e) if e.starts_with("MOVED ") && e.ends_with(&format!(":{owner}")) => {}
        other => panic!("GET on a master that does not own the key: {other:?}"),
    }

    let replica = cluster.replica_ports_of(owner)[0];
    cluster.kill_master(owner);
    let failover = cluster.wait_for_failover(key, FAILOVER_DEADLINE);
    assert_eq!(cluster.master_for_key(key), replica);
    assert_eq!(
        cluster.command(replica, &["GET", key]),
        RedisReply::Bulk("before".into())
    );

    // Paused nodes keep their ports but answer nothing (a hung host), until resumed.
    cluster.pause_all();
    let silent = command_at(replica, &["PING"], Duration::from_millis(200));
    cluster.resume_all();
    assert!(silent.is_err(), "a paused node answered: {silent:?}");
    assert_eq!(
        cluster.command(replica, &["PING"]),
        RedisReply::Status("PONG".into())
    );

    // The dead master comes back as a replica of the node that took its place.
    let clock = Instant::now();
    cluster.restart_node(owner);
    let rejoined = clock.elapsed();
    assert_eq!(cluster.replica_ports_of(replica), vec![owner]);

    // Everything down (nothing answers), then everything back; no persistence, so no data.
    cluster.stop_all();
    assert!(command_at(replica, &["PING"], Duration::from_millis(200)).is_err());
    let clock = Instant::now();
    cluster.restart_all();
    let restarted = clock.elapsed();
    let owner_now = cluster.master_for_key(key);
    assert_eq!(cluster.command(owner_now, &["GET", key]), RedisReply::Nil);

    println!(
        "redis cluster 3+3: formed in {formed:.2?}, failover of {owner} to {replica} in \
         {failover:.2?}, old master rejoined in {rejoined:.2?}, full restart in {restarted:.2?}"
    );
}

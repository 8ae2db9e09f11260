//! What `/readyz` reports about the store: whether it can serve redemptions, which node failed,
//! and how far the store's clock is from ours.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::redis_connection::RedisConnection;
use super::redis_store::{not_persistent, persistence_from_pairs, Persistence};

#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub backend: &'static str,
    /// Why the store cannot serve redemptions; empty when it can.
    pub problems: Vec<String>,
    /// One entry per Redis node asked (each cluster master); empty for the memory store.
    pub nodes: Vec<NodeCheck>,
    /// The largest difference between a node's clock and ours (positive: the node is ahead).
    pub clock_skew_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeCheck {
    pub node: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_skew_seconds: Option<f64>,
}

impl Health {
    pub fn healthy(backend: &'static str) -> Self {
        Health {
            backend,
            problems: Vec::new(),
            nodes: Vec::new(),
            clock_skew_seconds: None,
        }
    }

    pub fn failed(backend: &'static str, problem: String) -> Self {
        Health {
            problems: vec![problem],
            ..Health::healthy(backend)
        }
    }

    /// Ready when nothing failed and no clock is further from ours than the verification
    /// leeway: past it, a used token could outlive its entry on some gateway.
    pub fn ready(&self, leeway_seconds: u64) -> bool {
        self.problems.is_empty() && !self.skew_beyond(leeway_seconds as f64)
    }

    pub fn skew_beyond(&self, limit_seconds: f64) -> bool {
        self.clock_skew_seconds
            .is_some_and(|skew| skew.abs() > limit_seconds)
    }

    /// The problems, with the clock's if it is one, for the `/readyz` body.
    pub fn reasons(&self, leeway_seconds: u64) -> Vec<String> {
        let mut reasons = self.problems.clone();
        if let Some(skew) = self
            .clock_skew_seconds
            .filter(|_| self.skew_beyond(leeway_seconds as f64))
        {
            reasons.push(format!(
                "the store's clock is {skew:+.3} s from ours, more than the {leeway_seconds} s leeway"
            ));
        }
        reasons
    }
}

/// A warning past half the leeway, an error past it: entries are kept for two leeways, so
/// beyond that a token could verify on a gateway after the store forgot its use.
pub fn log_clock_skew(skew_seconds: f64, leeway_seconds: u64) {
    let leeway = leeway_seconds as f64;
    if skew_seconds.abs() > leeway {
        log::error!(
            "the Redis clock is {skew_seconds:+.3} s from this host's, more than \
             STREAMTOKEN_LEEWAY_SECONDS ({leeway_seconds}); /readyz answers 503 until the clocks agree"
        );
    } else if skew_seconds.abs() > leeway / 2.0 {
        log::warn!(
            "the Redis clock is {skew_seconds:+.3} s from this host's, more than half of \
             STREAMTOKEN_LEEWAY_SECONDS ({leeway_seconds}); synchronise the clocks (NTP)"
        );
    }
}

/// Asks every node that serves keys (the one Redis, or each cluster master holding slots) for
/// its clock, its cluster state and, in strict mode, its persistence.
pub async fn check_redis(
    conn: &mut RedisConnection,
    timeout: Duration,
    require_persistence: bool,
) -> Health {
    let backend = if conn.is_cluster() {
        "redis-cluster"
    } else {
        "redis"
    };
    let masters = if conn.is_cluster() {
        match cluster_masters(conn).await {
            Ok(masters) => masters,
            Err(e) => return Health::failed(backend, format!("no cluster node answers: {e}")),
        }
    } else {
        vec![("redis".to_owned(), String::new(), 0)]
    };
    let mut health = Health::healthy(backend);
    for (name, host, port) in masters {
        let check =
            tokio::time::timeout(timeout, check_node(conn, &host, port, require_persistence))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {} ms", timeout.as_millis())));
        health.nodes.push(match check {
            Ok((skew, problem)) => {
                if let Some(problem) = problem {
                    health.problems.push(format!("{name}: {problem}"));
                }
                health.clock_skew_seconds = Some(match health.clock_skew_seconds {
                    Some(worst) if worst.abs() >= skew.abs() => worst,
                    _ => skew,
                });
                NodeCheck {
                    node: name,
                    ok: true,
                    error: None,
                    clock_skew_seconds: Some(skew),
                }
            }
            Err(error) => NodeCheck {
                node: name,
                ok: false,
                error: Some(error),
                clock_skew_seconds: None,
            },
        });
    }
    let answering = health.nodes.iter().filter(|node| node.ok).count();
    if answering == 0 {
        health.problems.push(if conn.is_cluster() {
            "no cluster master answers".to_owned()
        } else {
            "Redis does not answer".to_owned()
        });
    } else if answering < health.nodes.len() {
        // With `cluster-require-full-coverage no` the other masters' slots still work; the
        // cluster's own state (checked per node) says whether it still serves.
        log::warn!(
            "{} of {} Redis cluster masters do not answer",
            health.nodes.len() - answering,
            health.nodes.len()
        );
    }
    health
}

/// The clock skew of one node, and what is wrong with it if it answers but cannot serve.
async fn check_node(
    conn: &mut RedisConnection,
    host: &str,
    port: u16,
    require_persistence: bool,
) -> Result<(f64, Option<String>), String> {
    let asked = unix_seconds();
    let time: (String, String) = query_node(conn, host, port, redis::cmd("TIME")).await?;
    let answered = unix_seconds();
    let node_time =
        time.0.parse::<f64>().unwrap_or(0.0) + time.1.parse::<f64>().unwrap_or(0.0) / 1e6;
    let skew = node_time - (asked + answered) / 2.0;
    let mut problem = None;
    if conn.is_cluster() {
        let mut info = redis::cmd("CLUSTER");
        info.arg("INFO");
        let info: String = query_node(conn, host, port, info).await?;
        let state = info
            .lines()
            .find_map(|line| line.trim().strip_prefix("cluster_state:"))
            .unwrap_or("unknown");
        if state != "ok" {
            problem = Some(format!("cluster_state:{state}"));
        }
    }
    if require_persistence && problem.is_none() {
        let mut config = redis::cmd("CONFIG");
        config.arg("GET").arg("append*");
        let pairs: Result<Vec<String>, String> = query_node(conn, host, port, config).await;
        let persistence = match pairs {
            Ok(pairs) => persistence_from_pairs(&pairs),
            Err(why) => Persistence::Unknown(why),
        };
        if persistence != Persistence::EveryWrite {
            problem = Some(not_persistent(&persistence).0);
        }
    }
    Ok((skew, problem))
}

async fn query_node<T: redis::FromRedisValue>(
    conn: &mut RedisConnection,
    host: &str,
    port: u16,
    cmd: redis::Cmd,
) -> Result<T, String> {
    let value = conn
        .on_node(host, port, cmd)
        .await
        .map_err(|e| e.to_string())?;
    redis::from_redis_value(value).map_err(|e| e.to_string())
}

/// The masters that hold slots, from `CLUSTER NODES` (a master that lost its slots in a
/// failover is no longer one of them): (name, host, port).
async fn cluster_masters(conn: &mut RedisConnection) -> Result<Vec<(String, String, u16)>, String> {
    let mut nodes = redis::cmd("CLUSTER");
    nodes.arg("NODES");
    let listing: String = nodes.query_async(conn).await.map_err(|e| e.to_string())?;
    let masters: Vec<_> = listing
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            let serves_slots = fields.len() > 8;
            if !flags.split(',').any(|f| f == "master") || !serves_slots {
                return None;
            }
            let address = fields.get(1)?.split('@').next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some((address.to_owned(), host.to_owned(), port.parse().ok()?))
        })
        .collect();
    if masters.is_empty() {
        return Err("CLUSTER NODES lists no master with slots".into());
    }
    Ok(masters)
}

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

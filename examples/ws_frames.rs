//! WebSocket frame throughput for `make bench`: an echo upstream, and a load generator that
//! keeps `connections` sessions each sending a 1 KiB binary frame and waiting for its echo, for
//! a fixed time, then prints frames/s (round trips).
//!
//! ```text
//! ws_frames serve <port>                               # echo upstream on 127.0.0.1:<port>
//! ws_frames load <url> <seconds> [tokens-file]         # one session per line of tokens-file
//! ws_frames storm <url> <sessions> <concurrency> [tokens-file]
//! ```
//! `storm` opens `sessions` sessions, `concurrency` at a time, each counted once its first frame
//! arrives (handshake, admission, first frame); prints sessions/s and the p99 of that time, then
//! `all_open`, holds every session idle for 3 s (so the server's memory can be read) and closes.
//! With a tokens file, session i connects to `<url>?token=<line i>` (through the proxy);
//! without, `connections` (64) sessions connect to `<url>` directly.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const CONNECTIONS: usize = 64;
const FRAME_BYTES: usize = 1024;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => serve(args[2].parse().expect("a port")).await,
        Some("load") => {
            let seconds: u64 = args[3].parse().expect("seconds");
            let urls = session_urls(&args[2], CONNECTIONS, args.get(4));
            load(urls, Duration::from_secs(seconds)).await;
        }
        Some("storm") => {
            let sessions: usize = args[3].parse().expect("sessions");
            let concurrency: usize = args[4].parse().expect("concurrency");
            let urls = session_urls(&args[2], sessions, args.get(5));
            storm(urls, concurrency).await;
        }
        _ => eprintln!(
            "usage: ws_frames serve <port> | load <url> <seconds> [tokens-file] | \
             storm <url> <sessions> <concurrency> [tokens-file]"
        ),
    }
}

/// `count` session URLs: `url?token=<line i>` of the tokens file, or `url` itself without one.
fn session_urls(url: &str, count: usize, tokens_file: Option<&String>) -> Vec<String> {
    match tokens_file {
        Some(file) => std::fs::read_to_string(file)
            .expect("tokens file")
            .lines()
            .take(count)
            .map(|token| format!("{url}?token={token}"))
            .collect(),
        None => vec![url.to_owned(); count],
    }
}

async fn serve(port: u16) {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    println!("echo upstream on 127.0.0.1:{port}");
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(message)) = ws.next().await {
                if message.is_binary() || message.is_text() {
                    if ws.send(message).await.is_err() {
                        return;
                    }
                } else if message.is_close() {
                    return;
                }
            }
        });
    }
}

async fn load(urls: Vec<String>, duration: Duration) {
    let until = Instant::now() + duration;
    let sessions = urls.into_iter().map(|url| async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("handshake");
        let frame = Message::binary(vec![7u8; FRAME_BYTES]);
        let mut round_trips = 0u64;
        while Instant::now() < until {
            ws.send(frame.clone()).await.expect("send");
            loop {
                match ws.next().await {
                    Some(Ok(message)) if message.is_binary() => break,
                    Some(Ok(_)) => continue,
                    other => panic!("session ended: {other:?}"),
                }
            }
            round_trips += 1;
        }
        let _ = ws.close(None).await;
        round_trips
    });
    let started = Instant::now();
    let total: u64 = futures_util::future::join_all(sessions)
        .await
        .into_iter()
        .sum();
    let elapsed = started.elapsed().as_secs_f64();
    println!("frames_per_second={:.0}", total as f64 / elapsed);
}

async fn storm(urls: Vec<String>, concurrency: usize) {
    let started = Instant::now();
    let opened: Vec<(Duration, _)> = futures_util::stream::iter(urls)
        .map(|url| async move {
            let began = Instant::now();
            let (mut ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .expect("handshake");
            match ws.next().await {
                Some(Ok(message)) if message.is_text() => {}
                other => panic!("no first frame: {other:?}"),
            }
            (began.elapsed(), ws)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies: Vec<Duration> = opened.iter().map(|(took, _)| *took).collect();
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    println!(
        "sessions_per_second={:.0} p99_ms={:.1}",
        opened.len() as f64 / elapsed,
        p99.as_secs_f64() * 1000.0
    );
    println!("all_open");
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (_, mut ws) in opened {
        let _ = ws.close(None).await;
    }
}

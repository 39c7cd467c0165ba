//! The load generator of `bench/soak.sh`: the mixed scenario of `bench/mixed.lua` (Zipf-like
//! users, a share of requests posting an impression of the next item of the last page, and one
//! time in ten a click, with that page's token and an event id), from clients that stop between
//! requests rather than mid-request. An event batch refused with a 503 (Redis away, so nothing
//! could count it) is sent again, with the same ids, until it is accepted. wrk
//! cuts requests in flight when its time is up, so the server may have counted answers wrk never
//! saw; this generator's counts are exact, which is what the soak's final comparison needs.
//!
//! Prints one JSON summary; every failed request (5xx or no answer) is written to `--failures`
//! as `unix_ms<TAB>status<TAB>what`, so the script can tell failures inside fault windows from
//! failures outside them.
//!
//! `cargo run --release --example soak_load -- --url http://127.0.0.1:8080 --duration 600s`

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// The gateway.
    #[arg(long)]
    url: String,
    /// How long to send.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Users are drawn over `[0, users)`.
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// The placement asked for.
    #[arg(long, default_value = "soak")]
    placement: String,
    /// Share of requests that post events (impression, and a click one time in ten).
    #[arg(long, default_value_t = 0.05)]
    event_rate: f64,
    /// Where failed requests are listed.
    #[arg(long)]
    failures: std::path::PathBuf,
}

/// What every client saw, added up.
#[derive(Default)]
struct Counts {
    /// `GET /recommendations` answered 200.
    served: AtomicU64,
    /// `POST /events` answered 202.
    batches: AtomicU64,
    /// Impressions the 202 answers said were accepted.
    impressions: AtomicU64,
    /// Clicks the 202 answers said were accepted.
    clicks: AtomicU64,
    /// Events the 202 answers said were rejected (there should be none).
    rejected: AtomicU64,
    /// Event batches answered 503 and sent again later.
    deferred: AtomicU64,
    /// 4xx answers (there should be none).
    client_errors: AtomicU64,
    /// 5xx answers and requests without an answer.
    failures: AtomicU64,
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// A xorshift generator per client: the load needs no cryptographic randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform over `[0, n)`: density about 1/rank, like `bench/mixed.lua`.
    fn user(&mut self, n: u64) -> u64 {
        ((self.next() * (n as f64).ln()).exp() as u64).saturating_sub(1)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Arc::new(Args::parse());
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (failures_tx, mut failures_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let clients: Vec<_> = (0..args.clients)
        .map(|client| {
            let (args, http, counts, stop, failures) = (
                Arc::clone(&args),
                http.clone(),
                Arc::clone(&counts),
                Arc::clone(&stop),
                failures_tx.clone(),
            );
            tokio::spawn(async move {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (client as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
                // The last page: its token, its items, and how many of them have had events.
                let mut page: Option<(String, Vec<String>, usize)> = None;
                // A batch answered 503, to send again (with the same ids), and whether it clicks.
                let mut retry: Option<(Value, bool)> = None;
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let batch = retry.take().or_else(|| {
                        let (token, items, next) = page.as_mut().filter(|(_, items, next)| *next < items.len())?;
                        if rng.next() >= args.event_rate {
                            return None;
                        }
                        let item_id = &items[*next];
                        *next += 1;
                        sent += 1;
                        let id = format!("{client}-{sent}");
                        let mut events = vec![json!({"type": "impression", "tracking_token": token,
                            "item_id": item_id, "event_id": format!("{id}-i")})];
                        let click = sent.is_multiple_of(10);
                        if click {
                            events.push(json!({"type": "click", "tracking_token": token,
                                "item_id": item_id, "event_id": format!("{id}-c")}));
                        }
                        Some((json!({ "events": events }), click))
                    });
                    let (request, what) = match &batch {
                        Some((body, _)) => (http.post(format!("{}/events", args.url)).json(body), "events"),
                        None => {
                            let user = rng.user(args.users);
                            let url = format!("{}/recommendations/{user}?placement={}", args.url, args.placement);
                            (http.get(url), "recommendations")
                        }
                    };
                    let answer = match request.send().await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            response
                                .json::<Value>()
                                .await
                                .map(|body| (status, body))
                                .map_err(|e| e.to_string())
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    match answer {
                        Ok((200, body)) if what == "recommendations" => {
                            counts.served.fetch_add(1, Ordering::Relaxed);
                            let items = body["items"].as_array().map(|items| {
                                items
                                    .iter()
                                    .filter_map(|i| i["item_id"].as_str().map(str::to_string))
                                    .collect()
                            });
                            page = body["tracking_token"]
                                .as_str()
                                .map(|token| (token.to_string(), items.unwrap_or_default(), 0));
                        }
                        Ok((202, body)) => {
                            counts.batches.fetch_add(1, Ordering::Relaxed);
                            let click = batch.as_ref().is_some_and(|(_, click)| *click);
                            match body["rejected"].as_u64() {
                                Some(0) => {
                                    counts.impressions.fetch_add(1, Ordering::Relaxed);
                                    counts.clicks.fetch_add(u64::from(click), Ordering::Relaxed);
                                }
                                // Which of the two was refused is in the body; the soak fails
                                // on any refusal anyway.
                                rejected => {
                                    counts.rejected.fetch_add(rejected.unwrap_or(1), Ordering::Relaxed);
                                }
                            }
                        }
                        // Nothing was counted: send it again later. Listed like a failure, so
                        // one outside a fault window still fails the soak.
                        Ok((503, body)) if body["error"] == "counts_unavailable" => {
                            counts.deferred.fetch_add(1, Ordering::Relaxed);
                            let _ = failures.send(format!("{}\t503\t{what}: {body}", unix_ms()));
                            retry = batch;
                        }
                        // An event batch may have been counted before its answer was lost: sent
                        // again with the same ids, it is answered accepted without a second count.
                        Ok((status, body)) if status >= 500 => {
                            counts.failures.fetch_add(1, Ordering::Relaxed);
                            let _ = failures.send(format!("{}\t{status}\t{what}: {body}", unix_ms()));
                            retry = batch;
                        }
                        Ok(_) => {
                            counts.client_errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            counts.failures.fetch_add(1, Ordering::Relaxed);
                            let _ = failures.send(format!("{}\t0\t{what}: {e}", unix_ms()));
                            retry = batch;
                        }
                    }
                }
            })
        })
        .collect();
    drop(failures_tx);
    let writer = {
        let path = args.failures.clone();
        tokio::spawn(async move {
            let mut file = std::fs::File::create(path)?;
            while let Some(line) = failures_rx.recv().await {
                writeln!(file, "{line}")?;
            }
            std::io::Result::Ok(())
        })
    };
    tokio::time::sleep(args.duration).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await?;
    }
    writer.await??;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({
            "served": get(&counts.served),
            "event_batches": get(&counts.batches),
            "impressions": get(&counts.impressions),
            "clicks": get(&counts.clicks),
            "rejected": get(&counts.rejected),
            "deferred": get(&counts.deferred),
            "client_errors": get(&counts.client_errors),
            "failures": get(&counts.failures),
        })
    );
    Ok(())
}

//! Run with: `cargo run -p conveyor-examples --bin waitlist -- --signups 300 [--data DIR | --backend kafka --brokers HOST:PORT]`
//!
//! The waitlist platform of seed 002 on conveyor ([`conveyor_examples::waitlist`]): signs up
//! `--signups` users (after those of earlier runs on the same data), runs the job workers and
//! the live projection until every job's events are folded, stops, then rebuilds the projection
//! by replaying the event topics from offset 0 and prints whether both agree, with each
//! campaign's first positions. Run it again on the same `--data` to continue from there.

use std::time::Duration;

use conveyor_examples::backend::Which;
use conveyor_examples::waitlist::{self, Names};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONVEYOR_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let signups: usize = value("--signups").map_or(Ok(300), |v| v.parse())?;
    let which = Which::from_args(&args)?;
    let dir = match &which {
        Which::Embedded(dir) => dir.clone(),
        Which::Kafka(_) => value("--data")
            .unwrap_or_else(|| "conveyor-data".into())
            .into(),
    };
    let names = Names {
        namespace: value("--namespace").unwrap_or_default(),
    };
    let backend = which.open()?;
    let report = waitlist::run(
        backend.clone(),
        names,
        &dir.join("waitlist"),
        signups,
        Duration::from_secs(120),
    )
    .await?;
    backend.close().await?;
    let (users, verified, referrals, rewards) = report.live.summary();
    println!(
        "signed up {} now; live projection: {users} signups, {verified} verified, {referrals} referrals, {rewards} rewards, {} events",
        report.signed_up,
        report.live.events.len()
    );
    for campaign in report.live.campaigns.keys() {
        let top: Vec<String> = report
            .live
            .positions(campaign)
            .into_iter()
            .take(3)
            .map(|(u, p)| format!("#{p} {u}"))
            .collect();
        println!("{campaign}: {}", top.join(", "));
    }
    let same = report.live == report.rebuilt;
    println!(
        "rebuilt from offset 0: {}",
        if same {
            "matches the live projection"
        } else {
            "DIFFERS from the live projection"
        }
    );
    if !same {
        anyhow::bail!("the rebuilt projection differs from the live one");
    }
    Ok(())
}

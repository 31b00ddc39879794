//! Run with: `cargo run -p conveyor-examples --bin agents -- run "Kafka ISR" "exactly-once" [--data DIR | --backend kafka --brokers HOST:PORT]`
//!
//! The multi-agent system of seed 003 on conveyor ([`conveyor_examples::agents`]): a task topic
//! per agent, a consumer group per agent, a shared `laddr.responses` topic, and request/reply
//! between the agents. Modes:
//! - `run QUERY...`: the three agents in this process, then each query to the coordinator (all
//!   at once); prints one JSON line per query.
//! - `serve AGENT`: one agent's worker (`coordinator`, `researcher` or `writer`) until Ctrl-C or
//!   SIGTERM; start more processes of an agent to scale it (Kafka: processes share a backend;
//!   the embedded log belongs to one process, so use `run` there).
//! - `ask [--agent AGENT] QUERY...`: each query to an agent served elsewhere (default: the
//!   coordinator); prints one JSON line per query.
//!
//! Options: `--namespace PREFIX` (prepended to every topic and group), `--timeout-ms MS` (how
//! long a query waits for its answer, default 30000). Exits with 1 when a query failed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use conveyor_core::Backend;
use conveyor_examples::agents::{self, Names, AGENTS};
use conveyor_examples::backend::Which;
use conveyor_runtime::Client;
use tokio::sync::oneshot;

const VALUED: [&str; 6] = [
    "--backend",
    "--data",
    "--brokers",
    "--namespace",
    "--agent",
    "--timeout-ms",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONVEYOR_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match VALUED.contains(&a.as_str()) {
            true => {
                it.next();
            }
            false => positional.push(a.clone()),
        }
    }
    let names = Names {
        namespace: value("--namespace").unwrap_or_default(),
    };
    let timeout = Duration::from_millis(
        value("--timeout-ms")
            .map_or(Ok(30_000), |v| v.parse())
            .context("--timeout-ms takes milliseconds")?,
    );
    let Some((mode, rest)) = positional.split_first() else {
        bail!("give a mode: `run QUERY...`, `serve AGENT` or `ask [--agent AGENT] QUERY...`");
    };
    let backend = Which::from_args(&args)?.open()?;
    agents::create_topics(backend.as_ref(), &names).await?;
    let client = agents::client(Arc::clone(&backend), &names);
    let ok = match mode.as_str() {
        "run" => {
            let mut running = Vec::new();
            for agent in AGENTS {
                running.push(start(&backend, &names, agent, &client)?);
            }
            let ok = ask(&client, &names, "coordinator", rest, timeout).await;
            for (stop, run) in running {
                let _ = stop.send(());
                run.await??;
            }
            ok
        }
        "serve" => {
            let [agent] = rest else {
                bail!("`serve` takes one agent: {}", AGENTS.join(", "));
            };
            let (stop, run) = start(&backend, &names, agent, &client)?;
            eprintln!(
                "agents: {agent} serving {} in group {}",
                names.tasks(agent),
                names.group(agent)
            );
            shutdown_signal().await;
            let _ = stop.send(());
            run.await??;
            true
        }
        "ask" => {
            let agent = value("--agent").unwrap_or_else(|| "coordinator".into());
            ask(&client, &names, &agent, rest, timeout).await
        }
        other => bail!("unknown mode `{other}`: use run, serve or ask"),
    };
    eprintln!("agents: requests {:?}", client.request_counts());
    backend.close().await?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

type Running = (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<conveyor_core::Result<()>>,
);

fn start(
    backend: &Arc<dyn Backend>,
    names: &Names,
    agent: &str,
    client: &Client,
) -> anyhow::Result<Running> {
    let worker = agents::worker(Arc::clone(backend), names, agent, client.clone())?;
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    Ok((stop, run))
}

/// Asks and prints one JSON line per query; false when any failed.
async fn ask(
    client: &Client,
    names: &Names,
    agent: &str,
    queries: &[String],
    timeout: Duration,
) -> bool {
    let mut ok = true;
    for (q, r) in queries
        .iter()
        .zip(agents::ask(client, names, agent, queries, timeout).await)
    {
        let line = match r {
            Ok(answer) => serde_json::json!({ "query": q, "answer": answer }),
            Err(e) => {
                ok = false;
                serde_json::json!({ "query": q, "error": e.to_string() })
            }
        };
        println!("{line}");
    }
    ok
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

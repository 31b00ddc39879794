//! `conveyor jobs show|list`: job lookup through the API, printed as text or JSON.

use anyhow::Result;
use conveyor_server::remote::ApiClient;
use serde_json::Value;

use crate::cli::JobsCommand;

/// Runs a `conveyor jobs` command.
pub(crate) async fn run(command: JobsCommand) -> Result<()> {
    match command {
        JobsCommand::Show { id, json, server } => {
            let job = ApiClient::new(server.url).job(&id).await?;
            match json {
                true => println!("{}", serde_json::to_string_pretty(&job)?),
                false => print!("{}", describe(&job)),
            }
        }
        JobsCommand::List {
            state,
            topic,
            limit,
            after,
            json,
            server,
        } => {
            let page = ApiClient::new(server.url)
                .jobs(&state, topic.as_deref(), limit, after.as_deref())
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
                return Ok(());
            }
            for job in page["jobs"].as_array().into_iter().flatten() {
                println!(
                    "{}  {:<9}  {}  attempts {}{}",
                    text(&job["id"]),
                    text(&job["state"]),
                    place(job),
                    job["attempts"],
                    until(job)
                );
            }
            if let Some(next) = page["next"].as_str() {
                println!("more: --after {next}");
            }
        }
    }
    Ok(())
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

fn place(v: &Value) -> String {
    format!("{}/{}@{}", text(&v["topic"]), v["partition"], v["offset"])
}

fn until(job: &Value) -> String {
    job["until"]
        .as_str()
        .map(|u| format!("  until {u}"))
        .unwrap_or_default()
}

/// A job's state as lines of text.
fn describe(job: &Value) -> String {
    let mut out = format!("job {}\n", text(&job["id"]));
    let mut line = |name: &str, value: String| out.push_str(&format!("  {name:<12} {value}\n"));
    line("state", format!("{}{}", text(&job["state"]), until(job)));
    line("where", place(job));
    line("attempts", job["attempts"].to_string());
    for (name, key) in [
        ("group", "group"),
        ("reason", "reason"),
        ("last error", "last_error"),
        ("enqueued", "enqueued_at"),
        ("started", "started_at"),
        ("finished", "finished_at"),
        ("updated", "updated_at"),
    ] {
        if let Some(v) = job[key].as_str() {
            line(name, v.to_owned());
        }
    }
    if job["dead_letter"].is_object() {
        line("dead letter", place(&job["dead_letter"]));
    }
    out
}

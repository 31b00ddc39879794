//! The `conveyor` binary: parses arguments, resolves configuration, builds library objects and
//! calls them. No logic lives here.

mod cli;
mod jobs;
mod logging;
mod output;
mod postgres;

use std::sync::Arc;

/// mimalloc: glibc's malloc and free were a third of the instructions of an HTTP batch enqueue
/// (`DEVELOPERS.md`, "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use conveyor_bench::{self as bench, BenchOptions};
use conveyor_core::{Backend, TopicSpec};
use conveyor_embedded::{Durability, EmbeddedBackend, EmbeddedConfig};
use conveyor_kafka::KafkaBackend;
use conveyor_server::remote::ApiClient;
use conveyor_server::serve::{Exposure, Role};
use conveyor_server::Config;
use serde_json::{json, Value};

use cli::{BenchArgs, Cli, Command, DlqCommand, SchedulesCommand, TokensCommand, TopicsCommand};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let (config, server) = match &cli.command {
        Command::Dev { config, .. } => (config.as_deref(), true),
        Command::Serve { config, .. } => (Some(config.as_path()), true),
        _ => (None, false),
    };
    if let (Err(e), true) = (logging::init(config), server) {
        logging::say_line(format!("error: {e}"));
        std::process::exit(1);
    }
    if let Err(e) = run(cli).await {
        logging::say_line(format!("error: {e:#}"));
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Dev {
            config,
            listen,
            data_dir,
        } => dev(config, listen, data_dir).await,
        Command::Serve {
            config,
            role,
            listen,
        } => serve(config, role, listen).await,
        Command::Tokens {
            command:
                TokensCommand::Create {
                    name,
                    roles,
                    topics,
                    append,
                },
        } => {
            let mut known = Vec::new();
            for r in &roles {
                match r.as_str() {
                    "read" | "enqueue" | "admin" => known.push(format!("{r:?}")),
                    _ => bail!("--role {r} is not a role: use read, enqueue or admin"),
                }
            }
            let token = conveyor_server::auth::generate();
            let mut entry = format!(
                "# token `{name}`: the server keeps only its hash\n[[api.tokens]]\nname = {name:?}\nroles = [{}]\n",
                known.join(", ")
            );
            if !topics.is_empty() {
                let topics: Vec<String> = topics.iter().map(|t| format!("{t:?}")).collect();
                entry += &format!("topics = [{}]\n", topics.join(", "));
            }
            entry += &format!("sha256 = {:?}\n", conveyor_server::auth::hash_hex(&token));
            match append {
                Some(path) => {
                    use std::io::Write;
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .with_context(|| {
                            format!("cannot open {} to add the token", path.display())
                        })?;
                    f.write_all(format!("\n{entry}").as_bytes())?;
                    eprintln!("token `{name}` added to {} (its hash); the token is on standard output, shown once: give it to its client as CONVEYOR_TOKEN", path.display());
                }
                None => eprint!("{entry}"),
            }
            println!("{token}");
            Ok(())
        }
        Command::Tokens {
            command: TokensCommand::Hash,
        } => {
            let token = std::io::read_to_string(std::io::stdin())?;
            if token.trim().is_empty() {
                bail!("no token on standard input: `echo -n \"$TOKEN\" | conveyor tokens hash`");
            }
            println!("{}", conveyor_server::auth::hash_hex(&token));
            Ok(())
        }
        Command::Enqueue {
            topic,
            job_type,
            payload,
            key,
            headers,
            delay,
            at,
            deadline,
            timeout,
            unique,
            unique_for,
            idempotency_key,
            server,
        } => {
            let payload = if payload == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                payload
            };
            let payload: Value =
                serde_json::from_str(&payload).context("--payload is not valid JSON")?;
            let mut h = serde_json::Map::new();
            for kv in headers {
                let Some((k, v)) = kv.split_once('=') else {
                    bail!("--header `{kv}` must be name=value")
                };
                h.insert(k.to_owned(), json!(v));
            }
            let mut body =
                json!({ "type": job_type, "payload": payload, "key": key, "headers": h });
            if let Some(d) = delay {
                body["delay_ms"] = json!(std::time::Duration::from(d).as_millis() as u64);
            }
            if let Some(at) = at {
                body["run_at"] = json!(at);
            }
            if let Some(d) = deadline {
                body["deadline"] = json!(d);
            }
            if let Some(t) = timeout {
                body["timeout_ms"] = json!(std::time::Duration::from(t).as_millis() as u64);
            }
            if let Some(u) = unique {
                body["unique_key"] = json!(u);
            }
            if let Some(d) = unique_for {
                body["unique_for_ms"] = json!(std::time::Duration::from(d).as_millis() as u64);
            }
            let api = ApiClient::new(server.url).with_token(server.token);
            let at = match idempotency_key {
                Some(k) => api.enqueue_idempotent(&topic, &body, &k).await?,
                None => api.enqueue(&topic, &body).await?,
            };
            println!("{}", serde_json::to_string(&at)?);
            Ok(())
        }
        Command::Jobs { command } => jobs::run(command).await,
        Command::Cancel { id, force, server } => {
            ApiClient::new(server.url)
                .with_token(server.token)
                .cancel(&id, force)
                .await?;
            println!("cancelled {id}: it will not run if it has not started");
            Ok(())
        }
        Command::Pause {
            group,
            topic,
            server,
        } => {
            ApiClient::new(server.url)
                .with_token(server.token)
                .pause(&group, &topic, true)
                .await?;
            println!("paused {topic} for group {group}: running jobs finish, no new ones start until `conveyor resume {group} {topic}`");
            Ok(())
        }
        Command::Resume {
            group,
            topic,
            server,
        } => {
            ApiClient::new(server.url)
                .with_token(server.token)
                .pause(&group, &topic, false)
                .await?;
            println!("resumed {topic} for group {group}");
            Ok(())
        }
        Command::Topics {
            command: TopicsCommand::List { server },
        } => {
            let answer = ApiClient::new(server.url)
                .with_token(server.token)
                .list_topics()
                .await?;
            let topics: Vec<conveyor_core::TopicInfo> =
                serde_json::from_value(answer["topics"].clone())
                    .context("unexpected topic list from the API")?;
            print!("{}", output::topics(&topics));
            Ok(())
        }
        Command::Topics {
            command:
                TopicsCommand::Apply {
                    file,
                    dry_run,
                    yes,
                    server,
                },
        } => {
            apply_topics(
                ApiClient::new(server.url).with_token(server.token),
                &file,
                dry_run,
                yes,
            )
            .await
        }
        Command::Lag {
            group,
            topic,
            json,
            server,
        } => {
            let lag = ApiClient::new(server.url)
                .with_token(server.token)
                .lag(&group, topic.as_deref())
                .await?;
            match json {
                true => println!("{}", serde_json::to_string_pretty(&lag)?),
                false => {
                    let lags: Vec<conveyor_runtime::GroupLag> =
                        serde_json::from_value(lag["topics"].clone())
                            .context("unexpected lag answer from the API")?;
                    print!("{}", output::lag(&group, &lags))
                }
            }
            Ok(())
        }
        Command::Topics {
            command:
                TopicsCommand::Create {
                    name,
                    partitions,
                    retention_ms,
                    server,
                },
        } => {
            let t = ApiClient::new(server.url)
                .with_token(server.token)
                .create_topic(&name, partitions, retention_ms)
                .await?;
            println!(
                "topic {} has {} partitions",
                t["name"].as_str().unwrap_or(&name),
                t["partitions"].as_array().map_or(0, Vec::len)
            );
            Ok(())
        }
        Command::Tail {
            topic,
            from_beginning,
            no_follow,
            server,
        } => {
            tail(
                ApiClient::new(server.url).with_token(server.token),
                &topic,
                from_beginning,
                !no_follow,
            )
            .await
        }
        Command::Dlq {
            command:
                DlqCommand::Replay {
                    topic,
                    job_type,
                    partition,
                    offset,
                    dry_run,
                    server,
                },
        } => {
            let opts = conveyor_server::remote::ReplayOptions {
                job_type,
                partition,
                from_offset: offset.and_then(|o| o.from),
                to_offset: offset.and_then(|o| o.to),
                dry_run,
                ..Default::default()
            };
            replay_dead_letters(
                ApiClient::new(server.url).with_token(server.token),
                &topic,
                &opts,
            )
            .await
        }
        Command::Schedules { command } => schedules(command).await,
        Command::Bench(args) => run_bench(args).await,
        Command::Postgres { command } => {
            postgres::run(command, stop_signal("conveyor postgres".into())?).await
        }
    }
}

/// `conveyor schedules list|put|delete`, through the HTTP API.
async fn schedules(command: SchedulesCommand) -> Result<()> {
    match command {
        SchedulesCommand::List { json, server } => {
            let answer = ApiClient::new(server.url)
                .with_token(server.token)
                .list_schedules()
                .await?;
            let list = answer["schedules"].as_array().cloned().unwrap_or_default();
            match json {
                true => println!("{}", serde_json::to_string_pretty(&list)?),
                false => print!("{}", output::schedules(&list)),
            }
        }
        SchedulesCommand::Put {
            name,
            cron,
            topic,
            job_type,
            payload,
            key,
            timezone,
            missed,
            server,
        } => {
            let payload: Value = match payload {
                Some(p) => serde_json::from_str(&p).context("--payload is not valid JSON")?,
                None => json!({}),
            };
            let body = json!({ "cron": cron, "topic": topic, "type": job_type, "payload": payload,
                "key": key, "timezone": timezone, "missed": missed });
            let s = ApiClient::new(server.url)
                .with_token(server.token)
                .put_schedule(&name, &body)
                .await?;
            println!(
                "schedule {name}: `{}` ({}) -> {} type {}, missed ticks: {}; next tick {}",
                s["cron"].as_str().unwrap_or(""),
                s["timezone"].as_str().unwrap_or(""),
                s["topic"].as_str().unwrap_or(""),
                s["type"].as_str().unwrap_or(""),
                s["missed"].as_str().unwrap_or(""),
                s["next"].as_str().unwrap_or("never")
            );
        }
        SchedulesCommand::Delete { name, server } => {
            ApiClient::new(server.url)
                .with_token(server.token)
                .delete_schedule(&name)
                .await?;
            println!("deleted schedule {name}: it fires no more ticks");
        }
    }
    Ok(())
}

async fn dev(
    config: Option<std::path::PathBuf>,
    listen: Option<std::net::SocketAddr>,
    data_dir: Option<std::path::PathBuf>,
) -> Result<()> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let mut config = Config::load(config.as_deref(), &env)?;
    if let Some(d) = data_dir {
        config.data_dir = d;
    }
    run_server("conveyor dev", config, Role::All, listen).await
}

async fn serve(
    config: std::path::PathBuf,
    role: Role,
    listen: Option<std::net::SocketAddr>,
) -> Result<()> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = Config::load(Some(&config), &env)?;
    run_server("conveyor serve", config, role, listen).await
}

/// Listens, checks the exposure, prints what runs, runs until a stop signal.
async fn run_server(
    name: &str,
    mut config: Config,
    role: Role,
    listen: Option<std::net::SocketAddr>,
) -> Result<()> {
    if let Some(l) = listen {
        config.api.listen = l.to_string();
    }
    let listener = tokio::net::TcpListener::bind(&config.api.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (set [api] listen or --listen)",
                config.api.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let serves_api = matches!(role, Role::Api | Role::All);
    if serves_api {
        match conveyor_server::serve::check_exposure(&config, addr) {
            Exposure::Guarded => {}
            Exposure::OpenAllowed => tracing::warn!(
                "{} (allowed by api.allow_unauthenticated)",
                conveyor_server::serve::exposure_message(addr)
            ),
            // dev is for a laptop: it says so and goes on
            Exposure::Open if name == "conveyor dev" => {
                tracing::warn!("{}", conveyor_server::serve::exposure_message(addr))
            }
            Exposure::Open => bail!("{}", conveyor_server::serve::exposure_message(addr)),
        }
    }
    match config.backend.as_str() {
        "kafka" => logging::say!("{name}: kafka backend at {}", config.kafka.brokers),
        _ => logging::say!(
            "{name}: embedded backend in {}",
            config.embedded_config().path.display()
        ),
    }
    logging::say!("  role     {}", role.as_str());
    if serves_api {
        logging::say!("  API      http://{addr}/v1/topics/{{topic}}/jobs");
        logging::say!("  OpenAPI  http://{addr}/openapi.json");
        match config.api.tokens.len() {
            0 => logging::say!(
                "  auth     none: the API is open (configure [[api.tokens]] to require tokens)"
            ),
            n => logging::say!(
                "  auth     {n} token(s): every route but the probes needs `Authorization: Bearer`"
            ),
        }
    }
    logging::say!("  health   http://{addr}/healthz  ready: http://{addr}/readyz");
    for t in config.all_topics() {
        logging::say!("  topic    {} ({} partitions)", t.name, t.partitions);
    }
    if matches!(role, Role::Workers | Role::All) {
        for r in &config.routes {
            logging::say!(
                "  route    {} -> {} (group {}, concurrency {})",
                r.topic,
                r.shown_url(),
                r.group(),
                r.concurrency
            );
        }
    }
    if matches!(role, Role::Scheduler | Role::All) {
        for s in &config.schedules {
            logging::say!(
                "  schedule {} `{}` ({}) -> {} type {} (missed: {})",
                s.name,
                s.cron,
                s.timezone,
                s.topic,
                s.job_type,
                s.missed.as_str()
            );
        }
    }
    logging::say!("  Ctrl-C or SIGTERM to stop (running deliveries get 25 s to finish)");
    let shutdown = stop_signal(name.to_owned())?;
    conveyor_server::serve::run(config, role, listener, shutdown).await?;
    logging::say!("{name}: stopped");
    Ok(())
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM, what systemd, Docker and Kubernetes send: both drain
/// the same way.
fn stop_signal(name: String) -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        let signal = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        logging::say!(
            "{name}: {signal}: draining (requests in flight get 5 s, running deliveries 25 s)"
        );
    })
}

/// Plans, shows the plan, asks (unless `--yes`), applies.
async fn apply_topics(
    api: ApiClient,
    file: &std::path::Path,
    dry_run: bool,
    yes: bool,
) -> Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    let specs = conveyor_server::topics::load_topics_file(file)?;
    let planned = api.apply_topics(&specs, true).await?;
    let plans: Vec<conveyor_core::TopicPlan> =
        serde_json::from_value(planned["plan"].clone()).context("unexpected plan from the API")?;
    let (text, sum) = output::plan(&plans);
    print!("{text}");
    if sum.refused > 0 {
        bail!("the plan has refused changes (see above); fix the file, nothing was applied");
    }
    if dry_run {
        return Ok(());
    }
    if sum.create + sum.update == 0 {
        println!("nothing to do");
        return Ok(());
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!("not applied: pass --yes to apply without a prompt");
        }
        print!("apply these changes? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            bail!("not applied");
        }
    }
    api.apply_topics(&specs, false).await?;
    println!("applied: {} created, {} updated", sum.create, sum.update);
    Ok(())
}

/// Replays in steps through the API: a progress line per step on stderr, the summary on stdout.
async fn replay_dead_letters(
    api: ApiClient,
    topic: &str,
    opts: &conveyor_server::remote::ReplayOptions,
) -> Result<()> {
    let dlq = api.dead_letter_topic_of(topic).await?;
    match dlq == topic {
        true => eprintln!("dead-letter topic {dlq}"),
        false => eprintln!("dead-letter topic {dlq} (the dead letters of {topic})"),
    }
    let report = api
        .replay_in_steps(&dlq, opts, |p| {
            eprintln!("{}", output::replay_step(p, opts.dry_run))
        })
        .await?;
    print!("{}", output::replay_summary(&report));
    Ok(())
}

async fn tail(api: ApiClient, topic: &str, from_beginning: bool, follow: bool) -> Result<()> {
    let info = api.describe_topic(topic).await?;
    let parts = info["partitions"].as_array().cloned().unwrap_or_default();
    let mut next: Vec<i64> = parts
        .iter()
        .map(|p| {
            if from_beginning {
                p["low"].as_i64().unwrap_or(0)
            } else {
                p["high"].as_i64().unwrap_or(0)
            }
        })
        .collect();
    loop {
        let mut got = 0;
        for (p, offset) in next.iter_mut().enumerate() {
            let page = api
                .read_records(topic, p as i32, Some(*offset), 500)
                .await?;
            for r in page["records"].as_array().into_iter().flatten() {
                println!("{r}");
                got += 1;
            }
            *offset = page["next_offset"].as_i64().unwrap_or(*offset);
        }
        if got == 0 {
            if !follow {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            // partitions added since: followed from their first record (none of which existed
            // when the tail started)
            let info = api.describe_topic(topic).await?;
            for p in info["partitions"]
                .as_array()
                .into_iter()
                .flatten()
                .skip(next.len())
            {
                next.push(p["low"].as_i64().unwrap_or(0));
            }
        }
    }
}

/// A fresh topic `PREFIX.<id>` of `partitions` partitions for one of the bench's extra phases.
async fn bench_topic(backend: &Arc<dyn Backend>, prefix: &str, partitions: i32) -> Result<String> {
    let topic = format!(
        "{prefix}.{}",
        conveyor_core::headers::new_message_id().replace('-', "")
    );
    backend
        .create_topic(&TopicSpec::new(topic.clone(), partitions))
        .await?;
    Ok(topic)
}

async fn run_bench(args: BenchArgs) -> Result<()> {
    let opts = BenchOptions {
        jobs: args.jobs,
        concurrency: args.concurrency,
        latency_jobs: args.latency_jobs,
        payload_bytes: args.payload_bytes,
        partitions: args.partitions,
        keys: args.keys as usize,
        handler_ms: args.handler_ms,
        delayed_jobs: args.delayed_jobs,
        delayed_window: std::time::Duration::from_secs(args.delayed_window_secs),
        delayed_max_buffered: args.delayed_max_buffered.max(1),
        request_jobs: args.request_jobs,
        lookup: bench::Lookup::parse(&args.lookup).ok_or_else(|| {
            anyhow::anyhow!("--lookup `{}`: use `on`, `off` or `both`", args.lookup)
        })?,
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let tmp = tempfile::tempdir()?;
    let mut kafka = None;
    let backend: Arc<dyn Backend> = match args.backend.as_str() {
        "embedded" => {
            let durability = match args.durability.as_str() {
                "fsync" => Durability::Fsync,
                "os" => Durability::Os,
                other => bail!("--durability `{other}`: use `fsync` or `os`"),
            };
            let path = args
                .data_dir
                .clone()
                .unwrap_or_else(|| tmp.path().to_owned());
            let mut config = EmbeddedConfig::new(&path);
            config.durability = durability;
            eprintln!(
                "conveyor bench: backend=embedded durability={} data={} cores={cores}",
                args.durability,
                path.display()
            );
            Arc::new(EmbeddedBackend::open(config)?)
        }
        "kafka" => {
            let settings = conveyor_server::config::KafkaSettings {
                brokers: args.brokers.clone(),
                profile: args.profile.clone(),
                ..Default::default()
            };
            let mut config = settings.to_config();
            let creator: Option<Arc<conveyor_kafka::mock::MockBroker>> = if args.brokers == "mock" {
                let mock = Arc::new(conveyor_kafka::mock::MockBroker::start(1)?);
                config.brokers = mock.bootstrap_servers().to_owned();
                Some(mock)
            } else {
                None
            };
            eprintln!(
                "conveyor bench: backend=kafka brokers={} profile={} cores={cores}",
                args.brokers, args.profile
            );
            kafka = Some(config.clone());
            match creator {
                Some(mock) => Arc::new(KafkaBackend::with_admin(config, mock)?),
                None => Arc::new(KafkaBackend::connect(config)?),
            }
        }
        other => bail!("unknown backend `{other}`: use `embedded` or `kafka`"),
    };
    let report = bench::run(Arc::clone(&backend), &opts, |line| eprintln!("{line}")).await?;
    let mut line = report.result_line();
    if args.raw {
        let Some(config) = kafka else {
            bail!("--raw measures bare rdkafka: use it with --backend kafka")
        };
        let topic = bench_topic(&backend, "bench.raw", opts.partitions).await?;
        let raw = conveyor_kafka::raw_bench::run(
            &config,
            &topic,
            conveyor_kafka::raw_bench::RawOptions {
                records: opts.jobs,
                concurrency: opts.concurrency,
                payload_bytes: opts.payload_bytes,
                keys: opts.keys,
                handler_ms: opts.handler_ms,
            },
            |l| eprintln!("{l}"),
        )
        .await?;
        eprintln!(
            "overhead: conveyor enqueue is {:.2}x the raw produce rate; conveyor processing {:.2}x the raw consume loop and {:.2}x the bare worker",
            report.enqueue_jobs_s / raw.produce_s,
            report.process_jobs_s / raw.consume_s,
            report.process_jobs_s / raw.worker_s
        );
        line.push_str(&format!(
            " raw_produce_s={:.0} raw_consume_s={:.0} raw_worker_s={:.0}",
            raw.produce_s, raw.consume_s, raw.worker_s
        ));
    }
    if args.http_jobs > 0 {
        let topic = bench_topic(&backend, "bench.http", opts.partitions).await?;
        let load = bench::http::HttpLoad {
            requests: args.http_jobs,
            connections: args.http_connections,
            payload_bytes: opts.payload_bytes,
            batch: args.http_batch as usize,
            rate: (args.http_rate > 0.0).then_some(args.http_rate),
        };
        eprintln!(
            "http: {} requests of {} job(s) through the API over {} connections, {}",
            load.requests,
            load.batch,
            load.connections,
            match load.rate {
                Some(r) => format!("at {r:.0} requests/s"),
                None => "as fast as answered".to_owned(),
            }
        );
        let http = bench::http::run(Arc::clone(&backend), &topic, load).await?;
        eprintln!(
            "http: {:.0} requests/s, {:.0} jobs/s, latency p50 {:.2} ms p99 {:.2} ms",
            http.requests_s, http.jobs_s, http.p50_ms, http.p99_ms
        );
        line.push_str(&format!(
            " http_enqueue_s={:.0} http_jobs_s={:.0} http_p50_ms={:.2} http_p99_ms={:.2}",
            http.requests_s, http.jobs_s, http.p50_ms, http.p99_ms
        ));
    }
    backend.close().await?;
    println!("{line}");
    Ok(())
}

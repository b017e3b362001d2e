//! `--scenario churn`: the soak. One publisher sends audio and video the whole time while `--cycles` subscribers
//! come and go (`--join-concurrency` at once): each joins, waits for the publisher's audio and video, stays
//! `--hold-ms`, then leaves — most with `leave`, every `--vanish-every`-th by dropping its socket and connections
//! without a word (the path of a hall whose browser crashes). At the end every subscriber must be gone from the
//! server (participants and media connections back to the publisher's own), and the server's memory, open file
//! descriptors and threads are compared with their values after a warm-up. Figures are printed and written as JSON.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::progress::Progress;
use anyhow::{Context, anyhow, bail};
use giaoban_tests::sim::{SimEndpoint, http_get};
use serde::Serialize;

use super::{
    Args, ServerSpec, check_loopback, clock_ticks, cpu_of, quantile_ms, receiving_media, rss_of,
    server_to_load, sim_opts,
};

/// One reading of the server process.
#[derive(Debug, Clone, Copy, Serialize)]
struct ProcessSample {
    after_cycles: usize,
    rss_kib: u64,
    open_fds: usize,
    threads: usize,
}

#[derive(Debug, Serialize)]
struct ChurnSummary {
    scenario: &'static str,
    url: String,
    cycles_requested: usize,
    cycles_ok: usize,
    cycles_failed: usize,
    /// Cycles whose subscriber left by dropping its connections without `leave`.
    vanished: usize,
    concurrency: usize,
    hold_ms: u64,
    duration_s: f64,
    cycles_per_s: f64,
    join_to_first_media_p50_ms: Option<f64>,
    join_to_first_media_p95_ms: Option<f64>,
    /// The server's participants and media connections with only the publisher in (before the churn).
    participants_base: u64,
    connections_base: u64,
    /// The same, once the last subscriber left (and the server had up to `--settle-timeout` to notice).
    participants_end: u64,
    connections_end: u64,
    /// Seconds from the last leave until the counts were back to the base.
    drained_after_s: Option<f64>,
    /// Memory, descriptors and threads: at the start, after the warm-up, every `--cycles / 20` cycles, and at the end.
    samples: Vec<ProcessSample>,
    rss_kib_after_warmup: Option<u64>,
    rss_kib_end: Option<u64>,
    /// (end − after warm-up) ÷ after warm-up, in %.
    rss_growth_pct: Option<f64>,
    open_fds_start: Option<usize>,
    open_fds_end: Option<usize>,
    threads_start: Option<usize>,
    threads_end: Option<usize>,
    server_cpu_s: Option<f64>,
    /// Lines of the server's log with `panicked`.
    server_panics: usize,
    /// The publisher's media reached the last subscriber: it never stopped sending.
    publisher_alive_at_end: bool,
    errors: Vec<String>,
}

fn count_dir(path: String) -> Option<usize> {
    std::fs::read_dir(path).ok().map(|d| d.count())
}

fn sample(pid: Option<u32>, after_cycles: usize) -> Option<ProcessSample> {
    let pid = pid?;
    Some(ProcessSample {
        after_cycles,
        rss_kib: rss_of(Some(pid))?.0,
        open_fds: count_dir(format!("/proc/{pid}/fd"))?,
        threads: count_dir(format!("/proc/{pid}/task"))?,
    })
}

/// `(participants, connections)` from `/healthz`.
async fn server_counts(http: std::net::SocketAddr) -> anyhow::Result<(u64, u64)> {
    let (status, body) = http_get(http, "/healthz").await?;
    if status != 200 {
        bail!("/healthz answered {status}: {body}");
    }
    let v: serde_json::Value = serde_json::from_str(&body).context("/healthz JSON")?;
    let get = |k: &str| {
        v[k].as_u64()
            .ok_or_else(|| anyhow!("/healthz lacks {k}: {body}"))
    };
    Ok((get("participants")?, get("connections")?))
}

/// Count one finished cycle: its join → first media, or its error (the first 20 kept). Returns 1 if it failed.
fn record(
    r: Result<anyhow::Result<f64>, tokio::task::JoinError>,
    first_media: &mut Vec<f64>,
    errors: &mut Vec<String>,
) -> usize {
    let error = match r {
        Ok(Ok(ms)) => {
            first_media.push(ms);
            return 0;
        }
        Ok(Err(e)) => format!("{e:#}"),
        Err(e) => format!("cycle task: {e}"),
    };
    if errors.len() < 20 {
        errors.push(error);
    }
    1
}

/// One cycle: join, wait for audio and video from the publisher, hold, leave (or vanish). Returns join → first
/// media in ms.
async fn cycle(
    opts: giaoban_tests::sim::SimOptions,
    publisher: String,
    hold: Duration,
    vanish: bool,
    timeout: Duration,
) -> anyhow::Result<f64> {
    let ep = SimEndpoint::connect(opts).await.context("join")?;
    let deadline = Instant::now() + timeout;
    while !receiving_media(&ep, Some(&publisher)) {
        if Instant::now() >= deadline {
            ep.shutdown().await;
            bail!("{}: no audio and video within {timeout:?}", ep.name());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let joined = ep.join_sent_at().unwrap_or_else(|| ep.opened_at());
    let first = ep
        .stats()
        .received
        .iter()
        .filter(|t| t.participant_id == publisher)
        .filter_map(|t| t.first_packet_at)
        .min()
        .map(|at| at.saturating_duration_since(joined).as_secs_f64() * 1000.0)
        .unwrap_or(f64::NAN);
    tokio::time::sleep(hold).await;
    if vanish {
        ep.shutdown().await;
    } else {
        ep.close().await;
    }
    Ok(first)
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    if args.cycles == 0 {
        bail!("--cycles must be at least 1");
    }
    let concurrency = args.join_concurrency.max(1);
    let (url, pid, spawned) = server_to_load(
        args,
        args.spawn_server,
        ServerSpec::of(args, concurrency * 2 + 16),
    )
    .await?;
    let http = check_loopback(&url)?;
    let ticks = clock_ticks();
    eprintln!(
        "churn: 1 publisher + {} join/leave cycles, {concurrency} at a time, hold {} ms, every {}th vanishes",
        args.cycles, args.hold_ms, args.vanish_every
    );

    let publisher = SimEndpoint::connect(sim_opts(args, &url, "publisher".into(), true))
        .await
        .context("publisher joins")?;
    publisher.publish().await.context("publisher publishes")?;
    let pub_id = publisher.id();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (participants_base, connections_base) = server_counts(http).await?;

    let mut samples: Vec<ProcessSample> = sample(pid, 0).into_iter().collect();
    let cpu_start = pid.and_then(|p| cpu_of(Some(p), ticks).ok());
    let warmup = (args.cycles / 10).clamp(1, 100);
    let every = (args.cycles / 20).max(1);
    let hold = Duration::from_millis(args.hold_ms);
    let timeout = Duration::from_secs(args.settle_timeout.min(30));
    let vanish_every = args.vanish_every.max(1);

    let bar = Progress::new(args.cycles as u64, "churn", "cycles");
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let mut first_media = Vec::new();
    let mut errors = Vec::new();
    let mut failed = 0usize;
    let mut vanished = 0usize;
    let mut done = 0usize;
    let mut rss_after_warmup = None;
    for i in 0..args.cycles {
        let permit = Arc::clone(&sem)
            .acquire_owned()
            .await
            .map_err(|_| anyhow!("semaphore closed"))?;
        let vanish = (i + 1) % vanish_every == 0;
        vanished += usize::from(vanish);
        let opts = sim_opts(args, &url, format!("churn-{i:05}"), false);
        let publisher = pub_id.clone();
        tasks.spawn(async move {
            let r = cycle(opts, publisher, hold, vanish, timeout).await;
            drop(permit);
            r
        });
        // Collect whatever finished, so samples follow progress.
        while let Some(r) = tasks.try_join_next() {
            done += 1;
            failed += record(r, &mut first_media, &mut errors);
            bar.set_position(done as u64);
            bar.set_message(format!("{failed} failed"));
            if done == warmup {
                rss_after_warmup = sample(pid, done).map(|s| {
                    samples.push(s);
                    s.rss_kib
                });
            } else if done.is_multiple_of(every)
                && let Some(s) = sample(pid, done)
            {
                samples.push(s);
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        done += 1;
        failed += record(r, &mut first_media, &mut errors);
        bar.set_position(done as u64);
    }
    bar.finish_and_clear();
    let churn_s = started.elapsed().as_secs_f64();

    // Everyone but the publisher must be gone: vanished ones after the ICE timeout (5 s + 10 s).
    let last_leave = Instant::now();
    let drain_deadline = last_leave + Duration::from_secs(args.settle_timeout.max(20));
    let mut drained_after_s = None;
    let (mut participants_end, mut connections_end) = server_counts(http).await?;
    loop {
        if participants_end == participants_base && connections_end == connections_base {
            drained_after_s = Some(last_leave.elapsed().as_secs_f64());
            break;
        }
        if Instant::now() >= drain_deadline {
            errors.push(format!(
                "after {:.0} s the server still holds {participants_end} participants and {connections_end} \
                 connections (base {participants_base} / {connections_base})",
                last_leave.elapsed().as_secs_f64()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        (participants_end, connections_end) = server_counts(http).await?;
    }
    // Let freed memory settle back to the allocator before the last reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let end = sample(pid, done);
    samples.extend(end);
    let cpu_end = pid.and_then(|p| cpu_of(Some(p), ticks).ok());

    // The publisher's media still reaches a fresh subscriber.
    let publisher_alive_at_end = cycle(
        sim_opts(args, &url, "churn-last".into(), false),
        pub_id.clone(),
        Duration::ZERO,
        false,
        timeout,
    )
    .await
    .map_err(|e| errors.push(format!("last subscriber: {e:#}")))
    .is_ok();
    publisher.close().await;

    let server_panics = spawned
        .as_ref()
        .and_then(|s| std::fs::read_to_string(&s.log).ok())
        .map(|log| log.lines().filter(|l| l.contains("panicked")).count())
        .unwrap_or(0);
    if let Some(mut s) = spawned {
        let _ = s.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.child.wait()).await;
    }

    first_media.retain(|v| v.is_finite());
    first_media.sort_by(|a, b| a.total_cmp(b));
    let start = samples.first().copied();
    let summary = ChurnSummary {
        scenario: "churn",
        url,
        cycles_requested: args.cycles,
        cycles_ok: args.cycles - failed,
        cycles_failed: failed,
        vanished,
        concurrency,
        hold_ms: args.hold_ms,
        duration_s: churn_s,
        cycles_per_s: args.cycles as f64 / churn_s.max(1e-9),
        join_to_first_media_p50_ms: quantile_ms(&first_media, 0.5),
        join_to_first_media_p95_ms: quantile_ms(&first_media, 0.95),
        participants_base,
        connections_base,
        participants_end,
        connections_end,
        drained_after_s,
        rss_kib_after_warmup: rss_after_warmup,
        rss_kib_end: end.map(|s| s.rss_kib),
        rss_growth_pct: match (rss_after_warmup, end) {
            (Some(w), Some(e)) if w > 0 => Some((e.rss_kib as f64 - w as f64) / w as f64 * 100.0),
            _ => None,
        },
        open_fds_start: start.map(|s| s.open_fds),
        open_fds_end: end.map(|s| s.open_fds),
        threads_start: start.map(|s| s.threads),
        threads_end: end.map(|s| s.threads),
        server_cpu_s: match (cpu_start, cpu_end) {
            (Some(a), Some(b)) => Some(b.cpu_s - a.cpu_s),
            _ => None,
        },
        server_panics,
        publisher_alive_at_end,
        samples,
        errors,
    };
    print_churn(&summary);
    let json = serde_json::to_string_pretty(&summary)?;
    println!("{json}");
    if let Some(path) = &args.json {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("summary written to {}", path.display());
    }
    if let Some(dir) = &args.out {
        super::write_out(dir, &json, &html(&summary))?;
    }
    let clean = summary.cycles_failed == 0
        && summary.drained_after_s.is_some()
        && summary.server_panics == 0
        && summary.publisher_alive_at_end;
    if !clean {
        bail!("churn found problems: {:?}", summary.errors);
    }
    Ok(())
}

fn print_churn(s: &ChurnSummary) {
    let opt = |v: Option<f64>, unit: &str| {
        v.map(|v| format!("{v:.1}{unit}"))
            .unwrap_or_else(|| "n/a".into())
    };
    println!();
    println!(
        "churn: {} cycles ({} ok, {} failed, {} vanished without leave) in {:.0} s ({:.1}/s), {} at a time",
        s.cycles_requested,
        s.cycles_ok,
        s.cycles_failed,
        s.vanished,
        s.duration_s,
        s.cycles_per_s,
        s.concurrency
    );
    println!(
        "  join → first media  p50 {}  p95 {}",
        opt(s.join_to_first_media_p50_ms, " ms"),
        opt(s.join_to_first_media_p95_ms, " ms")
    );
    println!(
        "  participants {} → {}, media connections {} → {} (drained {} after the last leave)",
        s.participants_base,
        s.participants_end,
        s.connections_base,
        s.connections_end,
        opt(s.drained_after_s, " s")
    );
    println!(
        "  server RSS after warm-up {} KiB → end {} KiB ({}); fds {:?} → {:?}; threads {:?} → {:?}; CPU {}",
        s.rss_kib_after_warmup.unwrap_or(0),
        s.rss_kib_end.unwrap_or(0),
        opt(s.rss_growth_pct, " %"),
        s.open_fds_start,
        s.open_fds_end,
        s.threads_start,
        s.threads_end,
        opt(s.server_cpu_s, " s")
    );
    println!(
        "  panics in server log: {}; publisher's media reaches a new subscriber at the end: {}",
        s.server_panics, s.publisher_alive_at_end
    );
    for e in &s.errors {
        println!("  error: {e}");
    }
    println!();
}

fn html(s: &ChurnSummary) -> String {
    let opt = |v: Option<f64>, unit: &str| {
        v.map(|v| format!("{v:.1}{unit}"))
            .unwrap_or_else(|| "n/a".into())
    };
    let rows: Vec<(String, String)> = vec![
        (
            "cycles".into(),
            format!(
                "{} ({} ok, {} failed, {} vanished without leave) in {:.0} s, {} at a time",
                s.cycles_requested,
                s.cycles_ok,
                s.cycles_failed,
                s.vanished,
                s.duration_s,
                s.concurrency
            ),
        ),
        (
            "join → first media".into(),
            format!(
                "p50 {}  p95 {}",
                opt(s.join_to_first_media_p50_ms, " ms"),
                opt(s.join_to_first_media_p95_ms, " ms")
            ),
        ),
        (
            "participants / media connections".into(),
            format!(
                "{} → {} / {} → {} (drained {} after the last leave)",
                s.participants_base,
                s.participants_end,
                s.connections_base,
                s.connections_end,
                opt(s.drained_after_s, " s")
            ),
        ),
        (
            "server RSS".into(),
            format!(
                "after warm-up {} KiB → end {} KiB ({})",
                s.rss_kib_after_warmup.unwrap_or(0),
                s.rss_kib_end.unwrap_or(0),
                opt(s.rss_growth_pct, " %")
            ),
        ),
        ("descriptors / threads".into(), {
            let n = |v: Option<usize>| v.map_or_else(|| "n/a".into(), |v| v.to_string());
            format!(
                "{} → {} / {} → {}",
                n(s.open_fds_start),
                n(s.open_fds_end),
                n(s.threads_start),
                n(s.threads_end)
            )
        }),
        ("server CPU".into(), opt(s.server_cpu_s, " s")),
        (
            "panics in the server log".into(),
            s.server_panics.to_string(),
        ),
    ];
    let mut body = super::report::kv_table(&rows);
    let series =
        |name: &str, color: &'static str, f: fn(&ProcessSample) -> f64| super::report::Series {
            name: name.into(),
            color,
            dashed: false,
            points: s
                .samples
                .iter()
                .map(|p| (p.after_cycles as f64, f(p)))
                .collect(),
        };
    body.push_str("<figure>");
    body.push_str(&super::report::line_chart(
        "Server memory across the churn",
        "cycles done",
        "RSS, MiB",
        &[series("RSS", "#1f6feb", |p| p.rss_kib as f64 / 1024.0)],
        None,
    ));
    body.push_str("</figure><figure>");
    body.push_str(&super::report::line_chart(
        "Open descriptors and threads",
        "cycles done",
        "count",
        &[
            series("descriptors", "#1a7f37", |p| p.open_fds as f64),
            series("threads", "#9a6700", |p| p.threads as f64),
        ],
        None,
    ));
    body.push_str("</figure>");
    super::report::page(
        "giaoban loadtest: churn",
        "One publisher sends the whole time while subscribers join, receive, and leave (some vanish without leave).",
        &body,
    )
}

//! RPC: the write round trip from a client (as a secondary sends it) and
//! write throughput with concurrent writers, beside a raw DEALER/ROUTER echo
//! with the same crate and a raw one-row-per-commit SQLite loop.

use super::Row;
use super::cpu::ThreadCpu;
use super::stats::quantile;
use crate::local_cluster::LocalCluster;
use std::time::{Duration, Instant};
use zeromq::{Socket, SocketRecv, SocketSend};

pub async fn run(writes: usize) -> Result<Vec<Row>, String> {
    // As the primary has them (the baselines below open connections of
    // their own first).
    crate::store::process_settings();
    let mut c = LocalCluster::new()?;
    let primary = c.spawn_member()?;
    let mut client = c.client("bench-rpc");
    wait_ready(&mut client).await?;
    let blocker = super::blocker(&mut client).await?;
    let rows = measure(&c, primary, &mut client, writes, &blocker).await;
    super::release(&c, &mut client, &blocker).await;
    rows
}

async fn measure(
    c: &LocalCluster,
    primary: u32,
    client: &mut crate::client::Client,
    writes: usize,
    blocker: &str,
) -> Result<Vec<Row>, String> {
    let mut rows = round_trips(primary, client, writes, blocker).await?;
    rows.extend(throughputs(c, primary, client, writes, blocker).await?);
    let stall = counters(client).await?.longest_poll_us as f64 / 1000.0;
    rows.push(Row {
        scenario: "rpc".into(),
        metric: "longest event-loop poll of the primary, under load".into(),
        unit: "ms".into(),
        p50: stall,
        p99: stall,
        samples: 1,
        baseline: None,
        baseline_p50: None,
        goal: Some(format!(
            "≤ {} ms (warning threshold)",
            crate::loop_watch::STALL_WARN.as_millis()
        )),
    });
    Ok(rows)
}

/// The sequential write and ping round trips, beside a raw echo (+ a raw
/// commit for the write, and apart from that, + SQLite committing the
/// write's own rows alone: what a write costs before grove adds anything).
async fn round_trips(
    primary: u32,
    client: &mut crate::client::Client,
    writes: usize,
    blocker: &str,
) -> Result<Vec<Row>, String> {
    for _ in 0..50 {
        write(client, blocker).await?;
    }
    let mut rtt = Vec::with_capacity(writes);
    let cpu_before = ThreadCpu::of(primary);
    for _ in 0..writes {
        let t = Instant::now();
        write(client, blocker).await?;
        rtt.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let cpu = ThreadCpu::of(primary);
    let mut pings = Vec::with_capacity(writes);
    for _ in 0..writes {
        let t = Instant::now();
        crate::client::ping(client)
            .await
            .map_err(|e| e.to_string())?;
        pings.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let echo = raw_echo(writes).await?;
    let commits = raw_commits(writes)?;
    let commit_p50 = quantile(&commits, 0.5);
    // The same write's rows committed alone, one to a commit: the p50 of
    // those commits, beside the round trips' p50 (a mean would count the
    // checkpoints' catch-up, which the p50 of the round trips leaves out).
    let rows_alone_ms = {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let measured = crate::store::ceiling::rows_rate(&dir.path().join("grove.db"), writes, 1)
            .map_err(|e| e.to_string())?;
        quantile(&measured.commits_ms, 0.5)
    };
    let rtt_row = |metric: &str, baseline: &str, base: f64, goal: Option<&str>| Row {
        scenario: "rpc".into(),
        metric: metric.into(),
        unit: "ms".into(),
        p50: quantile(&rtt, 0.5),
        p99: quantile(&rtt, 0.99),
        samples: rtt.len(),
        baseline: Some(baseline.into()),
        baseline_p50: Some(base),
        goal: goal.map(String::from),
    };
    Ok(vec![
        Row {
            scenario: "rpc".into(),
            metric: "ping round trip (no store)".into(),
            unit: "ms".into(),
            p50: quantile(&pings, 0.5),
            p99: quantile(&pings, 0.99),
            samples: pings.len(),
            baseline: Some("raw DEALER/ROUTER echo".into()),
            baseline_p50: Some(quantile(&echo, 0.5)),
            goal: None,
        },
        rtt_row(
            "write round trip (task.create)",
            "raw DEALER/ROUTER echo + raw commit",
            quantile(&echo, 0.5) + commit_p50,
            Some("≤ 3× baseline"),
        ),
        rtt_row(
            "write round trip (task.create), beside its rows alone",
            "echo + the write's rows committed alone",
            quantile(&echo, 0.5) + rows_alone_ms,
            None,
        ),
        cpu_row(
            "primary CPU per sequential write: event loop (main thread)",
            cpu.since(&cpu_before, super::cpu::MAIN),
            writes,
        ),
        cpu_row(
            "primary CPU per sequential write: store thread",
            cpu.since(&cpu_before, "grove-store"),
            writes,
        ),
    ])
}

/// A row of CPU microseconds per write.
fn cpu_row(metric: &str, ns: u64, writes: usize) -> Row {
    let us = ns as f64 / 1000.0 / writes.max(1) as f64;
    Row {
        scenario: "rpc".into(),
        metric: metric.into(),
        unit: "µs".into(),
        p50: us,
        p99: us,
        samples: writes,
        baseline: None,
        baseline_p50: None,
        goal: None,
    }
}

/// Writes/s with 1, 4 and 16 concurrent writers and how many writes each
/// commit carried, beside raw single-row commits and the store's ceiling.
async fn throughputs(
    c: &LocalCluster,
    primary: u32,
    client: &mut crate::client::Client,
    writes: usize,
    blocker: &str,
) -> Result<Vec<Row>, String> {
    let commits = raw_commits(writes)?;
    let sqlite_rate = 1000.0 / (commits.iter().sum::<f64>() / commits.len() as f64);
    let mut rows = Vec::new();
    let ceiling = store_ceiling(writes.max(MIN_CEILING_WRITES))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = writes.max(MIN_CEILING_WRITES);
    let alone = tokio::task::spawn_blocking(move || store_thread_alone(n))
        .await
        .map_err(|e| e.to_string())??;
    for writers in [1usize, 4, 16] {
        let before = counters(client).await?;
        let (primary_before, own_before) = (ThreadCpu::of(primary), ThreadCpu::own_process());
        let rate = throughput(c, writers, writes, blocker).await?;
        let (primary_cpu, own_cpu) = (ThreadCpu::of(primary), ThreadCpu::own_process());
        let after = counters(client).await?;
        let transport = raw_echo_rate(writers, writes).await?;
        let commits = after.commits.saturating_sub(before.commits).max(1);
        let carried = after
            .writes_committed
            .saturating_sub(before.writes_committed);
        let batch = carried as f64 / commits as f64;
        let pages = after.wal_pages.saturating_sub(before.wal_pages) as f64 / carried.max(1) as f64;
        let metric = format!("throughput, {writers} concurrent writers");
        rows.push(Row {
            scenario: "rpc".into(),
            metric: metric.clone(),
            unit: "writes/s".into(),
            p50: rate,
            p99: rate,
            samples: writes,
            baseline: Some("raw SQLite, one row per commit".into()),
            baseline_p50: Some(sqlite_rate),
            goal: (writers == 16).then(|| "≥ 0.5× baseline".into()),
        });
        rows.push(Row {
            scenario: "rpc".into(),
            metric: format!("{metric}, beside the store's ceiling"),
            unit: "writes/s".into(),
            p50: rate,
            p99: rate,
            samples: writes,
            baseline: Some(format!(
                "store ceiling: a write's rows alone, {CEILING_BATCH}/commit"
            )),
            baseline_p50: Some(ceiling.rate),
            goal: None,
        });
        rows.push(Row {
            scenario: "rpc".into(),
            metric: format!("{metric}, beside grove's store thread alone"),
            unit: "writes/s".into(),
            p50: rate,
            p99: rate,
            samples: writes,
            baseline: Some(format!(
                "store thread fed in process, {CEILING_BATCH} in flight ({:.1}/commit)",
                alone.per_commit
            )),
            baseline_p50: Some(alone.rate),
            goal: None,
        });
        rows.push(Row {
            scenario: "rpc".into(),
            metric: format!("{metric}, beside the transport's ceiling"),
            unit: "writes/s".into(),
            p50: rate,
            p99: rate,
            samples: writes,
            baseline: Some(format!(
                "raw DEALER/ROUTER echo, {writers} clients on own threads"
            )),
            baseline_p50: Some(transport.rate),
            goal: None,
        });
        // What no work of grove's own costs: a bare echo round trip of the
        // same crate with this many clients, plus SQLite writing the rows
        // of a write at its best batching, on the same cores. A write can
        // cost no less than both, so no pipeline gets 16 writers past this
        // (see docs/performance.md).
        let bare = cores as f64 * 1e9 / (transport.cpu_ns + ceiling.cpu_ns).max(1.0);
        rows.push(Row {
            scenario: "rpc".into(),
            metric: format!(
                "{metric}: the most a bare echo plus the write's rows allow on {cores} cores"
            ),
            unit: "writes/s".into(),
            p50: bare,
            p99: bare,
            samples: writes,
            baseline: Some("raw SQLite, one row per commit".into()),
            baseline_p50: Some(sqlite_rate),
            goal: None,
        });
        rows.push(Row {
            scenario: "rpc".into(),
            metric: format!("writes per commit, {writers} concurrent writers"),
            unit: "writes".into(),
            p50: batch,
            p99: batch,
            samples: commits as usize,
            baseline: None,
            baseline_p50: None,
            goal: None,
        });
        rows.push(Row {
            scenario: "rpc".into(),
            metric: format!("WAL pages per write, {writers} concurrent writers"),
            unit: "pages".into(),
            p50: pages,
            p99: pages,
            samples: carried as usize,
            baseline: None,
            baseline_p50: None,
            goal: None,
        });
        let done = (writes / writers).max(1) * writers;
        let primary_ns = primary_cpu.all_since(&primary_before);
        let writers_ns = own_cpu.saturating_sub(own_before);
        rows.push(cpu_row(
            &format!("primary CPU per write (all threads), {writers} concurrent writers"),
            primary_ns,
            done,
        ));
        rows.push(cpu_row(
            &format!("the writers' own CPU per write (this process), {writers} concurrent writers"),
            writers_ns,
            done,
        ));
        // Every write costs the primary and its writer CPU on the same
        // cores: at this run's CPU per write, the rate all the machine's
        // cores kept busy all the time would reach. A goal above it needs
        // less CPU per write, not a better pipeline.
        let cpu_bound = cores as f64 * 1e9 * done as f64 / (primary_ns + writers_ns).max(1) as f64;
        rows.push(Row {
            scenario: "rpc".into(),
            metric: format!("{metric}: the most its CPU per write allows on {cores} cores"),
            unit: "writes/s".into(),
            p50: cpu_bound,
            p99: cpu_bound,
            samples: done,
            baseline: Some("raw SQLite, one row per commit".into()),
            baseline_p50: Some(sqlite_rate),
            goal: None,
        });
        // The raw loop has a core to itself; the primary shares two with
        // the writers. Writes per second of the primary's own CPU time is
        // the rate it would reach with a core to itself and the clients
        // elsewhere.
        let per_core = done as f64 / (primary_ns.max(1) as f64 / 1e9);
        rows.push(Row {
            scenario: "rpc".into(),
            metric: format!("{metric}, per second of the primary's CPU"),
            unit: "writes/s".into(),
            p50: per_core,
            p99: per_core,
            samples: done,
            baseline: Some("raw SQLite, one row per commit".into()),
            baseline_p50: Some(sqlite_rate),
            goal: None,
        });
    }
    rows.push(cpu_row(
        &format!("store thread CPU per write, fed in process ({CEILING_BATCH} in flight)"),
        alone.cpu_ns,
        n,
    ));
    Ok(rows)
}

/// The primary's counters, as `ping` reports them.
async fn counters(
    client: &mut crate::client::Client,
) -> Result<crate::protocol::PrimaryInfo, String> {
    crate::client::ping(client).await.map_err(|e| e.to_string())
}

/// Writes per commit of the store-ceiling baseline: about what the store
/// thread batches when 16 writers keep it busy.
const CEILING_BATCH: usize = 16;
/// Enough writes for the ceiling's rate to be stable.
const MIN_CEILING_WRITES: usize = 20_000;

/// The store's own ceiling, in writes/s: SQLite writing the rows of the
/// pending `task.create`s the writers send, through grove's schema and
/// statements, `CEILING_BATCH` to a commit (the most that 16 writers with
/// one write each in flight can put in one), in a tight loop in this
/// process with the checkpointer beside it: no sockets, channels,
/// decoding, ledger look-up or admission (see `store::ceiling`).
fn store_ceiling(writes: usize) -> Result<Measured, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let before = ThreadCpu::own_process();
    let measured =
        crate::store::ceiling::rows_rate(&dir.path().join("grove.db"), writes, CEILING_BATCH)
            .map_err(|e| e.to_string())?;
    Ok(Measured {
        rate: measured.rate,
        cpu_ns: ThreadCpu::own_process().saturating_sub(before) as f64 / writes.max(1) as f64,
    })
}

/// A baseline's rate and the CPU it spent on this machine's cores per
/// operation (all of this process's threads: the baselines run here alone).
struct Measured {
    rate: f64,
    cpu_ns: f64,
}

/// What grove's own store thread does alone: [`store_thread_alone`].
struct StoreAlone {
    rate: f64,
    per_commit: f64,
    /// CPU of the store thread and its checkpointer over all the writes.
    cpu_ns: u64,
}

/// grove's store thread, schema and write path by themselves: the same
/// pending `task.create` as the clients send, queued straight onto the
/// thread's channel from this process with `CEILING_BATCH` in flight (a
/// new one as each is answered), so no socket, decoding, event loop or
/// client stands between. Between it and the throughputs beside it is what
/// the pipeline costs; between it and the store's ceiling, what grove's
/// write path costs beyond SQLite's three inserts (the admission is the
/// only part left out: it reads the configuration).
fn store_thread_alone(writes: usize) -> Result<StoreAlone, String> {
    use crate::protocol::{Method, NewTask, ReplyBody};
    use crate::store::writer::{self, Job, ReplyTo};
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let won = crate::store::promotions::LockWon {
        at: crate::protocol::now_ms(),
        heard: None,
    };
    let db = dir.path().join("grove.db");
    let promotion = writer::promote(&db, "bench", std::process::id(), 0, &won, &|| true)
        .map_err(|e| e.to_string())?;
    let (events_tx, mut events_rx) = tokio::sync::mpsc::channel(4096);
    let drain = std::thread::spawn(move || while events_rx.blocking_recv().is_some() {});
    let defaults = crate::config::Config::default();
    let retention = writer::Retention {
        events: defaults.event_retention,
        ledger_ms: defaults.ledger_retention_hours * 3_600_000,
    };
    let store = writer::spawn(
        promotion,
        events_tx,
        retention,
        Box::new(|| true),
        Box::new(|_, _| Ok(writer::Limits::default())),
    )
    .map_err(|e| e.to_string())?;
    let send = |method: Method| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job::Write {
            request_id: crate::client::new_request_id(),
            from: "bench".into(),
            method,
            digest: 0,
            reply: ReplyTo::Waiter(tx),
        };
        store
            .jobs
            .send(job)
            .map(|_| rx)
            .map_err(|_| "the store thread stopped".to_string())
    };
    let answer = |rx: tokio::sync::oneshot::Receiver<writer::WriteResult>| match rx.blocking_recv()
    {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the store thread dropped a write".to_string()),
    };
    let blocker = match answer(send(Method::TaskCreate(NewTask {
        prompt: "sleep 3600".into(),
        engine: Some("shell".into()),
        ..Default::default()
    }))?)? {
        ReplyBody::Task(t) => t.id,
        other => return Err(format!("unexpected reply {other:?}")),
    };
    let pending = || {
        Method::TaskCreate(NewTask {
            prompt: "bench write".into(),
            engine: Some("shell".into()),
            tags: vec!["bench".into()],
            dependencies: vec![blocker.clone()],
            ..Default::default()
        })
    };
    let before = writer::commit_counts();
    let cpu_before = ThreadCpu::of(std::process::id());
    let started = Instant::now();
    let mut in_flight = std::collections::VecDeque::with_capacity(CEILING_BATCH);
    for _ in 0..CEILING_BATCH.min(writes) {
        in_flight.push_back(send(pending())?);
    }
    let mut sent = in_flight.len();
    while let Some(rx) = in_flight.pop_front() {
        answer(rx)?;
        if sent < writes {
            in_flight.push_back(send(pending())?);
            sent += 1;
        }
    }
    let rate = writes as f64 / started.elapsed().as_secs_f64();
    let after = writer::commit_counts();
    let cpu = ThreadCpu::of(std::process::id());
    let cpu_ns = cpu.since(&cpu_before, "grove-store") + cpu.since(&cpu_before, "grove-checkpoint");
    store.join();
    let _ = drain.join();
    let commits = after.commits.saturating_sub(before.commits).max(1);
    let per_commit = after.writes.saturating_sub(before.writes) as f64 / commits as f64;
    Ok(StoreAlone {
        rate,
        per_commit,
        cpu_ns,
    })
}

async fn wait_ready(client: &mut crate::client::Client) -> Result<(), String> {
    crate::client::wait_for_primary(client, Duration::from_secs(30))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn write(client: &mut crate::client::Client, blocker: &str) -> Result<(), String> {
    super::pending_write(client, blocker).await
}

/// Writes/s with `writers` clients, each in its own thread and runtime (as
/// separate windows would be), sharing `total` writes.
async fn throughput(
    c: &LocalCluster,
    writers: usize,
    total: usize,
    blocker: &str,
) -> Result<f64, String> {
    let per = (total / writers).max(1);
    let started = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let mut client = c.client(&format!("bench-writer-{w}"));
            let blocker = blocker.to_string();
            super::on_own_thread(async move {
                for _ in 0..per {
                    write(&mut client, &blocker).await?;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "writer thread panicked")???;
    }
    Ok((per * writers) as f64 / started.elapsed().as_secs_f64())
}

/// A bare ROUTER echo on an ipc socket, in its own thread and runtime (as
/// the primary's event loop is), echoing exactly `total` messages: a
/// "stop" message could sit unsent in a client's queue while the client
/// joins us.
struct EchoServer {
    endpoint: String,
    done: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<Result<(), String>>,
    _dir: tempfile::TempDir,
}

/// The echoed payload: about a request's size.
const ECHO_PAYLOAD: usize = 200;

impl EchoServer {
    fn start(total: usize) -> Result<EchoServer, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let endpoint = format!("ipc://{}", dir.path().join("echo.sock").display());
        let server_endpoint = endpoint.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done, done_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = super::on_own_thread(async move {
            let mut router = zeromq::RouterSocket::new();
            if router.bind(&server_endpoint).await.is_err() {
                return;
            }
            let _ = ready_tx.send(());
            for _ in 0..total {
                let Ok(msg) = router.recv().await else { return };
                if router.send(msg).await.is_err() {
                    return;
                }
            }
            // Keep the runtime (and so the last reply's write) alive until
            // the clients have read everything.
            let _ = done_rx.await;
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| "echo server did not start")?;
        Ok(EchoServer {
            endpoint,
            done,
            thread,
            _dir: dir,
        })
    }

    async fn connect(endpoint: &str) -> Result<zeromq::DealerSocket, String> {
        let mut dealer = zeromq::DealerSocket::new();
        dealer.connect(endpoint).await.map_err(|e| e.to_string())?;
        Ok(dealer)
    }

    async fn stop(self) {
        let _ = self.done.send(());
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

async fn echo_once(dealer: &mut zeromq::DealerSocket) -> Result<(), String> {
    let payload = vec![0u8; ECHO_PAYLOAD];
    dealer
        .send(zeromq::ZmqMessage::from(payload))
        .await
        .map_err(|e| e.to_string())?;
    dealer.recv().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Round trips of a bare DEALER→ROUTER echo (after 50 unmeasured ones).
async fn raw_echo(n: usize) -> Result<Vec<f64>, String> {
    let server = EchoServer::start(n + 50)?;
    let mut dealer = EchoServer::connect(&server.endpoint).await?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 50 {
        let t = Instant::now();
        echo_once(&mut dealer).await?;
        if i >= 50 {
            out.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    drop(dealer);
    server.stop().await;
    Ok(out)
}

/// The transport's own ceiling for `writers` concurrent writers: round
/// trips/s of the bare echo with that many clients, each on its own thread
/// and runtime as the bench's writers are, sharing `total` round trips.
/// Every grove write costs at least one such round trip, on the same cores.
async fn raw_echo_rate(writers: usize, total: usize) -> Result<Measured, String> {
    let per = (total / writers).max(1);
    let server = EchoServer::start(per * writers)?;
    let cpu_before = ThreadCpu::own_process();
    let started = Instant::now();
    let clients: Vec<_> = (0..writers)
        .map(|_| {
            let endpoint = server.endpoint.clone();
            super::on_own_thread(async move {
                let mut dealer = EchoServer::connect(&endpoint).await?;
                for _ in 0..per {
                    echo_once(&mut dealer).await?;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for c in clients {
        c.join().map_err(|_| "echo client panicked")???;
    }
    let rate = (per * writers) as f64 / started.elapsed().as_secs_f64();
    let cpu_ns = ThreadCpu::own_process().saturating_sub(cpu_before) as f64;
    server.stop().await;
    Ok(Measured {
        rate,
        cpu_ns: cpu_ns / (per * writers) as f64,
    })
}

/// Durations (ms) of single-row autocommit inserts with grove's pragmas.
fn raw_commits(n: usize) -> Result<Vec<f64>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let conn = rusqlite::Connection::open(dir.path().join("raw.db")).map_err(|e| e.to_string())?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .and_then(|_| conn.pragma_update(None, "synchronous", "NORMAL"))
        .and_then(|_| {
            conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        })
        .map_err(|e| e.to_string())?;
    let payload = vec![7u8; 200];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        conn.execute("INSERT INTO t (payload) VALUES (?1)", [&payload])
            .map_err(|e| e.to_string())?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

//! Misbehaving peers: a client that connects and says nothing, one that
//! sends 10,000 requests and never reads a reply, one that floods garbage.
//! The primary must keep serving everyone else, log boundedly, and keep its
//! memory bounded (documented in README: 1,000 queued replies and 4 MiB
//! of them per non-reading peer at most, 64 MiB for all, 32 MiB of
//! unanswered writes, 8 MiB of them from one client).

mod common;

use common::*;
use zeromq::{Socket, SocketRecv, SocketSend};

#[test]
fn flooding_and_silent_peers_do_not_stop_the_primary() {
    let mut g = Grove::new();
    let i = g.serve();
    let (pid, _) = g.wait_primary();
    let status = g.status();
    let rpc = status["primary"]["rpc_endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let count = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains("refusing a request")
                    || l.contains("wrong shape")
                    || l.contains("more bad requests")
            })
            .count()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Connects and never sends.
        let mut silent = zeromq::DealerSocket::new();
        silent.connect(&rpc).await.unwrap();
        // 10,000 valid pings, replies never read.
        let mut deaf = zeromq::DealerSocket::new();
        deaf.connect(&rpc).await.unwrap();
        for n in 0..10_000u32 {
            let ping = rmp_serde::to_vec_named(&grove::protocol::Request {
                v: 1,
                id: format!("deaf-{n}"),
                from: "deaf".into(),
                epoch_seen: 0,
                method: grove::protocol::Method::Ping {},
            })
            .unwrap();
            deaf.send(ping.into()).await.unwrap();
        }
        // Garbage of every shape: random bytes, empty frames, multi-frame.
        let mut noisy = zeromq::DealerSocket::new();
        noisy.connect(&rpc).await.unwrap();
        for n in 0..200_000u32 {
            let junk: Vec<u8> = n
                .to_le_bytes()
                .iter()
                .cycle()
                .take(8 + (n % 64) as usize)
                .copied()
                .collect();
            let msg = match n % 3 {
                0 => zeromq::ZmqMessage::from(junk),
                1 => zeromq::ZmqMessage::from(Vec::<u8>::new()),
                _ => {
                    let mut m = zeromq::ZmqMessage::from(junk);
                    m.push_back(bytes::Bytes::from_static(b"extra"));
                    m
                }
            };
            noisy.send(msg).await.unwrap();
        }
        // Keep this runtime turning until the primary has worked through
        // the garbage: the sockets flush their queues from its tasks.
        let until = std::time::Instant::now() + DEADLINE;
        while count(&g.members[i].stderr()) == 0 {
            assert!(
                std::time::Instant::now() < until,
                "bad frames never reached the primary"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Everyone else is still served while the bad peers stay connected.
        let id = g.task_create("echo served");
        let shown = g.ok(&["show", &id, "--json"]);
        assert!(shown.contains("echo served"));
        assert_eq!(g.status()["state"], "ok");
        drop((silent, deaf, noisy));
    });
    let rss = rss_kib(pid);
    assert!(
        rss > 0 && rss < 256 * 1024,
        "primary RSS {rss} KiB after the flood"
    );
    // Bad frames are logged (once the primary has worked through its
    // queue), but not one line each.
    let lines = count(&g.members[i].stderr());
    assert!(lines < 2_000, "{lines} log lines for 200,000 bad frames");
}

/// A client that pipelines writes and never reads a reply, while the store
/// is slow: the primary takes requests only up to its share of the write
/// budget (8 of 32 MiB) and then leaves the rest in the client's queue, instead of holding every
/// one of them (320 MB here); what it took is applied once the store
/// catches up, and it serves again.
#[test]
fn pipelined_writes_wait_for_the_store_within_the_write_budget() {
    let mut g = Grove::new();
    let i = g.serve();
    let (pid, _) = g.wait_primary();
    let rpc = g.rpc_endpoint();
    let blocker = g.ok(&["spawn", "sleep 600"]);
    let release = g.dir.path().join("release-the-store");
    let before = rss_kib(pid);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (sent, peak) = rt.block_on(async {
        let holder = hold_store(&rpc, &blocker, &release).await;
        let (flood, sent) = flood_until_held_up(&rpc, &blocker, 40_000).await;
        let peak = rss_kib(pid);
        std::fs::write(&release, b"").unwrap();
        drop((holder, flood));
        (sent, peak)
    });
    let grown_mib = peak.saturating_sub(before) / 1024;
    eprintln!("the flood: {sent} writes sent, the primary grew by {grown_mib} MiB");
    assert!(
        grown_mib < 160,
        "the primary grew by {grown_mib} MiB holding a flood of {sent} writes of 8 KiB"
    );
    assert!(
        sent < 40_000,
        "the primary took all {sent} writes while its store was held"
    );
    assert!(
        g.members[i].stderr().contains("wait for the store"),
        "the primary did not say why it stopped taking requests"
    );
    // It serves again, and what it took was applied.
    let id = g.task_create("echo served after the flood");
    assert!(
        g.ok(&["show", &id, "--json"])
            .contains("served after the flood")
    );
    let flood = grove::store::TaskFilter {
        tag: Some("flood".into()),
        ..Default::default()
    };
    let applied = g.db().tasks(&flood).unwrap().len();
    // Its share holds ~950 of these 8.7 KiB writes.
    assert!(
        applied > 500,
        "only {applied} of the flood's writes were applied"
    );
}

/// A raw request frame, as a client sends it.
fn frame(n: usize, method: grove::protocol::Method) -> Vec<u8> {
    rmp_serde::to_vec_named(&grove::protocol::Request {
        v: 1,
        id: format!("flood-{n}"),
        from: "flood".into(),
        epoch_seen: 0,
        method,
    })
    .unwrap()
}

/// A `task.create` tagged `flood`, waiting on `blocker` (it never runs).
fn flood_create(blocker: &str, prompt: String) -> grove::protocol::Method {
    grove::protocol::Method::TaskCreate(grove::protocol::NewTask {
        prompt,
        tags: vec!["flood".into()],
        dependencies: vec![blocker.to_string()],
        ..Default::default()
    })
}

/// Holds the primary's store thread until `release` exists (a create the
/// store thread stops at, `test_hooks::HOLD_STORE_PROMPT`); the returned
/// socket sent it.
async fn hold_store(rpc: &str, blocker: &str, release: &std::path::Path) -> zeromq::DealerSocket {
    let mut holder = zeromq::DealerSocket::new();
    holder.connect(rpc).await.unwrap();
    let hold = format!(
        "{}{}",
        grove::test_hooks::HOLD_STORE_PROMPT,
        release.display()
    );
    holder
        .send(frame(0, flood_create(blocker, hold)).into())
        .await
        .unwrap();
    holder
}

/// One client pipelining up to `most` 8 KiB `task.create`s without reading
/// an answer, until a send stays blocked for 3 s (the primary stopped
/// taking its requests). The client, and how many it sent.
async fn flood_until_held_up(
    rpc: &str,
    blocker: &str,
    most: usize,
) -> (zeromq::DealerSocket, usize) {
    let mut flood = zeromq::DealerSocket::new();
    flood.connect(rpc).await.unwrap();
    let prompt = "x".repeat(8 * 1024);
    let mut sent = 0;
    for n in 1..=most {
        let send = flood.send(frame(n, flood_create(blocker, prompt.clone())).into());
        match tokio::time::timeout(std::time::Duration::from_secs(3), send).await {
            Ok(r) => r.unwrap(),
            Err(_) => break,
        }
        sent += 1;
    }
    (flood, sent)
}

/// One client pipelining writes gets a quarter of the write budget: past
/// that the primary stops taking its requests only, and keeps serving
/// everyone else. Before, its flood took the whole budget while the store
/// was slow, and nobody else was answered (not even a ping) until the
/// store caught up.
#[test]
fn one_pipelining_client_does_not_hold_the_others_up() {
    let mut g = Grove::new();
    g.serve();
    g.wait_primary();
    let rpc = g.rpc_endpoint();
    let blocker = g.ok(&["spawn", "sleep 600"]);
    let release = g.dir.path().join("release-the-store");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (sent, ponged) = rt.block_on(async {
        let holder = hold_store(&rpc, &blocker, &release).await;
        let (flood, sent) = flood_until_held_up(&rpc, &blocker, 20_000).await;
        // The store is still held: only a primary that takes the others'
        // requests meanwhile can answer this.
        let mut other = zeromq::DealerSocket::new();
        other.connect(&rpc).await.unwrap();
        let ping = frame(30_000, grove::protocol::Method::Ping {});
        other.send(ping.into()).await.unwrap();
        let ponged = tokio::time::timeout(std::time::Duration::from_secs(10), other.recv())
            .await
            .is_ok();
        std::fs::write(&release, b"").unwrap();
        drop((holder, flood, other));
        (sent, ponged)
    });
    eprintln!("the flood: {sent} writes sent before the primary stopped taking them");
    assert!(
        sent < 20_000,
        "the primary took all {sent} writes while its store was held"
    );
    assert!(
        ponged,
        "another client's ping was not answered while one client's {sent} writes waited for the store"
    );
    // Everything it took is applied once the store is free.
    let id = g.task_create("echo served after the flood");
    assert!(
        g.ok(&["show", &id, "--json"])
            .contains("served after the flood")
    );
}

/// The budget is given back when a write's answer reaches the reply task,
/// but the answer to a `task.create` carries its prompt: clients that
/// pipeline big creates (here the same one, replayed from the ledger, so
/// the store barely grows) and never read have each answer parked in
/// their peer's send queue, 1,000 deep whatever their size. The primary
/// should not hold much more than the budget for them.
#[test]
fn replies_a_client_never_reads_are_bounded_in_bytes_too() {
    let grown_mib = deaf_replays(4, 1_000);
    assert!(
        grown_mib < 160,
        "the primary grew by {grown_mib} MiB for clients that do not read"
    );
}

/// Many connections that do not read, each under its own 4 MiB: together
/// they are held to the primary's bound for all replies (64 MiB), and a
/// client that reads is still answered.
#[test]
fn replies_many_clients_never_read_are_bounded_together() {
    let grown_mib = deaf_replays(40, 40);
    assert!(
        grown_mib < 120,
        "the primary grew by {grown_mib} MiB for 40 clients that do not read"
    );
}

/// `peers` connections each send `each` replays of one 100 KiB create and
/// read nothing: how many MiB the primary grew meanwhile, at its peak.
fn deaf_replays(peers: usize, each: usize) -> u64 {
    let mut g = Grove::new();
    g.serve();
    let (pid, _) = g.wait_primary();
    let rpc = g.rpc_endpoint();
    let blocker = g.ok(&["spawn", "sleep 600"]);
    let request = rmp_serde::to_vec_named(&grove::protocol::Request {
        v: 1,
        id: "big-replayed".into(),
        from: "deaf".into(),
        epoch_seen: 0,
        method: grove::protocol::Method::TaskCreate(grove::protocol::NewTask {
            // Below the 128 KiB an exec argument may have.
            prompt: "x".repeat(100 * 1024),
            dependencies: vec![blocker.clone()],
            ..Default::default()
        }),
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (before, peak) = rt.block_on(async {
        // Applied once, its answer read: the rest are replays.
        let mut first = zeromq::DealerSocket::new();
        first.connect(&rpc).await.unwrap();
        first.send(request.clone().into()).await.unwrap();
        let reply = zeromq::SocketRecv::recv(&mut first).await.unwrap();
        let reply_len = reply.iter().last().unwrap().len();
        assert!(reply_len > 100 * 1024, "a reply of {reply_len} bytes");
        let before = rss_kib(pid);
        let mut deaf = Vec::new();
        for _ in 0..peers {
            let mut d = zeromq::DealerSocket::new();
            d.connect(&rpc).await.unwrap();
            for _ in 0..each {
                d.send(request.clone().into()).await.unwrap();
            }
            deaf.push(d);
        }
        let mut peak = 0;
        for _ in 0..60 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            peak = peak.max(rss_kib(pid));
        }
        // A client that reads its answers is still answered, however much
        // the others hold, even with an answer as big as theirs (the room
        // left under the bound for all is less than one of them).
        let prompt = format!("answered beside the deaf {}", "y".repeat(100 * 1024));
        let id = g.task_create(&prompt);
        assert!(g.ok(&["show", &id, "--json"]).contains("beside the deaf"));
        drop(deaf);
        (before, peak)
    });
    let grown_mib = peak.saturating_sub(before) / 1024;
    eprintln!(
        "{peers} x {each} replayed 100 KiB creates, never read: the primary grew by {grown_mib} MiB"
    );
    grown_mib
}

//! Misbehaving peers: a client that connects and says nothing, one that
//! sends 10,000 requests and never reads a reply, one that floods garbage.
//! The primary must keep serving everyone else, log boundedly, and keep its
//! memory bounded (documented in README: about 100,000 queued replies per
//! non-reading peer at most).

mod common;

use common::*;
use zeromq::{Socket, SocketSend};

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

//! Failover: SIGKILL the primary and time (a) until a client's write is
//! acknowledged by the new primary and (b) until every surviving secondary
//! has re-registered (its own write acknowledged) with the new primary —
//! beside the raw kernel flock handoff between two processes.

use super::Row;
use super::stats::{monotonic_ns, ms_between, quantile};
use crate::local_cluster::LocalCluster;
use crate::protocol::{EventData, now_ms};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub async fn run(secondaries: usize, kills: usize) -> Result<Vec<Row>, String> {
    let secondaries = secondaries.max(1);
    let mut c = LocalCluster::new()?;
    c.spawn_member()?;
    let mut client = c.client("bench-failover");
    let (mut pid, mut epoch) = primary(&mut client).await?;
    for _ in 0..secondaries {
        c.spawn_member()?;
    }
    c.wait_registered(secondaries, epoch, pid).await?;
    let blocker = super::blocker(&mut client).await?;

    let mut to_write = Vec::new();
    let mut to_all = Vec::new();
    for _ in 0..kills {
        // Warm: the client is connected and probed, as a running window is.
        super::pending_write(&mut client, &blocker).await?;
        let t0 = monotonic_ns();
        let t0_wall = now_ms();
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        super::pending_write(&mut client, &blocker).await?;
        to_write.push(ms_between(t0, monotonic_ns()));
        c.reap();
        let (new_pid, new_epoch) = primary(&mut client).await?;
        if new_epoch != epoch + 1 {
            return Err(format!(
                "expected one promotion (epoch {}), got epoch {new_epoch}",
                epoch + 1
            ));
        }
        // Every survivor re-registers with a write of its own (`hello`).
        c.wait_registered(secondaries - 1, new_epoch, new_pid)
            .await?;
        to_all.push(last_join_ms(&c, new_epoch, t0_wall)?);
        (pid, epoch) = (new_pid, new_epoch);
        c.spawn_member()?;
        c.wait_registered(secondaries, epoch, pid).await?;
    }
    super::release(&mut client, &blocker).await;
    let flock = flock_handoffs(kills)?;
    let flock_p50 = quantile(&flock, 0.5);
    let baseline = Some("raw flock handoff (kill -9 → waiter)".to_string());
    Ok(vec![
        Row {
            scenario: "failover".into(),
            metric: "kill -9 → new primary accepts a write".into(),
            unit: "ms".into(),
            p50: quantile(&to_write, 0.5),
            p99: quantile(&to_write, 0.99),
            samples: to_write.len(),
            baseline: baseline.clone(),
            baseline_p50: Some(flock_p50),
            goal: Some("p50 ≤ 20 ms".into()),
        },
        Row {
            scenario: "failover".into(),
            metric: format!("kill -9 → all {} secondaries write", secondaries - 1),
            unit: "ms".into(),
            p50: quantile(&to_all, 0.5),
            p99: quantile(&to_all, 0.99),
            samples: to_all.len(),
            baseline,
            baseline_p50: Some(flock_p50),
            goal: Some("p50 ≤ 100 ms".into()),
        },
        Row {
            scenario: "failover".into(),
            metric: "raw flock handoff".into(),
            unit: "ms".into(),
            p50: flock_p50,
            p99: quantile(&flock, 0.99),
            samples: flock.len(),
            baseline: None,
            baseline_p50: None,
            goal: None,
        },
    ])
}

async fn primary(client: &mut crate::client::Client) -> Result<(u32, u64), String> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match crate::client::ping(client).await {
            Ok(info) => return Ok((info.pid, info.epoch)),
            Err(e) if Instant::now() > until => return Err(e.to_string()),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Milliseconds from the kill to the last `instance.joined` of `epoch`,
/// using the events' commit timestamps (1 ms resolution).
fn last_join_ms(c: &LocalCluster, epoch: u64, t0_wall: u64) -> Result<f64, String> {
    let reader = crate::store::Reader::open(&c.ws.db_path()).map_err(|e| e.to_string())?;
    let events = reader
        .events_from(1, usize::MAX >> 1)
        .map_err(|e| e.to_string())?;
    let last = events
        .iter()
        .filter(|e| e.epoch == epoch && matches!(e.data, EventData::InstanceJoined { .. }))
        .map(|e| e.at)
        .max()
        .ok_or("no secondary re-registered")?;
    Ok(last.saturating_sub(t0_wall) as f64)
}

/// Times the kernel's lock handoff alone: a holder is SIGKILLed while a
/// waiter blocks in `flock`; the waiter stamps the moment it gets the lock.
fn flock_handoffs(rounds: usize) -> Result<Vec<f64>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("bench.lock");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for _ in 0..rounds {
        let mut holder = Command::new(&exe)
            .args(["bench-flock", "hold"])
            .arg(&path)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut holder_out = BufReader::new(holder.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        holder_out.read_line(&mut line).map_err(|e| e.to_string())?;
        let mut waiter = Command::new(&exe)
            .args(["bench-flock", "wait"])
            .arg(&path)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut waiter_out = BufReader::new(waiter.stdout.take().ok_or("no stdout")?);
        line.clear();
        waiter_out.read_line(&mut line).map_err(|e| e.to_string())?; // "waiting"
        // Wait until the waiter sleeps in the flock syscall.
        let until = Instant::now() + Duration::from_secs(5);
        while crate::proc::state(waiter.id()) != Some('S') && Instant::now() < until {
            std::thread::yield_now();
        }
        let t0 = monotonic_ns();
        let _ = holder.kill();
        line.clear();
        waiter_out.read_line(&mut line).map_err(|e| e.to_string())?;
        let got: u64 = line
            .trim()
            .parse()
            .map_err(|_| format!("bad waiter output {line:?}"))?;
        out.push(ms_between(t0, got));
        let _ = holder.wait();
        let _ = waiter.wait();
    }
    Ok(out)
}

/// `grove bench-flock hold|wait PATH`: the two sides of the flock baseline.
pub fn flock_helper(mode: &str, path: &std::path::Path) -> i32 {
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("grove bench-flock: {e}");
            return 2;
        }
    };
    let mut stdout = std::io::stdout();
    match mode {
        "hold" => {
            if file.lock().is_err() {
                return 1;
            }
            let _ = writeln!(stdout, "locked");
            let _ = stdout.flush();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "wait" => {
            let _ = writeln!(stdout, "waiting");
            let _ = stdout.flush();
            if file.lock().is_err() {
                return 1;
            }
            let _ = writeln!(stdout, "{}", monotonic_ns());
            0
        }
        _ => {
            eprintln!("grove bench-flock: mode is hold or wait");
            2
        }
    }
}

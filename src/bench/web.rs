//! The web board: spawn → the task on the page's event stream (the
//! server-sent event a page turns into a row), beside spawn → the same
//! `task.created` on the bus, read by a subscriber in the same run. The
//! stream is read over a plain socket as a page's `EventSource` reads it;
//! the browser's own rendering is not in the figure.

use super::Row;
use super::stats::quantile;
use crate::local_cluster::LocalCluster;
use crate::protocol::{EventData, Method, NewTask, ReplyBody};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

pub async fn run(spawns: usize) -> Result<Vec<Row>, String> {
    let mut c = LocalCluster::with_config("web = true\n")?;
    c.spawn_member()?;
    let mut client = c.client("bench-web");
    crate::client::wait_for_primary(&mut client, Duration::from_secs(30))
        .await
        .map_err(|e| format!("no primary: {e}"))?;
    let first = crate::store::Reader::open(&c.ws.db_path())
        .and_then(|r| r.last_seq())
        .map_err(|e| e.to_string())?
        + 1;
    let mut page = open_stream(&c, first).await?;
    let mut bus = crate::subscriber::subscribe(&c.ws, first);
    let (mut on_page, mut on_bus) = (Vec::new(), Vec::new());
    for _ in 0..spawns {
        let task = NewTask {
            prompt: "true".into(),
            ..Default::default()
        };
        let sent = Instant::now();
        let id = match client.call(Method::TaskCreate(task)).await {
            Ok(ReplyBody::Task(t)) => t.id,
            Ok(other) => return Err(format!("unexpected reply {other:?}")),
            Err(e) => return Err(e.to_string()),
        };
        let (mut page_ms, mut bus_ms) = (None, None);
        let until = tokio::time::Instant::now() + WAIT;
        while page_ms.is_none() || bus_ms.is_none() {
            tokio::select! {
                // (`next_line` is cancel safe: a line half read is kept)
                line = page.next_line(), if page_ms.is_none() => {
                    let line = line
                        .map_err(|e| e.to_string())?
                        .ok_or("the board closed its event stream")?;
                    if line.starts_with("data:") && line.contains("task.created") && line.contains(&id) {
                        page_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                event = bus.events.recv(), if bus_ms.is_none() => {
                    let event = event.ok_or("the event stream ended")?;
                    if matches!(&event.data, EventData::TaskCreated { task } if task.id == id) {
                        bus_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                _ = tokio::time::sleep_until(until) => {
                    return Err(format!("task {id} did not reach the page within {WAIT:?}"));
                }
            }
        }
        on_page.extend(page_ms);
        on_bus.extend(bus_ms);
    }
    Ok(vec![Row {
        scenario: "web".into(),
        metric: "spawn → on the board's event stream".into(),
        unit: "ms".into(),
        p50: quantile(&on_page, 0.5),
        p99: quantile(&on_page, 0.99),
        samples: on_page.len(),
        baseline: Some("spawn → task.created on the bus".into()),
        baseline_p50: Some(quantile(&on_bus, 0.5)),
        goal: None,
    }])
}

/// How long one spawn may take to reach the page.
const WAIT: Duration = Duration::from_secs(30);

/// `GET /api/events` with the token, as the board's page opens it, once
/// the primary serves the board (it stores the port when it starts it).
async fn open_stream(
    c: &LocalCluster,
    first: u64,
) -> Result<tokio::io::Lines<BufReader<tokio::net::TcpStream>>, String> {
    let until = Instant::now() + WAIT;
    loop {
        let port = crate::web::Settings::read(&c.ws).port;
        let token = crate::web::token(&c.ws)?;
        if port != 0
            && let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
        {
            let ask = format!(
                "GET /api/events?since={first} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Grove-Token: {token}\r\nAccept: text/event-stream\r\n\r\n"
            );
            s.write_all(ask.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut lines = BufReader::new(s).lines();
            let status = lines
                .next_line()
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            if status.starts_with("HTTP/1.1 200") {
                return Ok(lines);
            }
            // A board that starts cold makes a new token once its port is
            // bound: the one read above may be the last one. Read again.
            if !status.starts_with("HTTP/1.1 401") || Instant::now() > until {
                return Err(format!("the board refused the event stream: {status}"));
            }
        }
        if Instant::now() > until {
            return Err(format!("the board did not come up within {WAIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

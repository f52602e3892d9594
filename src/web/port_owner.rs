//! Who listens on a loopback port: read from the kernel's socket tables
//! (`/proc/net/tcp`, `/proc/net/tcp6`), so that the board's token is only
//! ever sent to a listener of our own user (see docs/design.md, Web board).
//! The port is stored and reused; while no primary serves it, another user
//! may bind it, and a probe that sent the token there would hand it over.

use std::net::{IpAddr, SocketAddr};

/// The users owning a listening socket on `port`, in either table; empty
/// when nobody listens (or the tables cannot be read).
pub fn listeners(port: u16) -> Vec<u32> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| listening_uids(&text, port))
        .collect()
}

/// Who holds `port`, from one read of the tables.
#[derive(Debug, PartialEq, Eq)]
pub enum Holder {
    Nobody,
    /// Every listener on it is ours.
    Us,
    /// Another user's listener (its uid), whatever else listens.
    Other(u32),
}

pub fn holder(port: u16) -> Holder {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let owners = listeners(port);
    match owners.iter().find(|uid| **uid != me) {
        Some(uid) => Holder::Other(*uid),
        None if owners.is_empty() => Holder::Nobody,
        None => Holder::Us,
    }
}

/// Someone else's listener on `port`, if there is one.
pub fn foreign(port: u16) -> Option<u32> {
    match holder(port) {
        Holder::Other(uid) => Some(uid),
        _ => None,
    }
}

/// The owner of the socket at the other end of each connection the board
/// accepted, as (peer, ours): the row whose local address is the peer's
/// and whose remote address is ours. `None` when no table has it (the peer
/// is gone, the tables cannot be read). Read from `/proc/net/tcp` (a
/// browser's socket to 127.0.0.1) and `/proc/net/tcp6` (a dual-stack
/// socket connecting to the v4-mapped address), each once for all the
/// connections asked: a table lists every TCP socket of the machine, and
/// another user who holds thousands of them open made each read take
/// milliseconds — one read per connection queued the board's own behind
/// their flood.
pub fn peer_uids(asked: &[(SocketAddr, SocketAddr)]) -> Vec<Option<u32>> {
    let mut found = vec![None; asked.len()];
    for (table, six) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        // The rows to look for, in the table's hex form.
        let mut wanted: std::collections::HashMap<(String, String), Vec<usize>> =
            std::collections::HashMap::new();
        for (i, (peer, ours)) in asked.iter().enumerate() {
            if let (None, Some(local), Some(remote)) =
                (found[i], hex_addr(*peer, six), hex_addr(*ours, six))
            {
                wanted.entry((local, remote)).or_default().push(i);
            }
        }
        if wanted.is_empty() {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for (local, remote, uid) in established(&text) {
            let key = (local.to_ascii_uppercase(), remote.to_ascii_uppercase());
            for &i in wanted.get(&key).into_iter().flatten() {
                found[i] = Some(uid);
            }
        }
    }
    found
}

/// The `ESTABLISHED` rows (state `01`) of `table`: local address, remote
/// address, uid. Only that state: a socket its process has closed
/// (`FIN_WAIT`, `TIME_WAIT`) has no owner left and the kernel shows it as
/// root's, so a peer that sent a request and closed at once would pass
/// for root.
fn established(table: &str) -> impl Iterator<Item = (&str, &str, u32)> {
    table.lines().skip(1).filter_map(|row| {
        let mut f = row.split_whitespace();
        let (_, local, remote, state) = (f.next()?, f.next()?, f.next()?, f.next()?);
        let uid = f.nth(3)?.parse().ok()?;
        (state == "01").then_some((local, remote, uid))
    })
}

/// An address as the kernel's tables print it: the IP's 32-bit words in
/// this machine's byte order, `%08X` each, then `:%04X` of the port. An
/// IPv4 address in the IPv6 table is the v4-mapped one. `None`: an IPv6
/// address asked of the IPv4 table.
fn hex_addr(addr: SocketAddr, six: bool) -> Option<String> {
    let octets: Vec<u8> = match (addr.ip(), six) {
        (IpAddr::V4(v4), false) => v4.octets().to_vec(),
        (IpAddr::V4(v4), true) => v4.to_ipv6_mapped().octets().to_vec(),
        (IpAddr::V6(v6), true) => v6.octets().to_vec(),
        (IpAddr::V6(v6), false) => v6.to_ipv4_mapped()?.octets().to_vec(),
    };
    let mut text: String = octets
        .chunks(4)
        .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
        .collect();
    text.push_str(&format!(":{:04X}", addr.port()));
    Some(text)
}

/// The uids of the `LISTEN` rows (state `0A`) of one table whose local
/// port is `port` on an address a connection to 127.0.0.1 reaches. A row:
/// `sl local_address rem_address st tx:rx tr:when retrnsmt uid ...`, the
/// address `HEX_IP:HEX_PORT`.
fn listening_uids(table: &str, port: u16) -> Vec<u32> {
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let f: Vec<&str> = row.split_whitespace().collect();
            let (local, state, uid) = (f.get(1)?, f.get(3)?, f.get(7)?);
            let (ip, hex_port) = local.rsplit_once(':')?;
            let local_port = u16::from_str_radix(hex_port, 16).ok()?;
            (local_port == port && *state == "0A" && reaches_loopback(ip))
                .then(|| uid.parse().ok())
                .flatten()
        })
        .collect()
}

/// Whether a listener on `ip` (the kernel's hex, in its byte order) takes
/// connections to 127.0.0.1: that address itself, the wildcard, and their
/// IPv6 forms (`::` is dual-stack unless set otherwise; the v4-mapped
/// 127.0.0.1). A listener on 127.0.0.2 or ::1 shares the port number but
/// never hears the board's requests.
fn reaches_loopback(ip: &str) -> bool {
    const REACHING: [&str; 4] = [
        "0100007F",
        "00000000",
        "00000000000000000000000000000000",
        "0000000000000000FFFF00000100007F",
    ];
    REACHING.iter().any(|r| r.eq_ignore_ascii_case(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:B8CF 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:B8CF 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn only_listening_rows_of_the_port_count() {
        // 0xB8CF = 47311: one listener of uid 1000; the connected row of
        // uid 0 on the same port is not a listener.
        assert_eq!(listening_uids(TABLE, 47311), vec![1000]);
        assert_eq!(listening_uids(TABLE, 22), vec![0]);
        assert!(listening_uids(TABLE, 80).is_empty());
        assert!(listening_uids("garbage\nrow without fields", 47311).is_empty());
    }

    #[test]
    fn only_listeners_that_127_0_0_1_reaches_count() {
        let row = |ip: &str| {
            format!(
                "header\n   0: {ip}:B8CF 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1\n"
            )
        };
        for ip in [
            "0100007F",
            "00000000",
            "00000000000000000000000000000000",
            "0000000000000000FFFF00000100007F",
        ] {
            assert_eq!(listening_uids(&row(ip), 47311), vec![1000], "{ip}");
        }
        // 127.0.0.2, ::1, another address of the machine.
        for ip in ["0200007F", "00000000000000000000000001000000", "0A00000A"] {
            assert!(listening_uids(&row(ip), 47311).is_empty(), "{ip}");
        }
    }

    /// The uid of the `ESTABLISHED` row of `table` with exactly these
    /// local and remote addresses (in the tables' hex form).
    fn connection_uid(table: &str, local: &str, remote: &str) -> Option<u32> {
        established(table)
            .find(|(l, r, _)| l.eq_ignore_ascii_case(local) && r.eq_ignore_ascii_case(remote))
            .map(|(_, _, uid)| uid)
    }

    #[test]
    fn a_connections_peer_is_found_by_both_ends() {
        // Row 1 of TABLE: 127.0.0.1:47311 connected to 127.0.0.1:54321
        // (0xD431), uid 0.
        assert_eq!(
            connection_uid(TABLE, "0100007F:B8CF", "0100007F:D431"),
            Some(0)
        );
        assert_eq!(
            connection_uid(TABLE, "0100007F:D431", "0100007F:B8CF"),
            None
        );
        // Closed by its process: shown as root's, and not taken for it.
        let closed = TABLE.replace(" 01 00000000", " 05 00000000");
        assert_eq!(
            connection_uid(&closed, "0100007F:B8CF", "0100007F:D431"),
            None
        );
        let v4: SocketAddr = "127.0.0.1:47311".parse().unwrap();
        assert_eq!(hex_addr(v4, false).unwrap(), "0100007F:B8CF");
        assert_eq!(
            hex_addr(v4, true).unwrap(),
            "0000000000000000FFFF00000100007F:B8CF"
        );
        assert_eq!(hex_addr("[::1]:1".parse().unwrap(), false), None);
    }

    #[test]
    fn the_peer_of_a_real_connection_is_us() {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server_side, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let stranger: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let ours = listener.local_addr().unwrap();
        assert_eq!(
            peer_uids(&[(peer, ours), (stranger, ours), (peer, ours)]),
            [Some(me), None, Some(me)],
            "each asked once, in one read"
        );
        drop(client);
    }

    #[test]
    fn our_own_listener_is_ours() {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(holder(port), Holder::Us);
        assert_eq!(foreign(port), None);
        drop(listener);
        assert_eq!(holder(port), Holder::Nobody);
    }
}

//! Who listens on a loopback port: read from the kernel's socket tables
//! (`/proc/net/tcp`, `/proc/net/tcp6`), so that the board's token is only
//! ever sent to a listener of our own user (see docs/design.md, Web board).
//! The port is stored and reused; while no primary serves it, another user
//! may bind it, and a probe that sent the token there would hand it over.

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

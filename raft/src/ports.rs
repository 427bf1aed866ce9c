//! Ports for the nodes and processes that tests and benchmarks start on 127.0.0.1.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

/// Lowest port [`free_local_port`] hands out: above the registered services most machines run.
const PORT_MIN: u16 = 10_000;

/// A port for a process a test starts, which binds it a moment later: nothing listens on
/// it, no other test of this binary was given it, and it lies below the kernel's range of
/// ephemeral ports (`ip_local_port_range`), so no outgoing connection is given it
/// meanwhile (clusters running side by side make hundreds; a port the OS handed out with
/// `bind(0)` comes from that range). Where the range leaves no room below it, a port the
/// OS hands out. Another process may still bind it first: the test then fails loudly.
pub fn free_local_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let bind = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).ok();
    let ephemeral_min = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
    if ephemeral_min > PORT_MIN {
        let span = u32::from(ephemeral_min - PORT_MIN);
        // Spread over the span by process, so that test binaries run one after another do
        // not reuse each other's ports while the last one's sockets linger.
        let start = std::process::id().wrapping_mul(7_919) % span;
        for step in 0..span {
            let port = PORT_MIN + ((start + step) % span) as u16;
            if !given.contains(&port) && bind(port).is_some() {
                given.insert(port);
                return port;
            }
        }
    }
    let port = bind(0).expect("a free port").local_addr().expect("its address").port();
    given.insert(port);
    port
}

/// `127.0.0.1:`[`free_local_port`].
pub fn free_local_addr() -> String {
    format!("127.0.0.1:{}", free_local_port())
}

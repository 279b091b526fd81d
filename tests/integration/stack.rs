//! The local stack and harmony listen on loopback only: nothing of the test machine is
//! reachable from the network.

use std::time::Duration;

use crate::support::{self, unique, Harmony, HarmonyOptions};

/// Listening TCP sockets as (address bytes as written by the kernel, port), IPv4 and IPv6.
fn listening_sockets() -> Vec<(String, u16)> {
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // st 0A = LISTEN
            if fields.len() > 3 && fields[3] == "0A" {
                if let Some((addr, port)) = fields[1].split_once(':') {
                    sockets.push((addr.to_owned(), u16::from_str_radix(port, 16).unwrap_or(0)));
                }
            }
        }
    }
    sockets
}

/// 127.0.0.0/8 as the kernel writes it (little-endian hex: 0100007F), IPv6 ::1, or
/// IPv4-mapped 127.x (::ffff:127.0.0.1, as the JVM binds).
fn is_loopback(hex: &str) -> bool {
    match hex.len() {
        8 => hex.ends_with("7F"),
        32 => {
            hex == "00000000000000000000000001000000"
                || (hex.starts_with("0000000000000000FFFF0000") && hex.ends_with("7F"))
        }
        _ => false,
    }
}

#[test]
fn stack_and_harmony_listen_on_loopback_only() {
    if !support::stack_available("loopback") {
        return;
    }
    let mut harmony = Harmony::start(&HarmonyOptions::stack(unique("e2e-loopback"))).unwrap();
    let http_port: u16 = harmony
        .http_address()
        .and_then(|a| a.rsplit(':').next().and_then(|p| p.parse().ok()))
        .expect("harmony logged its HTTP address");
    let port = |var: &str, default: u16| -> u16 {
        std::env::var(var)
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(default)
    };
    let ours = [
        port("KAFKA_PORT", 9092),
        port("KAFKA_CONTROLLER_PORT", 9093),
        port("CONNECT_PORT", 8083),
        port("PG_PORT", 55432),
        http_port,
    ];
    let sockets = listening_sockets();
    for port in ours {
        let bound: Vec<&(String, u16)> = sockets.iter().filter(|(_, p)| *p == port).collect();
        assert!(
            !bound.is_empty(),
            "nothing listens on port {port}: {sockets:?}"
        );
        for (addr, _) in bound {
            assert!(
                is_loopback(addr),
                "port {port} is bound to {addr}, not loopback"
            );
        }
    }
    harmony.terminate(Duration::from_secs(30)).unwrap();
}

#[test]
fn loopback_addresses_are_recognised() {
    assert!(is_loopback("0100007F"));
    assert!(!is_loopback("00000000"));
    assert!(is_loopback("0000000000000000FFFF00000100007F"));
    assert!(!is_loopback("00000000000000000000000000000000"));
}

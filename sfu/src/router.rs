//! Which connection a datagram on the shared media port belongs to: known 5-tuple first; otherwise a STUN
//! binding request is routed by the local ICE ufrag in its USERNAME (`<server ufrag>:<client ufrag>`).
//!
//! A connection is bound to the first client address whose check reaches it; checks from the client's other
//! candidates are not answered. rtc's ICE-lite agent keeps the first pair the client nominates and does not follow
//! a later renomination (Chrome moves to another pair when it has several, e.g. two interfaces), so a second
//! working pair would let the browser switch to a pair the server does not send on. Unanswered, those pairs fail
//! and the browser stays on the one the server uses.

use std::collections::HashMap;
use std::net::SocketAddr;

/// A connection's index in its worker.
pub type ConnId = u64;

const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const STUN_BINDING_REQUEST: u16 = 0x0001;
const STUN_ATTR_USERNAME: u16 = 0x0006;

/// The local (server) ufrag of a STUN binding request, if the datagram is one.
pub fn stun_local_ufrag(datagram: &[u8]) -> Option<&str> {
    if datagram.len() < 20 || datagram[0] & 0xC0 != 0 || datagram[4..8] != STUN_MAGIC_COOKIE {
        return None;
    }
    let msg_type = u16::from_be_bytes([datagram[0], datagram[1]]);
    if msg_type != STUN_BINDING_REQUEST {
        return None;
    }
    let body_len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let end = 20usize.checked_add(body_len)?.min(datagram.len());
    let mut pos = 20;
    while pos + 4 <= end {
        let attr = u16::from_be_bytes([datagram[pos], datagram[pos + 1]]);
        let len = usize::from(u16::from_be_bytes([datagram[pos + 2], datagram[pos + 3]]));
        let value = datagram.get(pos + 4..pos + 4 + len)?;
        if attr == STUN_ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        pos += 4 + len.div_ceil(4) * 4;
    }
    None
}

/// The routing tables of one worker's shared socket.
#[derive(Debug, Default)]
pub struct Router {
    by_addr: HashMap<SocketAddr, ConnId>,
    by_ufrag: HashMap<String, ConnId>,
    /// The client address each connection is bound to.
    bound: HashMap<ConnId, SocketAddr>,
    /// Checks refused because their connection is bound to another address.
    pub other_pair_refused: u64,
}

impl Router {
    pub fn add_ufrag(&mut self, ufrag: String, conn: ConnId) {
        self.by_ufrag.insert(ufrag, conn);
    }

    /// Forget everything that routes to `conn`.
    pub fn remove_conn(&mut self, conn: ConnId) {
        self.by_addr.retain(|_, c| *c != conn);
        self.by_ufrag.retain(|_, c| *c != conn);
        self.bound.remove(&conn);
    }

    /// Find the connection for a datagram from `from`. A STUN request naming a known ufrag binds its address to
    /// that connection if the connection has none yet.
    pub fn route(&mut self, from: SocketAddr, datagram: &[u8]) -> Option<ConnId> {
        if let Some(&conn) = self.by_addr.get(&from) {
            return Some(conn);
        }
        let ufrag = stun_local_ufrag(datagram)?;
        let conn = *self.by_ufrag.get(ufrag)?;
        match self.bound.get(&conn) {
            Some(addr) if *addr != from => {
                self.other_pair_refused += 1;
                None
            }
            _ => {
                self.bound.insert(conn, from);
                self.by_addr.insert(from, conn);
                Some(conn)
            }
        }
    }

    /// The connection for the first frame of an ICE-TCP stream from `from`: a STUN binding request naming a
    /// known ufrag, for a connection not bound to another client address (UDP or TCP). Later frames of the
    /// stream follow the stream, not the address, so nothing is added to the address table.
    pub fn route_tcp(&mut self, from: SocketAddr, frame: &[u8]) -> Option<ConnId> {
        let ufrag = stun_local_ufrag(frame)?;
        let conn = *self.by_ufrag.get(ufrag)?;
        match self.bound.get(&conn) {
            Some(addr) if *addr != from => {
                self.other_pair_refused += 1;
                None
            }
            _ => {
                self.bound.insert(conn, from);
                Some(conn)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        // A PRIORITY attribute first, to check attribute walking.
        attrs.extend_from_slice(&0x0024u16.to_be_bytes());
        attrs.extend_from_slice(&4u16.to_be_bytes());
        attrs.extend_from_slice(&[0, 0, 0, 1]);
        attrs.extend_from_slice(&STUN_ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&STUN_BINDING_REQUEST.to_be_bytes());
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&STUN_MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn parses_local_ufrag() {
        assert_eq!(
            stun_local_ufrag(&binding_request("srvA:cli1")),
            Some("srvA")
        );
    }

    #[test]
    fn non_stun_and_truncated_are_none() {
        assert_eq!(stun_local_ufrag(&[0x80; 40]), None); // RTP
        let mut m = binding_request("srvA:cli1");
        m.truncate(30);
        assert_eq!(stun_local_ufrag(&m), None);
    }

    #[test]
    fn routes_by_ufrag_then_by_address() {
        let mut r = Router::default();
        r.add_ufrag("srvA".into(), 1);
        r.add_ufrag("srvB".into(), 2);
        let a: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        assert_eq!(r.route(a, &[0x80, 0, 0, 0]), None);
        assert_eq!(r.route(a, &binding_request("srvB:x")), Some(2));
        assert_eq!(r.route(a, &[0x80, 0, 0, 0]), Some(2));
        r.remove_conn(2);
        assert_eq!(r.route(a, &[0x80, 0, 0, 0]), None);
        assert_eq!(r.route(a, &binding_request("nobody:x")), None);
    }

    #[test]
    fn tcp_streams_route_by_ufrag_and_respect_the_bound_address() {
        let mut r = Router::default();
        r.add_ufrag("srvA".into(), 1);
        r.add_ufrag("srvB".into(), 2);
        let tcp_peer: SocketAddr = "127.0.0.1:40123".parse().expect("addr");
        assert_eq!(r.route_tcp(tcp_peer, &[0x80, 0, 0, 0]), None);
        assert_eq!(r.route_tcp(tcp_peer, &binding_request("nobody:x")), None);
        assert_eq!(r.route_tcp(tcp_peer, &binding_request("srvA:x")), Some(1));
        // Not in the UDP address table: a datagram from that address is not routed by it.
        assert_eq!(r.route(tcp_peer, &[0x80, 0, 0, 0]), None);
        // A connection already bound over UDP refuses a TCP stream from elsewhere.
        let udp_peer: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        assert_eq!(r.route(udp_peer, &binding_request("srvB:c")), Some(2));
        assert_eq!(r.route_tcp(tcp_peer, &binding_request("srvB:c")), None);
    }

    #[test]
    fn a_connection_answers_only_its_first_client_address() {
        let mut r = Router::default();
        r.add_ufrag("srvA".into(), 1);
        let first: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let second: SocketAddr = "192.0.2.7:6000".parse().expect("addr");
        assert_eq!(r.route(first, &binding_request("srvA:c")), Some(1));
        assert_eq!(r.route(second, &binding_request("srvA:c")), None);
        assert_eq!(r.route(second, &[0x80, 0, 0, 0]), None);
        assert_eq!(r.other_pair_refused, 1);
        assert_eq!(r.route(first, &binding_request("srvA:c")), Some(1));
        // Another connection may still bind that second address.
        r.add_ufrag("srvB".into(), 2);
        assert_eq!(r.route(second, &binding_request("srvB:c")), Some(2));
    }
}

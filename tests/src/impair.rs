//! A commune hall's weak link, for whole-system tests, built from what this kernel has (no `netem`): a veth pair
//! into a network namespace of its own (the "far side"), `tbf` on both ends for the bandwidth, iptables rules
//! there for random loss and for cutting the link, and a small relay in the far side that holds every datagram
//! for half the wanted round trip each way.
//!
//! ```text
//!  test namespace                                   far namespace (impair-far-<pid>-<n>)
//!  hall sockets on 10.N.0.1 ── veth (tbf) ───────► relay 10.N.0.2: UDP (delayed), TCP (WebSocket)
//!  server 127.0.0.1 ◄──────────── relay's upstream sockets (made in the test namespace) ◄─┘
//! ```
//!
//! The hall's simulated endpoint binds to [`ImpairedLink::hall_ip`], talks to the server's HTTP/WebSocket through
//! [`ImpairedLink::http_url`] and dials [`ImpairedLink::media_addr`] instead of the server's candidates
//! ([`SimOptions::media_via`](crate::sim::SimOptions::media_via)); the server sees the hall at the relay's upstream
//! address, as it sees a hall relayed by TURN. The relay gives each hall socket its own upstream socket (its own
//! 5-tuple at the server). Needs root (the tests that use it run inside a namespace of their own).
//!
//! The far side's sockets are opened by a short-lived thread that enters the far namespace (`setns`): a socket
//! stays in the namespace it was made in, so the relay itself runs on the test's runtime.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Runs `cmd args`; an error carries its output.
/// The end of an iptables rule that drops `probability` (formatted, 0..1) of what it matches, at random.
pub fn random_drop_target(probability: &str) -> [&str; 8] {
    [
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        probability,
        "-j",
        "DROP",
    ]
}

pub fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("{cmd} {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// What the link does now.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Impairment {
    /// Random drop probability of UDP, each way.
    loss: f64,
    /// Everything dropped, each way.
    cut: bool,
}

/// One impaired link (see the module docs). Dropping it removes the far namespace (and with it the veth pair).
pub struct ImpairedLink {
    ns: String,
    near_if: String,
    far_if: String,
    hall_ip: IpAddr,
    media: SocketAddr,
    http: SocketAddr,
    state: Mutex<Impairment>,
    tasks: Vec<JoinHandle<()>>,
}

impl ImpairedLink {
    /// Make link number `n` (1..=250: the subnet 10.n.0.0/30 and the interface names) to the server at
    /// `server_http` / `server_media` (loopback), with `rtt` added by the relay (half each way).
    pub async fn new(
        n: u8,
        server_http: SocketAddr,
        server_media: SocketAddr,
        rtt: Duration,
    ) -> anyhow::Result<ImpairedLink> {
        let ns = format!("impair-far-{}-{n}", std::process::id());
        let near_if = format!("impn{n}");
        let far_if = format!("impf{n}");
        let near_ip = Ipv4Addr::new(10, n, 0, 1);
        let far_ip = Ipv4Addr::new(10, n, 0, 2);
        run("ip", &["netns", "add", &ns])?;
        // From here on, Drop cleans up whatever was made.
        let mut link = ImpairedLink {
            ns,
            near_if,
            far_if,
            hall_ip: IpAddr::V4(near_ip),
            media: SocketAddr::new(IpAddr::V4(far_ip), 0),
            http: SocketAddr::new(IpAddr::V4(far_ip), 0),
            state: Mutex::new(Impairment {
                loss: 0.0,
                cut: false,
            }),
            tasks: Vec::new(),
        };
        let (ns, near_if, far_if) = (&link.ns, &link.near_if, &link.far_if);
        run(
            "ip",
            &[
                "link", "add", near_if, "type", "veth", "peer", "name", far_if, "netns", ns,
            ],
        )?;
        run(
            "ip",
            &["addr", "add", &format!("{near_ip}/30"), "dev", near_if],
        )?;
        run("ip", &["link", "set", near_if, "up"])?;
        link.far(&["ip", "addr", "add", &format!("{far_ip}/30"), "dev", far_if])?;
        link.far(&["ip", "link", "set", far_if, "up"])?;
        link.far(&["ip", "link", "set", "lo", "up"])?;

        // The far side's listening sockets, made inside its namespace.
        let (udp, tcp) = {
            let path = format!("/var/run/netns/{}", link.ns);
            std::thread::spawn(move || -> anyhow::Result<_> {
                let f = std::fs::File::open(&path).with_context(|| path.clone())?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("setns into the far namespace")?;
                let udp = std::net::UdpSocket::bind((far_ip, 0)).context("relay UDP socket")?;
                udp.set_nonblocking(true)?;
                let tcp = std::net::TcpListener::bind((far_ip, 0)).context("relay TCP socket")?;
                tcp.set_nonblocking(true)?;
                Ok((udp, tcp))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the setns thread panicked"))??
        };
        let far = Arc::new(UdpSocket::from_std(udp)?);
        let listener = TcpListener::from_std(tcp)?;
        link.media = far.local_addr()?;
        link.http = listener.local_addr()?;
        let one_way = rtt / 2;
        link.tasks
            .push(tokio::spawn(relay_udp(far, server_media, one_way)));
        link.tasks
            .push(tokio::spawn(forward_tcp(listener, server_http)));
        Ok(link)
    }

    /// Run a command inside the far namespace.
    fn far(&self, cmd: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["netns", "exec", self.ns.as_str()];
        args.extend_from_slice(cmd);
        run("ip", &args)
    }

    /// The address the hall's sockets bind to (near end of the veth).
    pub fn hall_ip(&self) -> IpAddr {
        self.hall_ip
    }

    /// The relay's media address: the hall dials it instead of the server's candidates.
    pub fn media_addr(&self) -> SocketAddr {
        self.media
    }

    /// The server's HTTP/WebSocket as the hall reaches it, through the link.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Cap the link at `kbit` kbit/s each way (`tbf`: a 4 KB bucket, 50 ms of queue), or lift the cap (`None`).
    /// Changes apply at once, also while media flows.
    pub fn set_rate(&self, kbit: Option<u32>) -> anyhow::Result<()> {
        for (far, dev) in [(false, &self.near_if), (true, &self.far_if)] {
            let rate = kbit.map(|k| format!("{k}kbit"));
            let cmd: Vec<&str> = match &rate {
                Some(rate) => vec![
                    "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst",
                    "4kb", "latency", "50ms",
                ],
                None => vec!["tc", "qdisc", "del", "dev", dev, "root"],
            };
            let r = if far {
                self.far(&cmd)
            } else {
                run(cmd[0], &cmd[1..])
            };
            // Deleting a qdisc that is not there fails; that is the wanted state.
            if kbit.is_some() {
                r?;
            }
        }
        Ok(())
    }

    /// Drop this fraction of the UDP datagrams each way, at random (iptables `statistic`); 0 for none.
    pub fn set_loss(&self, probability: f64) -> anyhow::Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.loss = probability;
        self.apply(*s)
    }

    /// Cut the link (everything dropped, each way: media, WebSocket, ICE) or restore it.
    pub fn set_cut(&self, cut: bool) -> anyhow::Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.cut = cut;
        self.apply(*s)
    }

    fn apply(&self, s: Impairment) -> anyhow::Result<()> {
        self.far(&["iptables", "-F", "INPUT"])?;
        self.far(&["iptables", "-F", "OUTPUT"])?;
        let p = format!("{}", s.loss);
        for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            if s.cut {
                self.far(&["iptables", "-A", chain, dir, &self.far_if, "-j", "DROP"])?;
            } else if s.loss > 0.0 {
                let rule = ["iptables", "-A", chain, dir, &self.far_if, "-p", "udp"];
                self.far(&[&rule[..], &random_drop_target(&p)].concat())?;
            }
        }
        Ok(())
    }
}

impl Drop for ImpairedLink {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // The far end of the veth lives there: the pair goes with the namespace.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.near_if])
            .output();
    }
}

/// A datagram on its way, sent at `at`.
struct Held {
    at: Instant,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    data: Vec<u8>,
}

/// Send what arrives on `rx` at its time (constant delay: first in, first out).
async fn release(mut rx: mpsc::UnboundedReceiver<Held>) {
    let (mut n, mut bytes, mut t0) = (0u64, 0u64, Instant::now());
    while let Some(h) = rx.recv().await {
        tokio::time::sleep_until(h.at).await;
        let _ = h.socket.send_to(&h.data, h.to).await;
        n += 1;
        bytes += h.data.len() as u64;
        if std::env::var_os("IMPAIR_TRACE").is_some() && t0.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "relay to {}: {n} datagrams {} kbit/s, late {:?}",
                h.to,
                bytes * 8 / 1000,
                h.at.elapsed()
            );
            (n, bytes, t0) = (0, 0, Instant::now());
        }
    }
}

/// The delaying UDP relay: datagrams from a hall socket go to the server from that socket's own upstream socket,
/// and the server's answers back to it, each held `delay`.
async fn relay_udp(far: Arc<UdpSocket>, server: SocketAddr, delay: Duration) {
    let (up_tx, up_rx) = mpsc::unbounded_channel::<Held>();
    let (down_tx, down_rx) = mpsc::unbounded_channel::<Held>();
    let mut tasks = Tasks(vec![
        tokio::spawn(release(up_rx)),
        tokio::spawn(release(down_rx)),
    ]);
    let mut flows: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    while let Ok((n, hall)) = far.recv_from(&mut buf).await {
        let at = Instant::now() + delay;
        let up = match flows.get(&hall) {
            Some(up) => Arc::clone(up),
            None => {
                // Made on the runtime's thread: in the test's namespace, where the server is.
                let Ok(up) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await else {
                    continue;
                };
                let up = Arc::new(up);
                flows.insert(hall, Arc::clone(&up));
                let (up2, far2, down) = (Arc::clone(&up), Arc::clone(&far), down_tx.clone());
                tasks.0.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok((n, _)) = up2.recv_from(&mut buf).await {
                        let _ = down.send(Held {
                            at: Instant::now() + delay,
                            socket: Arc::clone(&far2),
                            to: hall,
                            data: buf[..n].to_vec(),
                        });
                    }
                }));
                up
            }
        };
        let _ = up_tx.send(Held {
            at,
            socket: up,
            to: server,
            data: buf[..n].to_vec(),
        });
    }
}

/// The hall's HTTP/WebSocket connections, passed through to the server (not delayed; TCP recovers its own loss).
async fn forward_tcp(listener: TcpListener, server: SocketAddr) {
    let mut tasks = Tasks(Vec::new());
    while let Ok((mut hall, _)) = listener.accept().await {
        tasks.0.push(tokio::spawn(async move {
            if let Ok(mut up) = TcpStream::connect(server).await {
                let _ = tokio::io::copy_bidirectional(&mut hall, &mut up).await;
            }
        }));
    }
}

/// Tasks stopped when their owner stops (the relay's own task is aborted when the link is dropped).
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

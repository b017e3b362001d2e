//! (f) An endpoint that vanishes without a goodbye — its process dies: no `leave`, no WebSocket close frame, no
//! DTLS close — is removed: the others get `participant_left` and `/api/rooms` drops it.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, json_strings, wait_all_flowing, wait_until_async};
use giaoban_signaling::protocol::ServerMessage;
use giaoban_tests::sim::{SimEndpoint, SimOptions};

/// Run an endpoint on its own tokio runtime (own thread) so that dropping the runtime kills every task and
/// socket of it at once, as a crash or a pulled cable would (the kernel still closes the TCP connection).
struct Doomed {
    ep: SimEndpoint,
    kill: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

fn spawn_doomed(opts: SimOptions) -> Doomed {
    let (ep_tx, ep_rx) = std::sync::mpsc::channel();
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let ep = rt.block_on(async move {
            let ep = SimEndpoint::connect(opts).await.expect("doomed joins");
            ep.publish().await.expect("doomed publishes");
            ep
        });
        ep_tx.send(ep).expect("handed over");
        let _ = kill_rx.recv();
        rt.shutdown_background();
    });
    let ep = ep_rx.recv().expect("doomed endpoint started");
    Doomed {
        ep,
        kill: kill_tx,
        thread,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_endpoint_is_removed() {
    let server = TestServer::start().await;
    let room = "giao-ban-mat-ket-noi";
    let a = server.endpoint(room, "Xã A", true).await;
    let opts = server.opts(room, "Xã mất điện");
    let doomed = tokio::task::spawn_blocking(move || spawn_doomed(opts))
        .await
        .expect("spawned");
    let gone = doomed.ep.clone();
    wait_all_flowing(&[&a, &gone], &[&a, &gone], Duration::from_secs(15)).await;
    let gone_id = gone.id();

    let from = a.log_len();
    let t0 = Instant::now();
    doomed.kill.send(()).expect("kill");
    tokio::task::spawn_blocking(move || doomed.thread.join())
        .await
        .expect("joined")
        .expect("doomed thread ended cleanly");

    let id = gone_id.clone();
    a.wait_message_since(
        from,
        Duration::from_secs(40),
        |m| matches!(m, ServerMessage::ParticipantLeft { participant_id, .. } if *participant_id == id),
    )
    .await
    .expect("participant_left for the vanished endpoint");
    println!("vanished endpoint removed after {:?}", t0.elapsed());

    wait_until_async(
        "/api/rooms to drop the vanished endpoint",
        Duration::from_secs(5),
        || async {
            let rooms = server.rooms().await;
            let strings = json_strings(&rooms);
            (!strings.contains(&gone_id) && strings.contains(&a.id())).then_some(())
        },
    )
    .await;

    a.close().await;
    server.shutdown().await;
}

/// The endpoint's media dies (peer connections dropped without a DTLS close, no more ICE consent checks) while
/// its WebSocket stays open: the server's ICE timeout (about 10 s here) must remove it. Slower than the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_whose_media_dies_is_removed() {
    let server = TestServer::start().await;
    let room = "giao-ban-mat-mang";
    let a = server.endpoint(room, "Xã A", true).await;
    let mut opts = server.opts(room, "Xã mất mạng");
    opts.dedicated_reactor = true;
    let dead = SimEndpoint::connect(opts).await.expect("joins");
    dead.publish().await.expect("publishes");
    wait_all_flowing(&[&a, &dead], &[&a, &dead], Duration::from_secs(15)).await;
    let dead_id = dead.id();

    let from = a.log_len();
    let t0 = Instant::now();
    dead.drop_media().await.expect("media dropped");

    let id = dead_id.clone();
    a.wait_message_since(
        from,
        Duration::from_secs(40),
        |m| matches!(m, ServerMessage::ParticipantLeft { participant_id, .. } if *participant_id == id),
    )
    .await
    .expect("participant_left for the endpoint whose media died");
    println!("endpoint with dead media removed after {:?}", t0.elapsed());
    wait_until_async("/api/rooms to drop it", Duration::from_secs(5), || async {
        let strings = json_strings(&server.rooms().await);
        (!strings.contains(&dead_id)).then_some(())
    })
    .await;
    println!(
        "its socket: closed={}, last messages {:?}",
        dead.is_closed(),
        dead.messages()
            .iter()
            .rev()
            .take(3)
            .map(common::short)
            .collect::<Vec<_>>()
    );
    a.close().await;
    dead.shutdown().await;
    server.shutdown().await;
}

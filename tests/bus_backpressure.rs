//! The patched IPC transport (vendor/zeromq, `quiet.rs`) registers a socket
//! for writability only after a write would block. If that lazy registration
//! ever lost a wakeup, a writer that filled its socket buffer would hang for
//! good. Here a ROUTER pushes far more than a Unix socket buffers to a DEALER
//! (so its writes block hundreds of times) and every byte must arrive in
//! order within a deadline; then the peers swap roles.

use std::time::Duration;
use zeromq::{DealerSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

const MESSAGES: usize = 512;
const SIZE: usize = 64 * 1024;
/// Generous: the transfer takes well under a second; a lost wakeup hangs.
const DEADLINE: Duration = Duration::from_secs(60);

fn payload(i: usize) -> Vec<u8> {
    let mut p = vec![(i % 251) as u8; SIZE];
    p[..8].copy_from_slice(&(i as u64).to_le_bytes());
    p
}

#[tokio::test(flavor = "current_thread")]
async fn blocked_ipc_writes_resume_and_deliver_everything_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("ipc://{}", dir.path().join("bus.sock").display());
    let mut router = RouterSocket::new();
    router.bind(&endpoint).await.unwrap();
    let mut dealer = DealerSocket::new();
    dealer.connect(&endpoint).await.unwrap();

    let transfer = async {
        // The dealer says hello so the router learns its identity.
        dealer.send(ZmqMessage::from("hello")).await.unwrap();
        let hello = router.recv().await.unwrap();
        let identity = hello.get(0).unwrap().clone();

        // Router → dealer: the router's writes block while nobody reads.
        let send = async {
            for i in 0..MESSAGES {
                let mut m = ZmqMessage::from(identity.clone());
                m.push_back(payload(i).into());
                router.send(m).await.unwrap();
            }
        };
        let receive = async {
            for i in 0..MESSAGES {
                let m = dealer.recv().await.unwrap();
                assert_eq!(
                    m.get(0).unwrap().as_ref(),
                    payload(i).as_slice(),
                    "message {i}"
                );
            }
        };
        tokio::join!(send, receive);

        // Dealer → router: the other side of the same connection.
        let send = async {
            for i in 0..MESSAGES {
                dealer.send(ZmqMessage::from(payload(i))).await.unwrap();
            }
        };
        let receive = async {
            for i in 0..MESSAGES {
                let m = router.recv().await.unwrap();
                assert_eq!(
                    m.get(1).unwrap().as_ref(),
                    payload(i).as_slice(),
                    "message {i}"
                );
            }
        };
        tokio::join!(send, receive);
    };
    tokio::time::timeout(DEADLINE, transfer)
        .await
        .expect("an IPC transfer stalled: a blocked write was never woken");
}

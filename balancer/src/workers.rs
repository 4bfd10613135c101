//! Worker threads, share-nothing on the hot path: each runs a single-threaded tokio
//! runtime with its own listening socket on the same address (`SO_REUSEPORT`, so the
//! kernel spreads new connections over them), its own accept loop and its own connection
//! pools to the nodes ([`crate::pool`]). A request is accepted, forwarded and answered on
//! one thread. The calling runtime is worker 0.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::{Balancer, Settings};

/// Backlog of each listening socket.
const BACKLOG: u32 = 1024;

/// Binds `addr` with `SO_REUSEPORT` (so the workers can each bind it too) and prints
/// `listening on ADDR` (the real port when 0 was asked for) as the first line of standard
/// output, as `serve::bind` does.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = reuseport_listener(addr)?;
    let local = listener.local_addr()?;
    println!("listening on {local}");
    info!(address = %local, "listening");
    Ok(listener)
}

fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// A listening socket for one more worker: a socket of its own on the same address when
/// `listener` allows that (it was bound by [`bind`]), else the same socket shared.
fn worker_listener(listener: &TcpListener) -> io::Result<std::net::TcpListener> {
    let own = listener
        .local_addr()
        .and_then(reuseport_listener)
        .and_then(TcpListener::into_std);
    match own {
        Ok(own) => Ok(own),
        Err(_) => {
            let shared = std::net::TcpListener::from(listener.as_fd().try_clone_to_owned()?);
            shared.set_nonblocking(true)?;
            Ok(shared)
        }
    }
}

/// How many workers `settings` asks for: `workers`, or one per CPU core when 0.
pub fn count(settings: &Settings) -> usize {
    match settings.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    }
}

/// Serves `balancer` on `listener` with [`count`] workers until `shutdown` completes, then
/// lets every worker drain its connections and returns when all have.
pub async fn serve(
    listener: TcpListener,
    balancer: Balancer,
    settings: &Settings,
    shutdown: impl Future<Output = ()>,
) {
    let workers = count(settings);
    let mut limits = settings.server_limits();
    // The connection cap is the whole balancer's: each worker gets its share.
    limits.max_connections = (limits.max_connections / workers).max(1);
    let (stop, stopped) = watch::channel(false);
    let mut done = Vec::new();
    for index in 1..workers {
        let socket = match worker_listener(&listener) {
            Ok(socket) => socket,
            Err(err) => {
                warn!(cause = %err, worker = index, "cannot give a worker a listener; running fewer");
                break;
            }
        };
        let balancer = balancer.clone();
        let mut stopped = stopped.clone();
        let (finished, finished_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        warn!(cause = %err, worker = index, "cannot start a worker's runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(socket) {
                        Ok(listener) => listener,
                        Err(err) => {
                            warn!(cause = %err, worker = index, "cannot use a worker's listener");
                            return;
                        }
                    };
                    let stop = async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    };
                    crate::front::run(listener, balancer, limits, stop).await;
                });
                drop(finished);
            });
        match thread {
            Ok(_) => done.push(finished_rx),
            Err(err) => {
                warn!(cause = %err, worker = index, "cannot start a worker thread; running fewer");
                break;
            }
        }
    }
    info!(workers = done.len() + 1, "serving");
    let stop_all = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    crate::front::run(listener, balancer, limits, stop_all).await;
    for finished in done {
        // A worker's sender is dropped when its thread ends, whichever way.
        let _ = finished.await;
    }
}

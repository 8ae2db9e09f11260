//! A handle on each connection's socket, so a streaming session can end a connection whose
//! client stopped reading. Without it, frames queued for such a client keep the connection and
//! its buffers alive for as long as the client cares to hold it open.

use std::any::Any;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Extensions;
use actix_web::HttpRequest;

/// A duplicate of the connection's socket descriptor, dropped with the connection's data.
#[derive(Clone)]
pub struct ConnectionSocket(Arc<OwnedFd>);

type TcpStream = actix_web::rt::net::TcpStream;
type TlsStream = actix_tls::accept::rustls_0_23::TlsStream<TcpStream>;

/// `HttpServer::on_connect` hook: remembers every connection's socket, plain or TLS (shutting
/// down the TCP socket under a TLS session ends it just the same).
pub fn remember(connection: &dyn Any, data: &mut Extensions) {
    let tcp = match connection.downcast_ref::<TcpStream>() {
        Some(tcp) => tcp,
        None => match connection.downcast_ref::<TlsStream>() {
            Some(tls) => tls.get_ref().0,
            None => return,
        },
    };
    if let Ok(fd) = tcp.as_fd().try_clone_to_owned() {
        data.insert(ConnectionSocket(Arc::new(fd)));
    }
}

impl ConnectionSocket {
    pub fn of(req: &HttpRequest) -> Option<Self> {
        req.conn_data::<ConnectionSocket>().cloned()
    }

    /// Gives the connection `grace` to finish by itself (a client taking its close frame), then
    /// shuts the socket down, which makes the server drop the connection and its buffers.
    pub async fn end_within(self, grace: Duration) {
        let step = Duration::from_millis(50);
        let mut waited = Duration::ZERO;
        // Ours is the last handle once the server has dropped the connection.
        while Arc::strong_count(&self.0) > 1 && waited < grace {
            tokio::time::sleep(step).await;
            waited += step;
        }
        if Arc::strong_count(&self.0) > 1 {
            let _ = socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Both);
        }
    }
}

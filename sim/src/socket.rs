//! A UDP socket that can be cut: from then on everything sent is dropped and everything
//! received is discarded, as if the worker's machine had lost power. Dropping a quinn
//! connection would send a close frame and the coordinator would see a clean goodbye; a
//! killed worker sends nothing, so the coordinator must notice by its idle timeout
//! (SPEC §6), which is what the kill phase measures.

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

#[derive(Debug)]
pub struct Cuttable {
    inner: Arc<dyn AsyncUdpSocket>,
    cut: Arc<AtomicBool>,
}

/// Cuts the socket it was made with.
#[derive(Debug, Clone)]
pub struct Cutter(Arc<AtomicBool>);

impl Cutter {
    pub fn cut(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A cuttable socket bound to `bind`, for `quinn::Endpoint::new_with_abstract_socket`.
pub fn bind(bind: SocketAddr) -> io::Result<(Arc<dyn AsyncUdpSocket>, Cutter)> {
    let std_socket = std::net::UdpSocket::bind(bind)?;
    let inner = quinn::TokioRuntime.wrap_udp_socket(std_socket)?;
    let cut = Arc::new(AtomicBool::new(false));
    let socket = Cuttable {
        inner,
        cut: cut.clone(),
    };
    Ok((Arc::new(socket), Cutter(cut)))
}

impl AsyncUdpSocket for Cuttable {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if self.cut.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let got = self.inner.poll_recv(cx, bufs, meta);
            if !matches!(got, Poll::Ready(Ok(_))) || !self.cut.load(Ordering::Relaxed) {
                return got;
            }
            // Cut: discard what arrived and look again, so the waker stays registered.
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

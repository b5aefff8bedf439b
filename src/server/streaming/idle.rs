//! `streamingConnectionIdleTimeout`: an upgraded exec/attach/port-forward
//! connection that carries nothing either way for that long is ended, as the
//! kubelet's SPDY and WebSocket connections do with their idle timeout. The
//! wrapper makes the connection read and write as timed out (a Go connection
//! past its deadline); the session then ends as if the client went away (its
//! exec process is killed). Zero turns it off.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// An IO that fails its reads with `TimedOut` after `timeout` without traffic.
pub struct IdleIo<T> {
    inner: T,
    /// The idle time and the timer it arms (None: no timeout).
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    expired: bool,
}

impl<T> IdleIo<T> {
    /// `timeout`: zero for none.
    pub fn new(inner: T, timeout: Duration) -> Self {
        let idle = (!timeout.is_zero()).then(|| (timeout, Box::pin(tokio::time::sleep_until(Instant::now() + timeout))));
        IdleIo { inner, idle, expired: false }
    }

    fn touch(&mut self) {
        if let Some((timeout, deadline)) = &mut self.idle {
            deadline.as_mut().reset(Instant::now() + *timeout);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if this.idle.as_mut().is_some_and(|(_, deadline)| deadline.as_mut().poll(cx).is_ready()) {
                    this.expired = true;
                    return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // As a Go connection past its deadline: writes fail too.
        if this.expired {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn reads_time_out_only_after_the_idle_time_without_traffic() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = IdleIo::new(a, Duration::from_secs(10));
        let mut buf = [0u8; 8];
        // Traffic both ways within the timeout keeps it open.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(6)).await;
            b.write_all(b"x").await.unwrap();
            assert_eq!(io.read(&mut buf).await.unwrap(), 1);
            tokio::time::advance(Duration::from_secs(6)).await;
            io.write_all(b"y").await.unwrap();
        }
        let t = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t.elapsed(), Duration::from_secs(10));
        assert_eq!(io.write(b"late").await.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_is_no_timeout() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = IdleIo::new(a, Duration::ZERO);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            io.read(&mut buf).await
        });
        tokio::time::sleep(Duration::from_secs(5 * 3600)).await;
        b.write_all(b"late").await.unwrap();
        assert_eq!(reader.await.unwrap().unwrap(), 4);
    }
}

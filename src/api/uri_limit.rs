//! The one failure the gateway never sees as a request: hyper answers a request target over
//! 65,534 bytes itself, before routing, with a 414 and an empty body (its limit is a constant).
//! No handler answers 414, so that head is rewritten here on its way to the socket into the
//! JSON error every other failure gets; hyper closes the connection after it either way.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::recommendations::MAX_EXCLUDE;

/// The start of hyper's 414 head; hyper writes the head alone, at the start of a write.
const HYPER_414: &[u8] = b"HTTP/1.1 414 ";
/// The body length hyper announces for its bodiless head, replaced by the JSON body's.
const EMPTY_BODY: &str = "content-length: 0\r\n";

/// A connection whose 414 answers carry the JSON error body.
#[derive(Debug)]
pub(crate) struct JsonUriTooLong<Io> {
    /// The client's socket.
    inner: Io,
    /// Set while the JSON answer goes out in place of hyper's head: it may take several writes,
    /// and hyper must only hear that its head was written once all of it was.
    replacing: Option<Replacing>,
}

/// The JSON answer being written instead of hyper's head.
#[derive(Debug)]
struct Replacing {
    /// Head and body.
    answer: Vec<u8>,
    /// Bytes of `answer` written so far.
    written: usize,
    /// Length of hyper's head, reported written once `answer` is.
    head: usize,
}

impl<Io> JsonUriTooLong<Io> {
    /// Wraps a freshly accepted connection.
    pub(crate) fn new(inner: Io) -> Self {
        JsonUriTooLong { inner, replacing: None }
    }
}

/// hyper's head with a JSON body, and the head's length; `None` when `buf` does not start with
/// a bodiless 414 head.
fn json_answer(buf: &[u8]) -> Option<Replacing> {
    if !buf.starts_with(HYPER_414) {
        return None;
    }
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = std::str::from_utf8(&buf[..head]).ok()?;
    if !text.contains(EMPTY_BODY) {
        return None;
    }
    let body = serde_json::json!({
        "error": "uri_too_long",
        "message": format!(
            "the request target is over 65534 bytes, more than the server reads; `exclude` takes at most \
             {MAX_EXCLUDE} ids"
        ),
    })
    .to_string();
    let length = format!(
        "content-type: application/json; charset=utf-8\r\ncontent-length: {}\r\n",
        body.len()
    );
    let answer = text.replacen(EMPTY_BODY, &length, 1) + &body;
    Some(Replacing {
        answer: answer.into_bytes(),
        written: 0,
        head,
    })
}

impl<Io: AsyncWrite + Unpin> JsonUriTooLong<Io> {
    /// Writes the JSON answer when `buf` is hyper's 414 head (or one is already going out);
    /// `None` for every other write, which goes through untouched.
    fn poll_replace(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Option<Poll<io::Result<usize>>> {
        if self.replacing.is_none() {
            self.replacing = json_answer(buf);
        }
        let replacing = self.replacing.as_mut()?;
        while replacing.written < replacing.answer.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &replacing.answer[replacing.written..]) {
                Poll::Ready(Ok(0)) => return Some(Poll::Ready(Err(io::ErrorKind::WriteZero.into()))),
                Poll::Ready(Ok(n)) => replacing.written += n,
                Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(e))),
                Poll::Pending => return Some(Poll::Pending),
            }
        }
        let head = replacing.head;
        self.replacing = None;
        Some(Poll::Ready(Ok(head)))
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for JsonUriTooLong<Io> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for JsonUriTooLong<Io> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.poll_replace(cx, buf) {
            Some(poll) => poll,
            None => Pin::new(&mut self.inner).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &**b);
        match self.poll_replace(cx, first) {
            Some(poll) => poll,
            None => Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hyper_s_bodiless_414_gets_a_json_body() {
        let head = b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let replaced = json_answer(head).expect("replaced");
        assert_eq!(replaced.head, head.len());
        let answer = String::from_utf8(replaced.answer).expect("text");
        let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
        assert!(
            head.starts_with("HTTP/1.1 414 URI Too Long\r\nconnection: close\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let body: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(body["error"], "uri_too_long");
        assert!(json_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(json_answer(b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 12\r\n\r\n").is_none());
    }
}

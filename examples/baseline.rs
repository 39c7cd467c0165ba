//! The benchmark's baseline: a minimal poem server answering `GET /recommendations/:user_id`
//! (and `GET /experiments/:id/assignment/:user_id`, for the assignment endpoint's figure) with a
//! pre-serialized body read from a file (a real gateway response of the same size), so
//! `bench/run.sh` can report every scenario as a ratio of what the HTTP stack alone does.
//!
//! `cargo run --release --example baseline -- ADDR BODY_FILE`

use poem::listener::TcpListener;
use poem::web::Path;
use poem::{EndpointExt, Response, Route, Server, get, handler};

fn same_bytes(body: &bytes::Bytes) -> Response {
    Response::builder()
        .content_type("application/json; charset=utf-8")
        .body(body.clone())
}

#[handler]
fn recommendations(Path(_user): Path<String>, body: poem::web::Data<&bytes::Bytes>) -> Response {
    same_bytes(body.0)
}

#[handler]
fn assignment(Path(_ids): Path<(String, String)>, body: poem::web::Data<&bytes::Bytes>) -> Response {
    same_bytes(body.0)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(body)) = (args.next(), args.next()) else {
        eprintln!("usage: baseline ADDR BODY_FILE");
        std::process::exit(2);
    };
    let body = bytes::Bytes::from(std::fs::read(body)?);
    let app = Route::new()
        .at("/recommendations/:user_id", get(recommendations))
        .at("/experiments/:id/assignment/:user_id", get(assignment))
        .data(body);
    Server::new(TcpListener::bind(addr)).run(app).await
}

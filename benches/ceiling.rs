//! The ceilings `make bench` divides by: a bare actix-web server answering a fixed JSON body with
//! no middleware (`GET /`), and a bare actix-ws endpoint (`GET /ws`) that sends one text frame on
//! connect and echoes, for the connection storm; the same worker count as the service. Run as
//! `ceiling <bind address> <workers>`; it prints `listening on http://…` once bound.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

/// The bare WebSocket session: one greeting frame, then an echo until the client leaves.
async fn echo(req: HttpRequest, body: web::Payload) -> actix_web::Result<HttpResponse> {
    let (response, mut session, mut messages) = actix_ws::handle(&req, body)?;
    actix_web::rt::spawn(async move {
        if session.text(r#"{"type":"hello"}"#).await.is_err() {
            return;
        }
        while let Some(Ok(message)) = messages.recv().await {
            let sent = match message {
                actix_ws::Message::Text(text) => session.text(text).await,
                actix_ws::Message::Binary(bytes) => session.binary(bytes).await,
                actix_ws::Message::Ping(bytes) => session.pong(&bytes).await,
                actix_ws::Message::Close(reason) => {
                    let _ = session.close(reason).await;
                    return;
                }
                _ => Ok(()),
            };
            if sent.is_err() {
                return;
            }
        }
    });
    Ok(response)
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let bind = args.get(1).map_or("127.0.0.1:0", String::as_str);
    let workers: usize = args.get(2).and_then(|w| w.parse().ok()).unwrap_or(2);
    let server = HttpServer::new(|| {
        App::new()
            .route(
                "/",
                web::get().to(|| async {
                    HttpResponse::Ok()
                        .content_type("application/json")
                        .body(r#"{"status":"ok"}"#)
                }),
            )
            .route("/ws", web::get().to(echo))
    })
    .workers(workers)
    .bind(bind)?;
    let address = server.addrs()[0];
    println!("listening on http://{address}");
    server.run().await
}

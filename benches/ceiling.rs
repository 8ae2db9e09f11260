//! The HTTP ceiling `make bench` divides by: a bare actix-web server answering a fixed JSON body
//! with no middleware, the same worker count as the service. Run as
//! `ceiling <bind address> <workers>`; it prints `listening on http://…` once bound.

use actix_web::{web, App, HttpResponse, HttpServer};

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let bind = args.get(1).map_or("127.0.0.1:0", String::as_str);
    let workers: usize = args.get(2).and_then(|w| w.parse().ok()).unwrap_or(2);
    let server = HttpServer::new(|| {
        App::new().route(
            "/",
            web::get().to(|| async {
                HttpResponse::Ok()
                    .content_type("application/json")
                    .body(r#"{"status":"ok"}"#)
            }),
        )
    })
    .workers(workers)
    .bind(bind)?;
    let address = server.addrs()[0];
    println!("listening on http://{address}");
    server.run().await
}

//! A webhook receiver for `bench/webhooks`: answers every POST 204 and counts the
//! distinct `webhook-id`s it saw (and all requests); `GET /count` reports
//! `distinct total`. Checking signatures is the receiver's cost, not the gateway's, so
//! it does not.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = std::net::TcpListener::bind(addr)?;
    println!("http_addr={}", listener.local_addr()?);
    let seen: Arc<Mutex<(HashSet<String>, u64)>> = Arc::default();
    HttpServer::new(move || {
        let (post, get) = (seen.clone(), seen.clone());
        App::new()
            .route(
                "/count",
                web::get().to(move || {
                    let seen = get.clone();
                    async move {
                        let s = seen.lock().unwrap();
                        HttpResponse::Ok().body(format!("{} {}", s.0.len(), s.1))
                    }
                }),
            )
            .default_service(web::to(move |req: HttpRequest| {
                let seen = post.clone();
                async move {
                    if let Some(id) = req
                        .headers()
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                    {
                        let mut s = seen.lock().unwrap();
                        s.0.insert(id.to_string());
                        s.1 += 1;
                    }
                    HttpResponse::NoContent().finish()
                }
            }))
    })
    .listen(listener)?
    .run()
    .await
}

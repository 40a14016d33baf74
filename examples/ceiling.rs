//! The benchmark ceiling: the smallest useful actix-web handler (a fixed JSON body),
//! served like the gateway (same worker count), so `bench/fhir` can report our figures
//! as a fraction of what the HTTP stack alone achieves on this machine.

use actix_web::{App, HttpResponse, HttpServer, web};

/// The same allocator as the gateway, so the comparison is like for like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = std::net::TcpListener::bind(addr)?;
    println!("http_addr={}", listener.local_addr()?);
    HttpServer::new(|| {
        App::new().route(
            "/",
            web::to(|| async {
                HttpResponse::Ok()
                    .content_type("application/fhir+json")
                    .body(r#"{"resourceType":"OperationOutcome","issue":[]}"#)
            }),
        )
    })
    .listen(listener)?
    .run()
    .await
}

//! Demo service C. See the crate docs for its calls and failure injection.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dlog_services::cli::service_main(dlog_services::cli::Role::C).await
}

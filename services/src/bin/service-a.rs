//! Demo service A. See the crate docs for what it does and how to change it.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dlog_services::cli::service_main(Some(dlog_services::Role::A)).await
}

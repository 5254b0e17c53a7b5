//! Any demo service by `--role`: the larger topology's inventory, payment, notification, auth
//! and cache, or service-a/b/c. See the crate docs.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dlog_services::cli::service_main(None).await
}

#!/usr/bin/env bash
# Installs everything the test suite and benchmarks need, idempotently:
#   - Debian build packages for the -sys crates (librdkafka, SQLite and zlib are built from
#     source), chromium and chromium-driver (the viewer's browser tests), and Python with pip
#     when the machine has none;
#   - rustfmt and clippy;
#   - tansu, the Kafka-protocol broker the system tests start, with memory and SQLite storage
#     (installed again only when the version or the SQLite storage is missing);
#   - cargo-fuzz, which builds the fuzz targets under fuzz/ (CI runs a short smoke of each);
#   - osmem-server (Elasticsearch/OpenSearch-API server), rotel (peer OTLP -> Kafka collector),
#     confluent-kafka and the OpenTelemetry Python SDK (interoperability tests), pinned.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

# gcc and make build the bundled librdkafka, SQLite and zlib. libssl-dev (found through
# pkg-config) is linked by librdkafka only, for Kafka SSL and SASL/SCRAM; everything else uses
# rustls. procps
# provides `kill`, which the tests use to freeze and thaw servers (SIGSTOP/SIGCONT). iproute2
# provides `ip`, with which the two-host test makes its network namespaces and veth pair.
# chromium and chromium-driver run the viewer's browser tests (headless, over WebDriver).
need_apt=()
for pkg in build-essential pkg-config libssl-dev procps iproute2 chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ! python3 -m pip --version >/dev/null 2>&1; then
  need_apt+=(python3 python3-pip)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
    echo "==> rustup component add ${component}"
    rustup component add "${component}"
  fi
done

# tansu with its SQLite storage (libsql) besides memory: the SASL/SCRAM test needs a broker
# whose users survive a restart. `tansu --help` lists the storage engines a build has.
TANSU_VERSION=0.6.0
if ! "${HOME}/.cargo/bin/tansu" --version 2>/dev/null | grep -q "${TANSU_VERSION}" \
    || ! { "${HOME}/.cargo/bin/tansu" --help 2>/dev/null || true; } \
      | grep -q '^Storage engines:.*libsql'; then
  echo "==> cargo install tansu ${TANSU_VERSION} (about 20 minutes on 2 cores, once per machine)"
  cargo install tansu --version "${TANSU_VERSION}" --locked --force --no-default-features \
    --features dynostore,libsql
fi

CARGO_FUZZ_VERSION=0.13.2
if ! "${HOME}/.cargo/bin/cargo-fuzz" --version 2>/dev/null | grep -q "${CARGO_FUZZ_VERSION}"; then
  echo "==> cargo install cargo-fuzz ${CARGO_FUZZ_VERSION} (about 4 minutes on 2 cores, once per machine)"
  cargo install cargo-fuzz --version "${CARGO_FUZZ_VERSION}" --locked
fi

echo "==> pip install -r requirements-test.txt"
pip_install() {
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@" \
    -r "${here}/requirements-test.txt"
}
# Debian's own Python refuses system-wide installs (PEP 668); these are test tools only.
pip_install || pip_install --break-system-packages

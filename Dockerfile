# syntax=docker/dockerfile:1
# tidewatch: one binary for the scaler (run), the worker, loadgen, simulate
# and the demo. Multi-stage: the build stage has the Rust toolchain and the
# C build tools librdkafka and Lua need; the runtime stage only the shared
# libraries the binary links (OpenSSL) and CA certificates.
#   docker build -t tidewatch .
#   docker run --rm tidewatch demo --duration 10m

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake perl pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > benches/core.rs \
 && cargo build --release --locked --bin tidewatch || true
COPY src ./src
COPY benches ./benches
COPY policies ./policies
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin tidewatch \
 && strip target/release/tidewatch

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tidewatch \
 && useradd --system --uid 10001 --gid tidewatch --home-dir /var/lib/tidewatch --shell /usr/sbin/nologin tidewatch \
 && mkdir -p /etc/tidewatch /var/lib/tidewatch \
 && chown tidewatch:tidewatch /var/lib/tidewatch
COPY --from=build /src/target/release/tidewatch /usr/local/bin/tidewatch
COPY policies /etc/tidewatch/policies
USER 10001:10001
WORKDIR /var/lib/tidewatch
# metrics and health: 9898 for the scaler, 9899 for a worker, by convention
EXPOSE 9898 9899
ENTRYPOINT ["/usr/local/bin/tidewatch"]
CMD ["--help"]

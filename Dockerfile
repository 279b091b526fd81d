# harmony, built from this repository. Used by docker-compose.yml; the same binary that
# scripts/demo builds natively.
# The toolchain CI builds and tests with (Cargo.toml rust-version).
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY tests ./tests
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin harmony

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 harmony
COPY --from=build /src/target/release/harmony /usr/local/bin/harmony
COPY examples/inventory.toml /etc/harmony/harmony.toml
USER harmony
# In a container the endpoints must be reachable from Prometheus and the orchestrator.
ENV HARMONY__HTTP__ADDRESS=0.0.0.0:9464 \
    HARMONY_LOG_FORMAT=json
EXPOSE 9464
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:9464/health || exit 1
ENTRYPOINT ["harmony"]
CMD ["run", "--config", "/etc/harmony/harmony.toml"]

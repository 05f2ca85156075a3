# Build: docker build -t herald:local .   (used by docker-compose.yml)
FROM rust:1-bookworm AS build
WORKDIR /src

# Dependencies first, against stub sources: this layer is rebuilt only when
# Cargo.toml or Cargo.lock change, not on every edit of our own code. The
# stubs cover every target the manifest names (cargo refuses a manifest whose
# targets are missing), and our own artefacts are removed afterwards so the
# real build below cannot mistake the stubs' output for up to date.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests/it \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > tests/it/main.rs \
    && cargo build --release --locked --bin herald \
    && rm -rf src tests target/release/herald target/release/deps/herald-* \
        target/release/deps/libherald-* target/release/.fingerprint/herald-*

COPY . .
RUN cargo build --release --locked --bin herald

FROM debian:bookworm-slim
# curl: the compose healthcheck (GET /readyz) runs inside this image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/herald /usr/local/bin/herald
USER nobody
EXPOSE 9090
ENTRYPOINT ["herald"]
CMD ["worker"]

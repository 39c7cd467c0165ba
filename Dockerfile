# Multi-stage build: the Rust toolchain stays in the first stage; the runtime image holds the
# binary, the demo experiments and models, and runs as an unprivileged user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin recgw

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /srv/recgw --shell /usr/sbin/nologin recgw
WORKDIR /srv/recgw
COPY --from=build /src/target/release/recgw /usr/local/bin/recgw
COPY experiments experiments
COPY models models
USER recgw
# Inside a container the gateway must listen beyond loopback to be reachable.
ENV RECGW__SERVER__LISTEN=0.0.0.0:8080
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["recgw"]
CMD ["serve"]

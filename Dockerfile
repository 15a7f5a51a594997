# canary-lb: the edge proxy image (the same binary also runs the demo app servers and `ctl`).
#
#   docker build -t canary-lb .          (podman: add --format docker, or HEALTHCHECK is dropped)
#   docker run -p 8080:8080 -p 9091:9091 \
#     -v $PWD/my-config.yaml:/etc/canary-lb/canary-lb.yaml:ro canary-lb
#
# The config file is read from CANARY_LB_CONFIG (default below); the CANARY_LB_* variables of
# the README override single keys (e.g. CANARY_LB_REDIS_URL switches to Redis discovery).
# SIGTERM (docker stop) drains in-flight requests within `grace_period` (10 s by default, so
# give `docker stop -t` / compose `stop_grace_period` a little more).

ARG RUST_VERSION=1
FROM rust:${RUST_VERSION}-bookworm AS build
# cmake builds zlib-ng for Pingora; the image already has a C compiler and make (jemalloc).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
# `release` (fat LTO) for real images; CI's container checks pass `image-check` (Cargo.toml).
ARG CARGO_PROFILE=release
# The commit `canary_lb_build_info{commit}` reports (build.rs); the image has no .git:
# `--build-arg CANARY_LB_COMMIT=$(git rev-parse --short=12 HEAD)`, else `unknown`.
ARG CANARY_LB_COMMIT=
ENV CANARY_LB_COMMIT=${CANARY_LB_COMMIT}
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
# Cargo.toml declares the benchmarks, so cargo wants their sources even for a plain build.
COPY benches ./benches
COPY src ./src
# Pingora with our patches (Cargo.toml [patch.crates-io]; see patches/pingora/README.md).
COPY vendor ./vendor
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile "$CARGO_PROFILE" --locked --bin canary-lb \
 && cp "target/$CARGO_PROFILE/canary-lb" /usr/local/bin/canary-lb

FROM debian:bookworm-slim
# ca-certificates for rediss:// URLs; nothing else (the health check is the binary itself).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin canary-lb
COPY --from=build /usr/local/bin/canary-lb /usr/local/bin/canary-lb
# The default config; mount your own over it (or point CANARY_LB_CONFIG elsewhere).
COPY conf/canary-lb.yaml /etc/canary-lb/canary-lb.yaml
# No RUST_LOG: the binary's default shows its own info lines and Pingora's from warn.
ENV CANARY_LB_CONFIG=/etc/canary-lb/canary-lb.yaml \
    CANARY_LB_METRICS_LISTEN=0.0.0.0:9091
USER canary-lb
# Proxy, then /metrics + /status + /healthz + /readyz. Publishing 9091 lets anyone who reaches it read
# the metrics and /status: set `metrics_auth_token_file` (SECURITY.md) or keep it unpublished.
EXPOSE 8080 9091
# GET /healthz on the metrics_listen in force (config file + CANARY_LB_* overrides, like
# `serve`); /healthz stays open when the admin token is set. Liveness on purpose: an
# unhealthy container is restarted (Swarm, `--restart`), and a restart cures a hung process,
# not dead app servers. Traffic decisions use readiness: GET /readyz (`canary-lb health
# --ready`), e.g. a Kubernetes readinessProbe or the load balancer in front of the replicas.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["canary-lb", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["canary-lb"]
CMD ["serve"]

# syntax=docker/dockerfile:1
#
# refund-worker image: one binary for every role (`run`, `migrate`, `submit`, `refunds`,
# `dlq`, ...); the role is the command, `run` by default.
#
#   docker build -t refund-worker:local .
#   docker run --rm refund-worker:local --help
#
# The production image (the last stage, built by default) is built without the cargo feature
# `tools`: its binary has no provider sandbox, no demo, no bench and no test signing key
# (.ci/run checks a binary built the same way). The `tools` stage is the same binary with
# them, for the local stack (docker-compose.yml's sandbox):
#
#   docker build --target tools -t refund-worker-tools:local .
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts below.

# ---- build -------------------------------------------------------------------------------
# Same Debian release (bookworm, glibc 2.36) as the runtime image, so the binary links
# against the glibc it will run with.
FROM rust:1-bookworm AS builder
WORKDIR /src

# Only what the build reads (build.rs, src/, and the files src embeds). `migrations/` is embedded into the binary at compile time by
# `sqlx::migrate!`, which is why the runtime image needs nothing but the binary. Queries use
# sqlx's runtime API, so the build needs no database and no `.sqlx/` offline data.
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
# The workspace's other members (the sandbox and the bench): cargo reads their manifests to
# load the workspace; only the `tools` stage's build compiles them.
COPY crates ./crates
COPY migrations ./migrations
# Files the code embeds with include_str!: the OpenAPI document served at /openapi.json, and
# the sandbox's TEST-ONLY Binance Pay webhook key pair (deploy/validate.py checks this list
# against the code).
COPY docs/openapi.json ./docs/openapi.json
COPY fixtures/binance_pay/webhook-test-private-key.pem fixtures/binance_pay/webhook-test-public-key.pem ./fixtures/binance_pay/

# Cache mounts keep the crates.io index, downloaded crates and compiled dependencies between
# builds; `target/` lives in a cache mount, so the binary is copied out in the same step.
#
# `touch src/lib.rs`: `sqlx::migrate!` includes each migration file it found, so an edited
# migration triggers a rebuild, but on stable Rust cargo does not watch the directory itself.
# With `target/` cached across builds, a migration that is only *added* would otherwise leave
# the crate "fresh" and ship a binary without it. Touching the library forces our crate (not
# the dependencies) to recompile, re-reading `migrations/`.
RUN --mount=type=cache,id=refund-worker-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=refund-worker-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=refund-worker-target,target=/src/target,sharing=locked \
    touch src/lib.rs \
 && cargo build --release --locked --no-default-features \
 && install -D -m 0755 target/release/refund-worker /out/refund-worker \
 && cargo build --release --locked \
 && install -D -m 0755 target/release/refund-worker /out/tools/refund-worker

# ---- tools -------------------------------------------------------------------------------
# The binary with the sandbox, the demo and the bench (cargo feature `tools`): for the local
# stack and for trying the product, never for production.
FROM gcr.io/distroless/cc-debian12:nonroot AS tools
COPY --from=builder /out/tools/refund-worker /usr/local/bin/refund-worker
USER 65532:65532
ENTRYPOINT ["refund-worker"]
CMD ["--help"]

# ---- runtime -----------------------------------------------------------------------------
# distroless/cc: glibc, libgcc and CA certificates, no shell and no package manager. That is
# all the binary needs: TLS is rustls (reqwest and lapin), so no OpenSSL; lapin reads the
# system CA bundle for amqps://, which this image ships; time zones come from chrono-tz,
# compiled in, so no tzdata.
FROM gcr.io/distroless/cc-debian12:nonroot

COPY --from=builder /out/refund-worker /usr/local/bin/refund-worker

# Numeric UID/GID (distroless's `nonroot`): Kubernetes can only verify `runAsNonRoot` against a
# numeric user; with a user *name* the kubelet refuses to start the pod.
USER 65532:65532

# /healthz and /readyz. The code's default bind is 127.0.0.1:8080, which nothing outside the
# container can reach, so the image listens on all interfaces.
ENV HTTP_ADDR=0.0.0.0:8080
EXPOSE 8080

# SIGTERM is what `run` drains on (within SHUTDOWN_GRACE_SECS, default 25 s); the binary is
# PID 1 and handles it itself, so no init shim is needed.
STOPSIGNAL SIGTERM

# No HEALTHCHECK: distroless has no shell, curl or wget, and the binary has no health-probe
# subcommand, so there is nothing in the image that could call /healthz. Orchestrators probe
# the endpoints from outside instead (Kubernetes liveness/readiness probes in deploy/base;
# compose orders start-up with depends_on conditions).
ENTRYPOINT ["refund-worker"]
CMD ["run"]

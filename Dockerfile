# sloguard and analytics-backend in one image (k8s/base/deployment.yaml runs the sidecar and
# the example app from it):
#   docker build -t example.com/sloguard:0.1.0 .
#
# /etc/sloguard/sloguard.toml is config/sloguard.toml, the demo policy: it listens on
# 127.0.0.1, so from outside the container nothing reaches it. Give the container a policy
# that binds 0.0.0.0, as k8s/base/policy/sloguard.toml does; in Kubernetes the policy
# ConfigMap is mounted over /etc/sloguard. Check a policy with the image itself:
#   docker run --rm -v "$PWD/k8s/base/policy:/p:ro" example.com/sloguard:0.1.0 check /p/sloguard.toml

# --- Build ---------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
# cmake builds Pingora's C dependencies.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole workspace (.dockerignore leaves out target/ and .git): cargo reads every member's
# manifest, bench/ and benches/ included, even to build two packages.
COPY . .
RUN cargo build --release --locked -p sloguard -p analytics-backend

# --- Run -----------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 sloguard \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sloguard
# Side by side: `sloguard demo` runs the analytics-backend found beside its own binary.
COPY --from=builder /src/target/release/sloguard /src/target/release/analytics-backend /usr/local/bin/
COPY config/sloguard.toml /etc/sloguard/sloguard.toml
# Numeric, so that Kubernetes' runAsNonRoot can verify it without a runAsUser.
USER 10001:10001
# 8080: the proxy (traffic); 9901: admin (/, /status, /metrics, /healthz, /readyz, POST /reload).
EXPOSE 8080 9901
ENTRYPOINT ["sloguard"]
CMD ["run", "--config", "/etc/sloguard/sloguard.toml"]

# syntax=docker/dockerfile:1
# medembed/gateway: the one entry point in front of every embedding endpoint
# (auth, per-client quotas, balancing, mirroring, metrics).
#
#   docker build -f images/gateway.Dockerfile -t medembed/gateway:0.1.0 .
#
# Build context: the repository root. Build arguments:
#   RUST_IMAGE     the compiler image (Debian 12, to match the runtime's glibc)
#   RUNTIME_IMAGE  the base of the final image: glibc, libgcc, a CA bundle and
#                  the user 65532; no shell
#   BINARIES       `source` compiles in RUST_IMAGE; `prebuilt` takes
#                  prebuilt/medembed-gateway from the context instead (what
#                  scripts/build-images.sh does where no registry is reachable)
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARIES=source

FROM ${RUST_IMAGE} AS source
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p medembed-gateway \
 && mkdir -p /out \
 && cp target/release/medembed-gateway /out/

FROM scratch AS prebuilt
COPY prebuilt/medembed-gateway /out/

FROM ${BINARIES} AS binaries

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="medembed-gateway" \
      org.opencontainers.image.description="One API-compatible entry point for every embedding endpoint: keys and JWT, per-client quotas, balancing across workers, mirroring, metrics." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/medembed" \
      org.opencontainers.image.vendor="medembed"
COPY --from=binaries /out/medembed-gateway /usr/local/bin/medembed-gateway
# The scoring API (plain HTTP unless --tls-cert/--tls-key are set), also
# serving /metrics, /livez and /readyz.
EXPOSE 8443
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/medembed-gateway"]

# syntax=docker/dockerfile:1
# medembed/operator: the operator, and the `fetch-model` init container of
# workers whose model comes from a URL (same image, subcommand).
#
#   docker build -f images/operator.Dockerfile -t medembed/operator:0.1.0 .
#
# Build context: the repository root. Build arguments:
#   RUST_IMAGE     the compiler image (Debian 12, to match the runtime's glibc)
#   RUNTIME_IMAGE  the base of the final image: glibc, libgcc, a CA bundle and
#                  the user 65532; no shell
#   BINARIES       `source` compiles in RUST_IMAGE; `prebuilt` takes
#                  prebuilt/medembed-operator from the context instead (what
#                  scripts/build-images.sh does where no registry is reachable)
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARIES=source

FROM ${RUST_IMAGE} AS source
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p medembed-operator \
 && mkdir -p /out \
 && cp target/release/medembed-operator /out/

FROM scratch AS prebuilt
COPY prebuilt/medembed-operator /out/

FROM ${BINARIES} AS binaries

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="medembed-operator" \
      org.opencontainers.image.description="Reconciles EmbeddingEndpoints and EmbeddingDeployments into running workers; also the fetch-model init container." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/medembed" \
      org.opencontainers.image.vendor="medembed"
COPY --from=binaries /out/medembed-operator /usr/local/bin/medembed-operator
# Health, readiness and metrics listener.
EXPOSE 8081
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/medembed-operator"]

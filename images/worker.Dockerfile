# syntax=docker/dockerfile:1
# medembed/worker: the embedding worker on ONNX Runtime's CPU provider.
# ONNX Runtime is the shared library of the PyPI `onnxruntime` wheel (the
# version scripts/requirements.txt pins), checked against the hashes in
# images/worker-requirements.txt.
#
#   docker build -f images/worker.Dockerfile -t medembed/worker:0.1.0 .
#
# Build context: the repository root. Build arguments:
#   RUST_IMAGE     the compiler image (Debian 12, to match the runtime's glibc)
#   PYTHON_IMAGE   an image with pip, to fetch the ONNX Runtime wheel
#   RUNTIME_IMAGE  the base of the final image: glibc, libstdc++, a CA bundle
#                  and the user 65532; no shell
#   BINARIES       `source` compiles and downloads in the images above;
#                  `prebuilt` takes prebuilt/medembed-worker and
#                  prebuilt/onnxruntime/ from the context instead (what
#                  scripts/build-images.sh does where no registry is reachable)
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARIES=source

FROM ${RUST_IMAGE} AS worker-build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p medembed-worker \
 && mkdir -p /out \
 && cp target/release/medembed-worker /out/

FROM ${PYTHON_IMAGE} AS onnxruntime
ARG ONNXRUNTIME_VERSION=1.32.0
COPY images/worker-requirements.txt /tmp/
# Only the wheel's shared library and its licence files are kept.
RUN set -eu; \
    pip download --quiet --no-deps --only-binary=:all: --require-hashes \
      -r /tmp/worker-requirements.txt -d /tmp/wheels; \
    python -m zipfile -e /tmp/wheels/onnxruntime-${ONNXRUNTIME_VERSION}-*.whl /tmp/ort; \
    mkdir -p /out/onnxruntime; \
    cp /tmp/ort/onnxruntime/capi/libonnxruntime.so.${ONNXRUNTIME_VERSION} \
       /tmp/ort/onnxruntime/LICENSE /tmp/ort/onnxruntime/ThirdPartyNotices.txt /out/onnxruntime/; \
    rm -rf /tmp/wheels /tmp/ort

FROM scratch AS source
COPY --from=worker-build /out/ /out/
COPY --from=onnxruntime /out/ /out/

FROM scratch AS prebuilt
COPY prebuilt/medembed-worker /out/
COPY prebuilt/onnxruntime/ /out/onnxruntime/

FROM ${BINARIES} AS binaries

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
ARG ONNXRUNTIME_VERSION=1.32.0
LABEL org.opencontainers.image.title="medembed-worker" \
      org.opencontainers.image.description="Serves a MedImageInsight-style image/text embedding model over the managed endpoint's scoring API on ONNX Runtime (CPU)." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0 AND MIT" \
      org.opencontainers.image.source="https://example.invalid/medembed" \
      org.opencontainers.image.vendor="medembed" \
      io.medembed.onnxruntime.version="${ONNXRUNTIME_VERSION}" \
      io.medembed.execution-providers="cpu"
COPY --from=binaries /out/onnxruntime/ /opt/onnxruntime/
COPY --from=binaries /out/medembed-worker /usr/local/bin/medembed-worker
# The model directory is mounted here (the operator mounts it read-only at
# this path and sets the same variable).
ENV ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so.${ONNXRUNTIME_VERSION} \
    MEDEMBED_MODEL_DIR=/var/lib/medembed/model \
    MEDEMBED_EXECUTION_PROVIDER=cpu
EXPOSE 8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/medembed-worker"]

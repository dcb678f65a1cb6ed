# syntax=docker/dockerfile:1
# medembed/worker-gpu: the embedding worker with ONNX Runtime GPU (CUDA
# provider) and the CUDA 13 libraries it loads (cuBLAS, cuDNN 9, cuFFT,
# cuRAND, NVRTC, nvJitLink, the CUDA runtime), all from PyPI wheels pinned by hash in
# images/worker-gpu-requirements.txt. The NVIDIA driver (libcuda.so.1) comes
# from the node, through the NVIDIA container toolkit (GPU operator).
#
#   docker build -f images/worker-gpu.Dockerfile -t medembed/worker-gpu:0.1.0 .
#
# TensorRT is not in the image by default: on PyPI, tensorrt-cu13-libs is a
# source stub that downloads the libraries from pypi.nvidia.com at install
# time. To add it (for MEDEMBED_EXECUTION_PROVIDER=tensorrt), pass
#   --build-arg TENSORRT_REQUIREMENT=tensorrt-cu13-libs==10.16.1.11
# with pypi.nvidia.com (or a mirror of it) reachable from the build.
#
# Build context: the repository root. Build arguments:
#   RUST_IMAGE     the compiler image (Debian 12, to match the runtime's glibc)
#   PYTHON_IMAGE   an image with pip, to fetch the wheels
#   RUNTIME_IMAGE  the base of the final image: glibc, libstdc++, a CA bundle
#                  and the user 65532; no shell
#   BINARIES       `source` compiles and downloads in the images above;
#                  `prebuilt` takes prebuilt/medembed-worker,
#                  prebuilt/onnxruntime/ and prebuilt/nvidia/ from the context
#   PIP_INDEX_URL  a PyPI mirror, for builds without access to pypi.org
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

FROM ${PYTHON_IMAGE} AS libraries
ARG ONNXRUNTIME_VERSION=1.31.1
ARG TENSORRT_REQUIREMENT=
ARG PIP_INDEX_URL=https://pypi.org/simple
COPY images/worker-gpu-requirements.txt /tmp/
# The wheels are unpacked, not used as Python packages: only their shared
# libraries and licence files are kept. ONNX Runtime loads its CUDA provider
# from the directory of libonnxruntime.so; the CUDA libraries are found
# through LD_LIBRARY_PATH (one flat directory), with Debian's zlib, which
# cuDNN needs.
RUN set -eu; \
    pip install --quiet --no-deps --only-binary=:all: --require-hashes \
      -r /tmp/worker-gpu-requirements.txt --target /tmp/site; \
    if [ -n "${TENSORRT_REQUIREMENT}" ]; then \
      pip install --quiet --no-deps --extra-index-url https://pypi.nvidia.com \
        "${TENSORRT_REQUIREMENT}" --target /tmp/site; \
    fi; \
    mkdir -p /out/onnxruntime /out/nvidia/lib /out/nvidia/licenses; \
    cp /tmp/site/onnxruntime/capi/libonnxruntime.so.${ONNXRUNTIME_VERSION} \
       /tmp/site/onnxruntime/capi/libonnxruntime_providers_*.so \
       /tmp/site/onnxruntime/LICENSE /tmp/site/onnxruntime/ThirdPartyNotices.txt \
       /out/onnxruntime/; \
    for dir in /tmp/site/nvidia /tmp/site/tensorrt_libs; do \
      if [ -d "$dir" ]; then find "$dir" -name 'lib*.so*' -type f -exec cp {} /out/nvidia/lib/ \; ; fi; \
    done; \
    for d in /tmp/site/nvidia_*.dist-info /tmp/site/tensorrt*.dist-info; do \
      for f in "$d"/licenses/*; do \
        if [ -f "$f" ]; then cp "$f" "/out/nvidia/licenses/$(basename "$d" .dist-info)-$(basename "$f")"; fi; \
      done; \
    done; \
    cp -L "/lib/$(uname -m)-linux-gnu/libz.so.1" /out/nvidia/lib/; \
    cp /usr/share/doc/zlib1g/copyright /out/nvidia/licenses/zlib1g-copyright; \
    for lib in libcudart.so.13 libcublas.so.13 libcudnn.so.9 libcufft.so.12 libcurand.so.10 \
               libnvrtc.so.13 libnvJitLink.so.13 libz.so.1; do \
      test -e "/out/nvidia/lib/$lib"; \
    done; \
    rm -rf /tmp/site

FROM scratch AS source
COPY --from=worker-build /out/ /out/
COPY --from=libraries /out/ /out/

FROM scratch AS prebuilt
COPY prebuilt/medembed-worker /out/
COPY prebuilt/onnxruntime/ /out/onnxruntime/
COPY prebuilt/nvidia/ /out/nvidia/

FROM ${BINARIES} AS binaries

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
ARG ONNXRUNTIME_VERSION=1.31.1
LABEL org.opencontainers.image.title="medembed-worker-gpu" \
      org.opencontainers.image.description="Serves a MedImageInsight-style image/text embedding model over the managed endpoint's scoring API on ONNX Runtime GPU (CUDA 13)." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0 AND MIT AND LicenseRef-NVIDIA-CUDA" \
      org.opencontainers.image.source="https://example.invalid/medembed" \
      org.opencontainers.image.vendor="medembed" \
      io.medembed.onnxruntime.version="${ONNXRUNTIME_VERSION}" \
      io.medembed.execution-providers="cuda,cpu"
COPY --from=binaries /out/onnxruntime/ /opt/onnxruntime/
COPY --from=binaries /out/nvidia/lib/ /opt/nvidia/lib/
COPY --from=binaries /out/nvidia/licenses/ /usr/share/doc/nvidia/
COPY --from=binaries /out/medembed-worker /usr/local/bin/medembed-worker
# NVIDIA_* are read by the NVIDIA container toolkit: mount the driver's compute
# libraries, and refuse a node whose driver is older than CUDA 13.
# The CUDA provider fails start-up loudly when it cannot be registered (no
# silent fallback to the CPU); the TensorRT engine cache directory should be
# a persistent volume (the operator mounts one at /var/cache/medembed).
ENV ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so.${ONNXRUNTIME_VERSION} \
    LD_LIBRARY_PATH=/opt/onnxruntime:/opt/nvidia/lib \
    MEDEMBED_MODEL_DIR=/var/lib/medembed/model \
    MEDEMBED_EXECUTION_PROVIDER=cuda \
    MEDEMBED_TRT_CACHE_DIR=/var/cache/medembed/tensorrt \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=13.0"
EXPOSE 8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/medembed-worker"]

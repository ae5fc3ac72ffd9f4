# syntax=docker/dockerfile:1
#
# iot-anomaly image: the scorer (`iot-anomaly`) and the trainer (`iot-anomaly-train`)
# with the five libtorch 2.13.0 libraries they load, the configuration files and the
# AnoML-IoT data. Build from the repository root:
#
#   docker build -t iot-anomaly .
#
# scripts/validate-deploy.sh (part of `make test`) checks that every path copied
# from the build stage exists in a local build and that the binaries run with only
# these libraries; it cannot run `docker build` itself.

# The toolchain the project is built and tested with.
FROM rust:1.95-bookworm AS build

# setup-libtorch.sh installs libtorch from PyPI wheels with pip.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# libtorch lands in /opt/iot-anomaly/libtorch-2.13.0; build.rs writes
# $LIBTORCH/lib into the binaries' runpath, so the runtime stage puts the libraries
# at the same path and needs no LD_LIBRARY_PATH.
ENV IOT_ANOMALY_CACHE=/opt/iot-anomaly
RUN scripts/setup-libtorch.sh
ENV LIBTORCH=/opt/iot-anomaly/libtorch-2.13.0/torch \
    LIBTORCH_CXX11_ABI=1

RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace \
    && mkdir -p /out \
    && cp target/release/iot-anomaly target/release/iot-anomaly-train /out/


FROM debian:bookworm-slim AS runtime

# The binaries need, beside glibc: libstdc++6 and libgcc-s1 (apt in the base image
# depends on both) and zlib1g (dpkg pre-depends on it), plus the libtorch libraries
# below. librdkafka is linked statically, without TLS. The ldd check further down
# fails the build if any of them is missing.
# libtorch_cpu.so finds libcudart and libcupti through its own rpath
# ($ORIGIN/../../nvidia/cu13/lib); neither needs a GPU at run time.
COPY --from=build /opt/iot-anomaly/libtorch-2.13.0/torch/lib/libtorch_cpu.so /opt/iot-anomaly/libtorch-2.13.0/torch/lib/
COPY --from=build /opt/iot-anomaly/libtorch-2.13.0/torch/lib/libc10.so /opt/iot-anomaly/libtorch-2.13.0/torch/lib/
COPY --from=build /opt/iot-anomaly/libtorch-2.13.0/torch/lib/libgomp.so.1 /opt/iot-anomaly/libtorch-2.13.0/torch/lib/
COPY --from=build /opt/iot-anomaly/libtorch-2.13.0/nvidia/cu13/lib/libcudart.so.13 /opt/iot-anomaly/libtorch-2.13.0/nvidia/cu13/lib/
COPY --from=build /opt/iot-anomaly/libtorch-2.13.0/nvidia/cu13/lib/libcupti.so.13 /opt/iot-anomaly/libtorch-2.13.0/nvidia/cu13/lib/
COPY --from=build /out/iot-anomaly /out/iot-anomaly-train /usr/local/bin/

# Fails the build when a library the binaries link is missing from this stage.
RUN ! ldd /usr/local/bin/iot-anomaly /usr/local/bin/iot-anomaly-train | grep "not found"

# A fixed non-root UID, so Kubernetes' runAsNonRoot can verify it and volume
# ownership is predictable.
RUN groupadd --system --gid 10001 iot-anomaly \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin iot-anomaly

WORKDIR /app
COPY config/ config/
COPY data/ data/
# models/anoml-iot, model.dir of both shipped configurations, resolves into this
# volume. A new named volume takes the directory's owner, so the trainer can write it.
RUN mkdir -p models && chown iot-anomaly:iot-anomaly models
VOLUME /app/models

USER 10001:10001
# /metrics, /healthz, /readyz (http.bind)
EXPOSE 9898
ENTRYPOINT ["iot-anomaly"]
CMD ["serve", "--config", "config/default.toml"]

# syntax=docker/dockerfile:1
# The mongomux gateway's container image:
#
#   docker build -t mongomux .
#   docker run --rm -p 27017:27017 -e MONGOMUX_UPSTREAM=mongodb://... -e MONGOMUX_ACCESS=... mongomux
#
# The same image as scripts/build-image builds without Docker (same files, user, entrypoint and
# settings; docs/deploy.md "Container image"): a release build of mongomux in a Debian bookworm
# Rust image, then scripts/image-rootfs assembles the root file system the final stage is made
# of: the binary, the shared libraries it links (glibc, libgcc_s), the system CA bundle, and
# passwd/group naming the nonroot user. No shell, no package manager.
#
# Configuration comes only from environment variables and flags (`docker run -e MONGOMUX_...`,
# or arguments after the image name, which are added to `mongomux serve`); the text of a TOML
# configuration file may be given in MONGOMUX_CONFIG_TOML, so nothing needs to be written.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches stay between builds; the binary leaves the cache through
# scripts/image-rootfs, in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p mongomux \
    && scripts/image-rootfs /rootfs target/release/mongomux

FROM scratch
COPY --from=build /rootfs/ /
# nonroot, as in scripts/build-image and deploy/template.yaml; not root, no login shell.
USER 65532:65532
WORKDIR /
# The gateway's own default is loopback only, which nobody outside the container can reach.
# MALLOC_MMAP_THRESHOLD_: glibc serves every allocation of 1 MiB or more (large messages and
# replies) with its own mapping and returns it on free, so RSS follows max_inflight_bytes; by
# default glibc raises that threshold after the first large free and keeps such buffers in its
# arenas (docs/reliability.md has both figures).
ENV MONGOMUX_LISTEN=0.0.0.0:27017 \
    MALLOC_MMAP_THRESHOLD_=1048576 \
    PATH=/usr/local/bin
EXPOSE 27017/tcp
STOPSIGNAL SIGTERM
LABEL org.opencontainers.image.title="mongomux" \
      org.opencontainers.image.description="MongoDB wire-protocol gateway for serverless clients" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/local/bin/mongomux", "serve"]

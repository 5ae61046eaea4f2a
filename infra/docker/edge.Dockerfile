# The edge's image: the wasmtime host with the counting component built inside it. Build from
# the repository root:
#   docker build -f infra/docker/edge.Dockerfile -t hitcount-edge .
# The beacon's file is committed (sdk-js/dist), so the build needs Rust only.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The host's build script compiles the component for wasm32-wasip2 and embeds it.
RUN rustup target add wasm32-wasip2 \
    && cargo build --release --locked -p hitcount-edge \
    && install -D target/release/hitcount-edge /out/hitcount-edge \
    && install -d -o 65532 -g 65532 /out/spool

# Distroless: glibc and CA certificates, no shell or package manager; `nonroot` is UID 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/hitcount-edge /usr/local/bin/hitcount-edge
# The optional spool (--spool-dir), writable by the non-root user.
COPY --from=build --chown=65532:65532 /out/spool /var/lib/hitcount-edge
USER 65532:65532
ENV HITCOUNT_EDGE_LISTEN=0.0.0.0:8081
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/hitcount-edge"]

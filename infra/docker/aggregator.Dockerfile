# The aggregator's image. Build from the repository root:
#   docker build -f infra/docker/aggregator.Dockerfile -t hitcount-aggregator .
# The dashboard's files are committed (aggregator/dashboard/dist), so the build needs Rust only.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p hitcount-aggregator \
    && install -D target/release/hitcount-aggregator /out/hitcount-aggregator \
    && install -d -o 65532 -g 65532 /out/data

# Distroless: glibc and CA certificates, no shell or package manager; `nonroot` is UID 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/hitcount-aggregator /usr/local/bin/hitcount-aggregator
# The embedded store's directory, writable by the non-root user (a volume in production).
COPY --from=build --chown=65532:65532 /out/data /var/lib/hitcount
USER 65532:65532
ENV HITCOUNT_LISTEN=0.0.0.0:8080 \
    HITCOUNT_DATA_DIR=/var/lib/hitcount
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/hitcount-aggregator"]

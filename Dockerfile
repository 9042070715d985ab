# authgate: multi-stage build. The runtime image holds only the binary and CA certificates.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin authgate

FROM debian:bookworm-slim
# ca-certificates: TLS to the provider and PostgreSQL. Not pinned (hadolint DL3008): bookworm
# replaces a package version with each point release and security update, so a pin would break
# the build rather than make it reproducible; the base image tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 authgate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/authgate --no-create-home authgate \
    && mkdir -p /var/lib/authgate && chown 10001:10001 /var/lib/authgate
COPY --from=build /src/target/release/authgate /usr/local/bin/authgate
# Inside the image authgate listens on every interface (the binary's own default stays
# 127.0.0.1:8080); the embedded SQLite store and its generated key go to the data directory,
# the working directory (sqlite_path is relative: authgate.db).
ENV AUTHGATE_LISTEN_ADDR=0.0.0.0:8080
WORKDIR /var/lib/authgate
VOLUME ["/var/lib/authgate"]
# The numeric uid, so that runAsNonRoot and the host can check it.
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/authgate", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/authgate"]
CMD ["serve"]

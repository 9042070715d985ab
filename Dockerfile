# authgate: multi-stage build. The runtime image holds only the binary and CA certificates.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin authgate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 authgate
COPY --from=build /src/target/release/authgate /usr/local/bin/authgate
USER authgate
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/authgate"]
CMD ["serve"]

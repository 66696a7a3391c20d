# syntax=docker/dockerfile:1
# Both binaries in one small image:
#   docker build -t storesync:dev .
#   master:    /usr/local/bin/master-service serve
#   satellite: /usr/local/bin/satellite-agent
# The gRPC code is generated with protox (pure Rust): no protoc needed.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p master-service -p satellite-agent \
    && mkdir -p /out \
    && cp target/dist/master-service target/dist/satellite-agent /out/

# glibc and libgcc only, no shell, runs as uid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/master-service /out/satellite-agent /usr/local/bin/
USER 65532:65532
# The master listens on 50051, a satellite on 50052 (set STORESYNC_LISTEN).
EXPOSE 50051 50052
ENV STORESYNC_LOG_FORMAT=json
ENTRYPOINT []
CMD ["/usr/local/bin/master-service", "serve"]

# restatus: a static binary on a distroless base, running as a numeric non-root user.
#
#   docker build -t restatus .
#
# The build stage runs the same steps as `hack/check-dockerfile.sh`, which CI-less machines
# without a container engine use to check them natively.

FROM rust:1.95-bookworm AS build
# musl-tools comes from the Debian release the base image pins (bookworm); pinning its exact
# version as well would break the build at each Debian point release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
# Dependencies first, built against stub sources in their own layer, so a change to src/
# rebuilds restatus only.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/restore_latency.rs \
 && cargo build --locked --release --target x86_64-unknown-linux-musl --bin restatus
COPY src ./src
# COPY keeps the sources' modification times, which may be older than the stubs: touch the
# crate roots so cargo builds restatus itself again.
RUN touch src/main.rs src/lib.rs \
 && cargo build --locked --release --target x86_64-unknown-linux-musl --bin restatus \
 && cp target/x86_64-unknown-linux-musl/release/restatus /restatus \
 && /restatus --version

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /restatus /usr/local/bin/restatus
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/usr/local/bin/restatus"]
CMD ["serve"]

# Build image for `cross build --target aarch64-unknown-linux-gnu`.
# cross-rs 0.2.5 images are Ubuntu 20.04: binaries link against glibc 2.31,
# so they run on JetPack 5 (Ubuntu 20.04) and JetPack 6 (Ubuntu 22.04).
FROM ghcr.io/cross-rs/aarch64-unknown-linux-gnu:0.2.5
# cmake builds the bundled libjpeg-turbo (its NEON code needs no nasm).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*

# Build image for `cross build --target x86_64-unknown-linux-gnu` (the
# central server, or x86_64 edge boxes), glibc 2.31 like the aarch64 one.
FROM ghcr.io/cross-rs/x86_64-unknown-linux-gnu:0.2.5
# cmake and nasm build the bundled libjpeg-turbo with its SIMD code.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake nasm \
 && rm -rf /var/lib/apt/lists/*

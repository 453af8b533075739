//! Compiles proto/metrics.proto with protox (a pure-Rust protobuf compiler),
//! so no machine needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/metrics.proto", "proto/core_messages.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    // Only metrics.proto is generated: core_messages.proto is its subset in
    // the same package, and both in one build would define each message twice.
    // It is still parsed here so that a broken subset fails the build.
    protox::compile(["proto/core_messages.proto"], ["proto"])?;
    let fds = protox::compile(["proto/metrics.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // Image bytes become `bytes::Bytes`: the agent hands pooled buffers to
        // the encoder without a copy, the server keeps frames by refcount.
        .bytes(".metrics.ImageData.image_bytes")
        .compile_fds(fds)?;
    Ok(())
}

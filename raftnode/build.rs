//! Compiles proto/raftnode.proto with protox (a pure-Rust protobuf compiler): no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/raftnode.proto");
    let descriptors = protox::compile(["proto/raftnode.proto"], ["proto"])?;
    prost_build::Config::new()
        .btree_map(["."])
        .compile_fds(descriptors)?;
    Ok(())
}

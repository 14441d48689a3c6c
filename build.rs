// Generates the CRIU RPC and image message types from proto/ in pure Rust
// (no protoc needed on the build machine).
fn main() {
    protobuf_codegen::Codegen::new()
        .pure()
        .includes(["proto"])
        .inputs([
            "proto/rpc.proto",
            "proto/stats.proto",
            "proto/images/inventory.proto",
            "proto/images/task.proto",
            "proto/images/memory.proto",
            "proto/images/files.proto",
            "proto/images/namespaces.proto",
            "proto/images/cgroup.proto",
        ])
        .cargo_out_dir("criu_proto")
        .run_from_script();
    println!("cargo:rerun-if-changed=proto");
}

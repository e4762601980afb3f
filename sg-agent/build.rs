//! Builds the eBPF object with aya-build and leaves it in OUT_DIR, where
//! `include_bytes_aligned!` embeds it into the agent.

fn main() -> anyhow::Result<()> {
    // aya-ebpf uses one unstable feature (`asm_experimental_arch`) on the BPF
    // target. Naming the crate scopes the bootstrap switch to it, and keeps
    // aya-build from asking for `-Z build-std` on the stable compiler that
    // ships a prebuilt `core` for the BPF target (docs/build.md).
    if std::env::var_os("RUSTC_BOOTSTRAP").is_none() {
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "aya_ebpf") };
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sg-ebpf",
            root_dir: "../sg-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("sg-bpf"),
    )
}

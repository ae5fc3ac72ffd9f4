//! Embeds libtorch's library directory as an rpath so the binaries, tests and benches
//! run without LD_LIBRARY_PATH. `make` exports LIBTORCH from scripts/setup-libtorch.sh.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{libtorch}/lib");
    }
}

//! Rebuilds the crate when a migration is added: `embed_migrations!` tracks only the files it
//! already embedded.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}

//! Rebuilds the hub when a Postgres migration changes: `sqlx::migrate!` embeds them at compile
//! time, and cargo does not otherwise watch files outside the crate.

fn main() {
    println!("cargo:rerun-if-changed=../schema/migrations/postgres");
}

//! `sqlx::migrate!` embeds the migration files at compile time; without this, adding a
//! migration does not rebuild the crate and the new file is silently left out.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}

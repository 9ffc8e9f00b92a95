//! Migrations are embedded with `sqlx::migrate!`; rebuild when one is added or changed
//! (cargo does not notice a new file in a directory it has not been told about).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}

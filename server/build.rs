// `sqlx::migrate!` embeds ../migrations at compile time, and cargo does not
// know it reads them: without this, a new migration file would leave a
// stale server binary that never applies it.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}

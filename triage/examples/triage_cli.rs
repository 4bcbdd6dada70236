//! Stand-in for `armfleet triage [--json] FILE...` until the CLI is wired in.
//! A leading `triage` argument is accepted so scripts can call it like `armfleet`.
fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("triage") {
        args.remove(0);
    }
    let json = args.first().map(String::as_str) == Some("--json");
    let files: Vec<std::path::PathBuf> = args
        .iter()
        .skip(usize::from(json))
        .map(Into::into)
        .collect();
    let code = armfleet_triage::run_cli(json, &files, &mut std::io::stdout().lock());
    std::process::exit(code);
}
